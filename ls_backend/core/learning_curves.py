"""Figures of merit for active-learning curves (accuracy against number of labels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def curve_auc(accuracies: Sequence[float]) -> float:
    """Area under the learning curve: the mean accuracy over the evaluation points."""
    if len(accuracies) == 0:
        raise ValueError("an empty learning curve has no area")
    return float(np.mean(accuracies))


def ripl(auc: float, auc_random: float) -> float:
    """Relative improvement over passive learning (STAR): the share of the gap between random
    selection and a perfect curve that a strategy closes; negative when worse than random."""
    if auc_random >= 1.0:
        raise ValueError("random already has an AUC of 1: RIPL is undefined")
    return (auc - auc_random) / (1.0 - auc_random)


def ripl_standard_error(aucs: Sequence[float], random_aucs: Sequence[float]) -> float | None:
    """Standard error of RIPL over seeds, paired: seed s of a strategy against seed s of random
    (same initial labels), so the spread of the seeds themselves cancels. None below 2 seeds."""
    if len(aucs) != len(random_aucs):
        raise ValueError("pairing needs one random run per seed")
    if len(aucs) < 2:
        return None
    gains = (np.asarray(aucs) - np.asarray(random_aucs)) / (1.0 - float(np.mean(random_aucs)))
    return float(gains.std(ddof=1) / np.sqrt(len(gains)))


def labels_to_reach(
    labels: Sequence[int], accuracies: Sequence[float], target: float
) -> int | None:
    """Fewest labels at which the curve first reaches ``target``; None if it never does."""
    for n, acc in zip(labels, accuracies, strict=True):
        if acc >= target:
            return int(n)
    return None


def savings(labels_needed: int | None, labels_random: int | None) -> float | None:
    """Share of random's labels a strategy saves to reach the same target (0.6 = 60% fewer)."""
    if labels_needed is None or labels_random is None:
        return None
    return 1.0 - labels_needed / labels_random
