"""Held-out splits, metrics (accuracy, macro-F1, ECE) and the promotion rule."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import f1_score

from ls_backend.core.labels import LabelSpace, Probs

Index = NDArray[np.int64]


def _unit_hash(key: Hashable) -> float:
    digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def holdout_split(
    keys: Sequence[Hashable], strata: Sequence[Hashable], fraction: float
) -> tuple[Index, Index]:
    """(train, held-out) indices, stratified and *stable*.

    An item is held out when the hash of its key falls below ``fraction``, so its
    side never changes as labels are added: no model version ever trains on an
    item that later versions are compared on. A class with 3+ items whose hashes
    all miss still gives its lowest-hash item, so every class is evaluated.
    """
    by_class: dict[Hashable, list[int]] = defaultdict(list)
    for i, stratum in enumerate(strata):
        by_class[stratum].append(i)
    held: list[int] = []
    for members in by_class.values():
        hashes = {i: _unit_hash(keys[i]) for i in members}
        chosen = [i for i in members if hashes[i] < fraction]
        if not chosen and len(members) >= 3:
            chosen = [min(members, key=hashes.__getitem__)]
        held.extend(chosen)
    held_set = set(held)
    train = [i for i in range(len(keys)) if i not in held_set]
    return np.asarray(train, dtype=np.int64), np.asarray(sorted(held), dtype=np.int64)


def stratified_folds(strata: Sequence[Hashable], k: int) -> list[tuple[Index, Index]]:
    """Deterministic stratified k-fold: round-robin within each class."""
    fold_of = np.empty(len(strata), dtype=np.int64)
    counters: dict[Hashable, int] = defaultdict(int)
    for i, stratum in enumerate(strata):
        fold_of[i] = counters[stratum] % k
        counters[stratum] += 1
    everything = np.arange(len(strata), dtype=np.int64)
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    macro_f1: float
    ece: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


#: The promotion rule compares the candidate and the serving model item by item on the same
#: held-out labels (d = 1 where only the candidate is right, -1 where only the other is).
#: A candidate of the serving model's kind, fitted on more labels, serves unless mean(d) is
#: below -PROMOTION_Z standard errors; one of another kind (head <-> adapter) must be above
#: +PROMOTION_Z of them. A gain of a few items on a small held-out set decides nothing, so
#: the serving model does not flip back and forth between kinds.
PROMOTION_Z = 2.0


Items = NDArray[np.bool_] | NDArray[np.float64]


def paired_gain(candidate: Items, baseline: Items) -> tuple[float, float]:
    """Mean of the per-item difference (in correctness, or the kind's per-item figure), and
    its standard error."""
    d = candidate.astype(np.float64) - baseline.astype(np.float64)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()), se


def should_promote(
    candidate: Items, baseline: Items, same_kind: bool, metric: str = "accuracy"
) -> tuple[bool, str]:
    """The promotion rule (see PROMOTION_Z), with the reason recorded in the version."""
    gain, se = paired_gain(candidate, baseline)
    figures = f"paired {metric} gain {gain:+.3f} ± {se:.3f} on {candidate.size} held-out labels"
    if same_kind:
        if gain >= -PROMOTION_Z * se - 1e-12:
            return True, f"not worse than the serving model beyond noise ({figures})"
        return False, f"worse than the serving model ({figures})"
    if gain > PROMOTION_Z * se + 1e-12:
        return True, f"better than the serving model of another kind ({figures})"
    return False, f"not clearly better than the serving model of another kind ({figures})"


def expected_calibration_error(
    confidence: NDArray[np.float64], correct: NDArray[np.bool_], bins: int = 10
) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def evaluate(space: LabelSpace, probs: Probs, targets: NDArray[np.int64]) -> Metrics:
    """Targets as ``LabelSpace.encode`` gives them; multi-label accuracy is exact-match."""
    mean = probs.mean(axis=2).astype(np.float64)
    n = int(mean.shape[0])
    if n == 0:
        raise ValueError("nothing to evaluate on")
    correct_items = item_correct(space, probs, targets)
    if space.multi_label:
        predicted = (mean >= 0.5).astype(np.int64)
        macro_f1 = float(f1_score(targets, predicted, average="macro", zero_division=0))
        confidence = np.maximum(mean, 1 - mean).ravel()
        correct = (predicted == targets).ravel()
    else:
        predicted = mean.argmax(axis=1)
        present = np.unique(targets)
        macro_f1 = float(
            f1_score(targets, predicted, labels=present, average="macro", zero_division=0)
        )
        confidence = mean.max(axis=1)
        correct = predicted == targets
    accuracy = float(correct_items.mean())
    return Metrics(accuracy, macro_f1, expected_calibration_error(confidence, correct), n)


def item_correct(space: LabelSpace, probs: Probs, targets: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Per item: is the decision right (every label, for multi-label)?"""
    mean = probs.mean(axis=2)
    if space.multi_label:
        return np.asarray(((mean >= 0.5).astype(np.int64) == targets).all(axis=1))
    return np.asarray(mean.argmax(axis=1) == targets)


def strata_of(space: LabelSpace, targets: NDArray[np.int64]) -> list[int]:
    """One stratum per item: its class, or its first label for multi-label (-1: none)."""
    if not space.multi_label:
        return [int(t) for t in targets]
    return [int(np.argmax(row)) if row.any() else -1 for row in targets]
