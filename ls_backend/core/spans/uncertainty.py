"""Sentence uncertainty from tag probabilities: ``TokenProbs`` and the decoded tags in,
scores ``[N]`` out, higher = less sure (the direction ``core.uncertainty`` uses).

- ``mnlp``: Maximum Normalized Log-Probability (Shen et al. 2017): minus the mean log
  probability of the decoded sequence's tags, so long sentences are not favoured merely
  for having more tokens to be wrong about.
- ``least_confident_span``: 1 - the lowest confidence among the sentence's decision
  points: each predicted span (its score) and each unit left outside (P(O)), so a sentence
  with no predicted entity is still unsure where an entity may hide.
- ``entropy``: the tag entropy, averaged over the sentence's units.
- ``entropy_sum``: the same summed (Settles & Craven 2008's "total token entropy"): it
  prefers long sentences, which cost more to annotate than a sentence budget counts.

A sentence without units (an empty text) scores 0: there is nothing to label in it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.spans.alignment import Decoded
from ls_backend.core.spans.types import TokenProbs

Scores = NDArray[np.float64]
SpanMeasure = Callable[[TokenProbs, Decoded], Scores]
_FLOOR = 1e-12


def _per_sentence(values: NDArray[np.float64], offsets: NDArray[np.int64], how: str) -> Scores:
    """Sum, mean or min of per-unit ``values`` within each sentence (0 for an empty one)."""
    n = offsets.size - 1
    lengths = np.diff(offsets)
    out = np.zeros(n)
    present = lengths > 0
    starts = offsets[:-1][present]
    if how == "min":
        out[present] = np.minimum.reduceat(values, starts) if values.size else 0.0
        return out
    sums = np.add.reduceat(values, starts) if values.size else np.zeros(0)
    out[present] = sums / lengths[present] if how == "mean" else sums
    return out


def mnlp(probs: TokenProbs, decoded: Decoded) -> Scores:
    logp = np.log(np.maximum(decoded.confidence, _FLOOR))
    return -_per_sentence(logp, probs.offsets, "mean")


def least_confident_span(probs: TokenProbs, decoded: Decoded) -> Scores:
    outside = np.where(decoded.tags == 0, decoded.confidence, 1.0)
    lowest = _per_sentence(outside, probs.offsets, "min")
    present = probs.lengths > 0
    lowest[~present] = 1.0
    for i, spans in enumerate(decoded.spans):
        scores = [s.score for s in spans if s.score is not None]
        if scores:
            lowest[i] = min(lowest[i], min(scores))
    return 1.0 - lowest


def _unit_entropy(probs: TokenProbs) -> NDArray[np.float64]:
    p = probs.mean()
    p = p[:, p.max(axis=0, initial=0.0) > 0]  # tags never predicted add 0 * log 0 = 0
    logp = np.log(np.where(p > 0, p, 1.0))
    return np.asarray(-(p * logp).sum(axis=1), dtype=np.float64)


def entropy(probs: TokenProbs, decoded: Decoded) -> Scores:
    return _per_sentence(_unit_entropy(probs), probs.offsets, "mean")


def entropy_sum(probs: TokenProbs, decoded: Decoded) -> Scores:
    return _per_sentence(_unit_entropy(probs), probs.offsets, "sum")


SPAN_MEASURES: dict[str, SpanMeasure] = {
    "mnlp": mnlp,
    "least_confident_span": least_confident_span,
    "entropy": entropy,
    "entropy_sum": entropy_sum,
}


def span_scores(probs: TokenProbs, decoded: Decoded, measure: str = "mnlp") -> Scores:
    if measure not in SPAN_MEASURES:
        raise ValueError(f"unknown span uncertainty {measure!r}; known: {sorted(SPAN_MEASURES)}")
    return SPAN_MEASURES[measure](probs, decoded)


def span_uncertainty_figures(probs: TokenProbs, decoded: Decoded) -> dict[str, Scores]:
    """Every measure per sentence: what a prediction reports beside its spans."""
    return {name: measure(probs, decoded) for name, measure in SPAN_MEASURES.items()}
