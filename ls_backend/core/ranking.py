"""Ranking strategies: (probabilities, embeddings, what is labeled) -> the full order of the
unlabeled pool, most useful first.

One index space throughout: ``probs`` and ``embeddings`` cover the whole pool (labeled rows
included), ``labeled_idx`` and the returned order are row indices into them. Label Studio
receives the whole order as task priorities, so a batch is whatever an annotator takes from
the top: the head of the order carries the batch diversity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from ls_backend.core import uncertainty
from ls_backend.core.diversity import k_center_greedy, spread_in_order, typical
from ls_backend.core.labels import Embeddings, Probs

Order = NDArray[np.int64]

#: Items at the top of the order shaped for diversity; the tail is ordered by score alone.
HEAD = 100
#: k-center runs on a random sample of this many unlabeled items: on 100k items it would take
#: seconds, and a random sample of this size covers the pool almost as well.
KCENTER_SAMPLE = 20_000
#: The near-duplicate filter looks this many times deeper into the score order than it keeps.
LOOKAHEAD = 5
#: Exploration judges typicality on a random sample of this many unlabeled items.
TYPICAL_SAMPLE = 2000


@dataclass(frozen=True)
class Pool:
    embeddings: Embeddings
    labeled: NDArray[np.int64]
    unlabeled: NDArray[np.int64]
    probs: Probs | None
    multi_label: bool
    rng: np.random.Generator
    scores: NDArray[np.float64] | None = None  # precomputed uncertainty [N], e.g. STAR's
    # Classes the default's exploration share counts when it ranks by ``scores`` alone
    # (``probs`` None, as for spans); with ``probs`` it is their number of classes.
    classes: int | None = None


Strategy = Callable[[Pool], Order]

#: Why a task is where it is in an order (what the admin's queue panel shows):
#: the model is unsure of it; exploration picked it (k-center over typical tasks); it is a
#: near-duplicate of a task above it and was moved down; pure diversity (no model yet);
#: random order.
REASONS = ("uncertain", "explore", "near_duplicate", "diversity", "random")
_REASON = f"<U{max(map(len, REASONS))}"


@dataclass(frozen=True)
class Ranked:
    """An order and, per position, its reason (one of ``REASONS``)."""

    order: Order
    reasons: NDArray[np.str_]


def _ranked(order: Order, reason: str) -> Ranked:
    return Ranked(order, np.full(order.size, reason, dtype=_REASON))


def _by_score(pool: Pool, scores: NDArray[np.float64]) -> Order:
    """Unlabeled indices by descending score, ties broken at random (not by pool position)."""
    shuffled = pool.rng.permutation(pool.unlabeled)
    return shuffled[np.argsort(-scores[shuffled], kind="stable")]


def then_rest(head: Order, order: Order) -> Order:
    """``head`` first, then the rest of ``order`` in its own order."""
    return np.concatenate([head, order[~np.isin(order, head)]])


def random_order(pool: Pool) -> Order:
    return pool.rng.permutation(pool.unlabeled)


def k_center(pool: Pool, head: int = HEAD) -> Order:
    """Pure diversity: core-set picks first, the rest at random."""
    return k_center_explained(pool, head).order


def k_center_explained(pool: Pool, head: int = HEAD) -> Ranked:
    order = random_order(pool)
    picks = k_center_greedy(pool.embeddings, pool.labeled, head, order[:KCENTER_SAMPLE])
    reasons = np.full(order.size, "random", dtype=_REASON)
    reasons[: picks.size] = "diversity"
    return Ranked(then_rest(picks, order), reasons)


def by_uncertainty(pool: Pool, measure: uncertainty.Measure) -> Order:
    """Highest score first; without predictions there is nothing to be uncertain about yet."""
    if pool.probs is None:
        return k_center(pool)
    return _by_score(pool, uncertainty.scores(pool.probs, measure, pool.multi_label))


def uncertain_spread(pool: Pool) -> Order:
    """The default strategy's order (see ``uncertain_spread_explained``)."""
    return uncertain_spread_explained(pool).order


def uncertain_spread_explained(
    pool: Pool,
    measure: uncertainty.Measure = "margin",
    head: int = HEAD,
    window: int = 10,
    max_sim: float = 0.9,
    explore_halflife: float = 2.0,
) -> Ranked:
    """The default: uncertainty, with near-duplicates kept apart and early exploration.

    Each window of ``window`` items (one annotation batch) mixes two kinds of pick:
    - explore: k-center over typical (dense) unlabeled items, which finds regions and classes
      the model has not seen; its share starts near 1 and halves every ``explore_halflife``
      labels per class, because uncertainty from a handful of labels is unreliable;
    - exploit: the score order (margin by default, or ``pool.scores``).
    Finally an item whose cosine similarity to a higher-ranked head item is ``max_sim`` or
    more leaves the head. Without predictions, or when every score is equal (one class seen),
    the order is pure diversity.
    """
    if pool.probs is not None:
        classes = pool.probs.shape[1]
        scores = pool.scores
        if scores is None:
            scores = uncertainty.scores(pool.probs, measure, pool.multi_label)
    elif pool.scores is not None:  # scores alone (spans): no class probabilities to count
        classes, scores = pool.classes or 2, pool.scores
    else:
        return k_center_explained(pool, head)
    if np.ptp(scores[pool.unlabeled]) < 1e-9:
        return k_center_explained(pool, head)
    order = _by_score(pool, scores)
    share = 0.5 ** (pool.labeled.size / (explore_halflife * classes))
    per_window = round(window * share)
    windows = -(-head // window)
    sample = pool.rng.choice(pool.unlabeled, min(TYPICAL_SAMPLE, pool.unlabeled.size), False)
    explore = (
        k_center_greedy(
            pool.embeddings, pool.labeled, per_window * windows, typical(pool.embeddings, sample)
        )
        if per_window
        else sample[:0]
    )
    top = order[: LOOKAHEAD * head]
    exploit = top[~np.isin(top, explore)]
    mixed = [
        part
        for w in range(windows)
        for part in (
            explore[w * per_window : (w + 1) * per_window],
            exploit[w * (window - per_window) : (w + 1) * (window - per_window)],
        )
    ]
    walk = np.concatenate([*mixed, exploit])
    spread = spread_in_order(pool.embeddings, walk, head, max_sim)
    final = then_rest(spread, order)
    reasons = np.full(final.size, "uncertain", dtype=_REASON)
    reasons[: spread.size][np.isin(spread, explore)] = "explore"
    # Passed over by the walk for resembling a kept task: they sit at their score's place.
    if spread.size:
        last = int(np.flatnonzero(walk == spread[-1])[0])
        dropped = np.setdiff1d(walk[:last], spread)
        reasons[spread.size :][np.isin(final[spread.size :], dropped)] = "near_duplicate"
    return Ranked(final, reasons)


#: The strategies' names: what STRATEGY may say (a typo fails at start, not at the first sync).
StrategyName = Literal[
    "default", "margin", "least_confidence", "entropy", "bald", "k_center", "random"
]

STRATEGIES: dict[str, Strategy] = {
    "random": random_order,
    "least_confidence": partial(by_uncertainty, measure="least_confidence"),
    "margin": partial(by_uncertainty, measure="margin"),
    "entropy": partial(by_uncertainty, measure="entropy"),
    "bald": partial(by_uncertainty, measure="bald"),
    "k_center": k_center,
    "default": uncertain_spread,
}
#: Strategies that say why each task is where it is; the others give every task one reason.
EXPLAINED: dict[str, Callable[[Pool], Ranked]] = {
    "k_center": k_center_explained,
    "default": uncertain_spread_explained,
}


def rank_pool(
    strategy: str,
    probs: Probs | None,
    embeddings: Embeddings,
    labeled_idx: NDArray[np.int64],
    multi_label: bool = False,
    rng: np.random.Generator | None = None,
    scores: NDArray[np.float64] | None = None,
    classes: int | None = None,
) -> Order:
    """The full order of the unlabeled rows of ``embeddings``, most useful first.

    ``probs`` ``[N, C, T]`` covers the same N rows as ``embeddings`` (None before any model:
    then the order is pure diversity). ``scores`` ``[N]``, if given, is the uncertainty the
    ``default`` strategy ranks by instead of margin (e.g. STAR's dynamic uncertainty); the
    single-measure strategies always use their own measure. ``default`` also ranks by
    ``scores`` without ``probs`` (span uncertainty), its exploration share counting
    ``classes``.
    """
    return rank_pool_explained(
        strategy, probs, embeddings, labeled_idx, multi_label, rng, scores, classes
    ).order


def rank_pool_explained(
    strategy: str,
    probs: Probs | None,
    embeddings: Embeddings,
    labeled_idx: NDArray[np.int64],
    multi_label: bool = False,
    rng: np.random.Generator | None = None,
    scores: NDArray[np.float64] | None = None,
    classes: int | None = None,
) -> Ranked:
    """``rank_pool`` with the reason for each position of the order."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {sorted(STRATEGIES)}")
    n = embeddings.shape[0]
    for name, rows in (("probs", probs), ("scores", scores)):
        if rows is not None and rows.shape[0] != n:
            raise ValueError(f"{name} cover {rows.shape[0]} rows, embeddings {n}")
    labeled = np.unique(np.asarray(labeled_idx, dtype=np.int64))
    unlabeled = np.setdiff1d(np.arange(n, dtype=np.int64), labeled, assume_unique=True)
    rng = rng or np.random.default_rng(0)
    pool = Pool(embeddings, labeled, unlabeled, probs, multi_label, rng, scores, classes)
    # Many small products: BLAS threads only spin against torch and each other here.
    with threadpool_limits(limits=1):
        if strategy in EXPLAINED:
            return EXPLAINED[strategy](pool)
        order = STRATEGIES[strategy](pool)
        if strategy == "random":
            return _ranked(order, "random")
        return _ranked(order, "uncertain" if probs is not None else "diversity")
