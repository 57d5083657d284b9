"""What a span project's dashboard shows of its labels: out-of-fold predictions of the light
head, the entity types it confuses (gold against predicted regions) and the regions it
doubts (suspected mislabeled spans).

Pure and typed: token vectors and gold spans in, plain dataclasses out. Regions are judged
on type marginals (``O`` and one column per entity type: a type's B/I/L/U tags summed), so
a region's figure reads as "the probability that these words are an X".
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.evaluation import stratified_folds
from ls_backend.core.spans.alignment import decode_spans
from ls_backend.core.spans.head import SpanHead, SpanHeadConfig
from ls_backend.core.spans.tokens import TokenVectors
from ls_backend.core.spans.types import Span, SpanLabelSpace, TokenProbs, offsets_of

#: Folds of the out-of-fold predictions that judge each labeled sentence.
FOLDS = 5
#: What confusions and suspects call the absence of an entity (given or predicted).
NO_ENTITY = "(no entity)"


@dataclass(frozen=True)
class OutOfFold:
    """Each labeled sentence as a head that never saw it predicts it: its spans, the tag
    probabilities of its units (``probs``, ragged like ``TokenProbs``) and their offsets."""

    predicted: list[list[Span]]
    probs: TokenProbs
    units: list[NDArray[np.int64]]


def out_of_fold(
    space: SpanLabelSpace,
    vectors: Sequence[TokenVectors],
    gold: Sequence[Sequence[Span]],
    folds: int = FOLDS,
    config: SpanHeadConfig | None = None,
) -> OutOfFold:
    """Heads fitted on all folds but one predict that one (stratified: sentences with an
    entity and without spread over the folds); a fold whose training part has no entity
    predicts ``O`` everywhere."""
    if len(vectors) != len(gold):
        raise ValueError(f"{len(vectors)} sentences for {len(gold)} gold span lists")
    units = [tv.tokens.units for tv in vectors]
    lengths = [u.shape[0] for u in units]
    offsets = offsets_of(lengths)
    probs = np.zeros((int(offsets[-1]), space.size, 1), dtype=np.float32)
    probs[:, 0, 0] = 1.0
    predicted: list[list[Span]] = [[] for _ in gold]
    k = min(folds, len(gold))
    if k < 2:
        return OutOfFold(predicted, TokenProbs(probs, offsets), units)
    for train, test in stratified_folds([int(bool(g)) for g in gold], k):
        head = SpanHead.fit(space, [vectors[i] for i in train], [gold[i] for i in train], config)
        if not head.trained:
            continue
        part = head.predict_proba([vectors[i] for i in test])
        decoded = decode_spans(part, [units[i] for i in test], space)
        for j, i in enumerate(test):
            probs[offsets[i] : offsets[i + 1]] = part.sentence(j)
            predicted[i] = decoded.spans[j]
    return OutOfFold(predicted, TokenProbs(probs, offsets), units)


def type_marginals(space: SpanLabelSpace, probs: NDArray[np.floating]) -> NDArray[np.float64]:
    """``[U, 1 + L]``: P(``O``) and, per entity type, its tags' probabilities summed."""
    k = len(space.prefixes)
    tags = np.asarray(probs, dtype=np.float64)
    by_type = tags[:, 1:].reshape(tags.shape[0], len(space.labels), k).sum(axis=2)
    return np.concatenate([tags[:, :1], by_type], axis=1)


def covered(units: NDArray[np.int64], span: Span) -> NDArray[np.int64]:
    """Indices of the units a span touches (at least one, the nearest, for a span between
    units)."""
    inside = np.flatnonzero((units[:, 0] < span.end) & (units[:, 1] > span.start))
    if inside.size or not units.shape[0]:
        return inside
    return np.asarray([int(np.argmin(np.abs(units[:, 0] - span.start)))], dtype=np.int64)


# --- confusions between entity types -------------------------------------------------------


@dataclass(frozen=True)
class SpanConfusions:
    """Gold regions against predicted ones. ``pairs``: (given, predicted, count), most
    frequent first, where ``NO_ENTITY`` stands for a missed or a spurious region and
    "X, other offsets" for a prediction overlapping the gold region at other offsets."""

    pairs: list[tuple[str, str, int]]
    correct: int  # same offsets, same type
    other_type: int  # same offsets, another type
    boundary: int  # gold regions overlapped by a prediction at other offsets
    missed: int  # gold regions no prediction touches
    spurious: int  # predictions that touch no gold region


def _overlap(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def type_confusions(
    predicted: Sequence[Sequence[Span]], gold: Sequence[Sequence[Span]], top: int = 10
) -> SpanConfusions:
    """Every gold region matched against the predictions of its sentence: exact offsets
    (same or another type), overlapping ones (boundary errors) or none (missed); and
    predictions touching no gold region (spurious)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold ones")
    pairs: Counter[tuple[str, str]] = Counter()
    correct = other = boundary = missed = spurious = 0
    for pred, true in zip(predicted, gold, strict=True):
        at = {(s.start, s.end): s for s in pred}
        for g in true:
            p = at.get((g.start, g.end))
            if p is not None:
                if p.label == g.label:
                    correct += 1
                else:
                    other += 1
                    pairs[g.label, p.label] += 1
                continue
            near = [p for p in pred if _overlap(p, g)]
            if near:
                boundary += 1
                pairs[g.label, f"{near[0].label}, other offsets"] += 1
            else:
                missed += 1
                pairs[g.label, NO_ENTITY] += 1
        for p in pred:
            if not any(_overlap(p, g) for g in true):
                spurious += 1
                pairs[NO_ENTITY, p.label] += 1
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return SpanConfusions(
        [(g, p, n) for (g, p), n in ranked], correct, other, boundary, missed, spurious
    )


# --- suspected mislabeled spans -------------------------------------------------------------


@dataclass(frozen=True)
class SpanSuspect:
    """A region whose out-of-fold prediction disagrees with its label: ``index`` into the
    labeled sentences, ``start``/``end`` into its text; ``given`` is ``NO_ENTITY`` for a
    region the model finds and nobody labeled."""

    index: int
    start: int
    end: int
    given: str
    suggested: str
    quality: float  # out-of-fold probability of the given label, averaged over its words
    confidence: float  # ... and of the suggested one
    issue: bool  # cleanlab's confident learning flags one of its words


def _flagged_units(
    space: SpanLabelSpace, gold: Sequence[Sequence[Span]], oof: OutOfFold
) -> set[tuple[int, int]]:
    """(sentence, unit) pairs that cleanlab's token-level confident learning flags, on type
    marginals (the classes present only: it needs each one seen)."""
    from cleanlab.token_classification.filter import find_label_issues

    marginals = type_marginals(space, oof.probs.mean())
    given = np.zeros(marginals.shape[0], dtype=np.int64)
    for i, spans in enumerate(gold):
        base = int(oof.probs.offsets[i])
        for s in spans:
            given[base + covered(oof.units[i], s)] = 1 + space.label_index(s.label)
    present = np.unique(given)
    if present.size < 2:
        return set()
    sub = marginals[:, present] + 1e-6
    sub /= sub.sum(axis=1, keepdims=True)
    mapped = np.searchsorted(present, given)
    offsets = oof.probs.offsets
    kept = [i for i in range(len(gold)) if offsets[i + 1] > offsets[i]]  # with a word
    labels = [mapped[offsets[i] : offsets[i + 1]].tolist() for i in kept]
    probs = [sub[offsets[i] : offsets[i + 1]] for i in kept]
    # n_jobs=1: a pool forked from a multi-threaded server can hang (core.report says why).
    # A rare entity type (one word labeled) is judged too, with a warning per type: quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        issues = find_label_issues(labels, probs, n_jobs=1)
    return {(kept[i], int(j)) for i, j in issues}


def suspected_spans(
    space: SpanLabelSpace, gold: Sequence[Sequence[Span]], oof: OutOfFold, top: int = 20
) -> list[SpanSuspect]:
    """The ``top`` regions with the lowest out-of-fold probability of their label, worst
    first: every gold region (its type's probability over its words), and every predicted
    region that touches no gold one (the probability of ``O`` there: "no entity" was the
    label). A region whose suggestion is its label is not a suspect."""
    marginals = type_marginals(space, oof.probs.mean())
    names = (NO_ENTITY, *space.labels)
    try:
        flagged = _flagged_units(space, gold, oof)
    except (ValueError, IndexError):  # too few labels for confident learning: no flags
        flagged = set()
    found = []
    for i, (true, pred) in enumerate(zip(gold, oof.predicted, strict=True)):
        base = int(oof.probs.offsets[i])
        regions = [(s, 1 + space.label_index(s.label)) for s in true]
        regions += [(p, 0) for p in pred if not any(_overlap(p, g) for g in true)]
        for span, column in regions:
            where = covered(oof.units[i], span)
            if not where.size:
                continue
            mean = marginals[base + where].mean(axis=0)
            best = int(np.argmax(mean))
            if best == column:
                continue
            found.append(
                SpanSuspect(
                    index=i,
                    start=span.start,
                    end=span.end,
                    given=names[column],
                    suggested=names[best],
                    quality=float(mean[column]),
                    confidence=float(mean[best]),
                    issue=any((i, int(u)) in flagged for u in where),
                )
            )
    found.sort(key=lambda s: (s.quality, s.index, s.start))
    return found[:top]
