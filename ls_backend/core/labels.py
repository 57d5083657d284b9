"""The label space a model predicts over, and the array shapes the core passes around."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Class probabilities shaped ``[N, C, T]`` (T = MC-dropout samples, 1 when off).
#: Single-label: each ``[:, :, t]`` row sums to 1. Multi-label: each entry is the
#: independent probability that label ``c`` applies.
Probs = NDArray[np.float32]
#: Embeddings shaped ``[N, D]``, L2-normalised.
Embeddings = NDArray[np.float32]


@dataclass(frozen=True)
class LabelSpace:
    """The labels of one ``Choices`` tag, in config order."""

    labels: tuple[str, ...]
    multi_label: bool = False

    def __post_init__(self) -> None:
        if len(self.labels) < 2 and not self.multi_label:
            raise ValueError("a single-choice label space needs at least 2 labels")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels in {self.labels}")

    @property
    def size(self) -> int:
        return len(self.labels)

    def encode(self, chosen: Sequence[Sequence[str]]) -> NDArray[np.int64]:
        """Label names per item -> class indices ``[N]`` (single) or 0/1 matrix ``[N, C]`` (multi).

        Names outside the space are dropped; single-label items keep their first known name.
        """
        index = {name: i for i, name in enumerate(self.labels)}
        if self.multi_label:
            out = np.zeros((len(chosen), self.size), dtype=np.int64)
            for row, names in enumerate(chosen):
                for name in names:
                    if name in index:
                        out[row, index[name]] = 1
            return out
        ids = []
        for names in chosen:
            known = [index[n] for n in names if n in index]
            if not known:
                raise ValueError(f"no known label among {list(names)}")
            ids.append(known[0])
        return np.asarray(ids, dtype=np.int64)

    def decide(self, probs: Probs, threshold: float = 0.5) -> list[list[int]]:
        """Mean probabilities -> chosen class indices per item (argmax, or all above threshold)."""
        mean = probs.mean(axis=2)
        if not self.multi_label:
            return [[int(i)] for i in mean.argmax(axis=1)]
        chosen = []
        for row in mean:
            above = [int(i) for i in np.flatnonzero(row >= threshold)]
            chosen.append(above)
        return chosen
