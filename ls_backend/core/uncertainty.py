"""Uncertainty: probabilities ``[N, C, T]`` in, scores ``[N]`` out, higher = more uncertain.

T is the number of MC-dropout samples (1 for deterministic models). Every measure but
BALD looks at the mean over T; BALD is the disagreement between the samples.
Multi-label probabilities (one independent probability per label) go through
:func:`binary_view`: each label becomes a two-class problem and the label scores are averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.labels import Probs

Scores = NDArray[np.float64]
Measure = Literal["least_confidence", "margin", "entropy", "bald"]


def _mean(probs: Probs) -> NDArray[np.float64]:
    mean: NDArray[np.float64] = np.asarray(probs, dtype=np.float64).mean(axis=2)
    return mean


def _entropy(p: NDArray[np.float64], axis: int) -> NDArray[np.float64]:
    # 0 * log 0 = 0: unseen classes carry probability exactly 0.
    logp = np.log(np.where(p > 0, p, 1.0))
    return np.asarray(-(p * logp).sum(axis=axis), dtype=np.float64)


def least_confidence(probs: Probs) -> Scores:
    return np.asarray(1.0 - _mean(probs).max(axis=1), dtype=np.float64)


def margin(probs: Probs) -> Scores:
    """1 - (p1 - p2) on the mean over samples: 1 for a tie between the top two classes."""
    mean = _mean(probs)
    if mean.shape[1] < 2:
        return np.zeros(mean.shape[0])
    top2 = np.partition(mean, mean.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(probs: Probs) -> Scores:
    return _entropy(_mean(probs), axis=1)


def bald(probs: Probs) -> Scores:
    """Mutual information between the prediction and the model (Houlsby et al. 2011):
    entropy of the mean minus the mean entropy of the samples; 0 when T == 1."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[2] < 2:
        return np.zeros(p.shape[0])
    mi = _entropy(p.mean(axis=2), axis=1) - _entropy(p, axis=1).mean(axis=1)
    clipped: Scores = np.maximum(mi, 0.0)  # rounding can leave tiny negatives
    return clipped


MEASURES: dict[str, Callable[[Probs], Scores]] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
    "bald": bald,
}


def binary_view(probs: Probs) -> Probs:
    """Multi-label ``[N, C, T]`` -> ``[N * C, 2, T]``: one (no, yes) problem per item and label."""
    p = np.asarray(probs, dtype=np.float32)
    n, c, t = p.shape
    return np.stack([1.0 - p, p], axis=2).reshape(n * c, 2, t)


def per_label(probs: Probs, measure: Measure) -> Scores:
    """Multi-label scores per item and label ``[N, C]``."""
    n, c, _ = probs.shape
    return MEASURES[measure](binary_view(probs)).reshape(n, c)


def scores(probs: Probs, measure: Measure = "margin", multi_label: bool = False) -> Scores:
    """Scores ``[N]``; multi-label items average the per-label binary scores."""
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; known: {sorted(MEASURES)}")
    if multi_label:
        return np.asarray(per_label(probs, measure).mean(axis=1), dtype=np.float64)
    return MEASURES[measure](probs)


def uncertainty_figures(probs: Probs, multi_label: bool = False) -> dict[str, NDArray[np.float64]]:
    """Per-item figures reported with each prediction: ``[N]`` per measure (BALD only when
    T > 1) and, for multi-label, ``<measure>_per_label`` ``[N, C]``."""
    measures: list[Measure] = ["least_confidence", "margin", "entropy"]
    if probs.shape[2] > 1:
        measures.append("bald")
    figures: dict[str, NDArray[np.float64]] = {}
    for name in measures:
        if multi_label:
            labels = per_label(probs, name)
            figures[name] = labels.mean(axis=1)
            figures[f"{name}_per_label"] = labels
        else:
            figures[name] = MEASURES[name](probs)
    return figures


def star_lambda(round_: int, decay: float) -> float:
    """STAR's weight on the base model's uncertainty: decay**round, 1 at round 0, decreasing."""
    if round_ < 0 or not 0.0 < decay <= 1.0:
        raise ValueError("star_lambda needs round_ >= 0 and 0 < decay <= 1")
    return float(decay**round_)


def dynamic_uncertainty(mu_base: Scores, mu_lora: Scores, lam: float) -> Scores:
    """STAR's dynamic uncertainty: trust the base model early, the fresh adapter later."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError("lam must lie in [0, 1]")
    return lam * np.asarray(mu_base, dtype=np.float64) + (1.0 - lam) * np.asarray(
        mu_lora, dtype=np.float64
    )


def star_scores(
    base_probs: Probs, probs: Probs, round_: int, decay: float, multi_label: bool = False
) -> Scores:
    """What the server ranks by while an adapter of LoRA round ``round_`` serves: the margin of
    the base head (``base_probs``) and of the adapter (``probs``), mixed by ``star_lambda``."""
    lam = star_lambda(round_, decay)
    base = scores(base_probs, "margin", multi_label)
    return dynamic_uncertainty(base, scores(probs, "margin", multi_label), lam)
