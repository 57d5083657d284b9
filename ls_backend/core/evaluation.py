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

    def at_least_as_good_as(self, other: Metrics) -> bool:
        """The promotion rule: accuracy first, macro-F1 breaks ties (tolerance for float noise)."""
        eps = 1e-9
        if self.accuracy > other.accuracy + eps:
            return True
        return self.accuracy >= other.accuracy - eps and self.macro_f1 >= other.macro_f1 - eps


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
    if space.multi_label:
        predicted = (mean >= 0.5).astype(np.int64)
        accuracy = float((predicted == targets).all(axis=1).mean())
        macro_f1 = float(f1_score(targets, predicted, average="macro", zero_division=0))
        confidence = np.maximum(mean, 1 - mean).ravel()
        correct = (predicted == targets).ravel()
    else:
        predicted = mean.argmax(axis=1)
        accuracy = float((predicted == targets).mean())
        present = np.unique(targets)
        macro_f1 = float(
            f1_score(targets, predicted, labels=present, average="macro", zero_division=0)
        )
        confidence = mean.max(axis=1)
        correct = predicted == targets
    return Metrics(accuracy, macro_f1, expected_calibration_error(confidence, correct), n)


def strata_of(space: LabelSpace, targets: NDArray[np.int64]) -> list[int]:
    """One stratum per item: its class, or its first label for multi-label (-1: none)."""
    if not space.multi_label:
        return [int(t) for t in targets]
    return [int(np.argmax(row)) if row.any() else -1 for row in targets]
