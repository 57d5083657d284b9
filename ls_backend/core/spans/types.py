"""Spans and the tag space a token classifier predicts over.

A span is a region as Label Studio's ``<Labels>`` on ``<Text>`` stores it: character
offsets into the task's text, ``end`` exclusive, counted in Unicode code points (Python
``str`` indices; Label Studio's frontend stores code points too, not UTF-16 units).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

#: Token tag schemes. BIO: Begin, Inside, Outside. BILOU adds Last and Unit (one-token span).
TagScheme = Literal["BIO", "BILOU"]
#: BILOU: with the light head on random labeled sentences (3 seeds), CoNLL entity F1 rose
#: from 0.592 / 0.684 / 0.748 (BIO) to 0.623 / 0.719 / 0.782 at 100 / 300 / 1,000 sentences,
#: ATIS from 0.736 / 0.831 / 0.883 to 0.756 / 0.833 / 0.891. It doubles the tags, and with
#: them the head's refit time (benchmarks/RESULTS.md, "Spans").
DEFAULT_SCHEME: TagScheme = "BILOU"
SCHEMES: dict[str, tuple[str, ...]] = {"BIO": ("B", "I"), "BILOU": ("B", "I", "L", "U")}
OUTSIDE = "O"


@dataclass(frozen=True, order=True)
class Span:
    """``text[start:end]`` carries ``label``; ``score`` is the model's confidence (None for
    an annotation). Ordered by position, then label."""

    start: int
    end: int
    label: str
    score: float | None = field(default=None, compare=False)

    def key(self) -> tuple[int, int, str]:
        """What entity-level metrics match on: exact offsets and type."""
        return (self.start, self.end, self.label)


@dataclass(frozen=True)
class SpanLabelSpace:
    """The labels of one ``<Labels>`` control, in config order, and its token tags.

    Tag 0 is ``O``; label ``i`` owns tags ``1 + i * k`` .. ``i * k + k`` (``k`` prefixes of the
    scheme, in ``SCHEMES`` order): ``O, B-PER, I-PER, B-ORG, I-ORG`` for BIO.
    """

    labels: tuple[str, ...]
    scheme: TagScheme = DEFAULT_SCHEME

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a span label space needs at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels in {self.labels}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown tag scheme {self.scheme!r}; one of {sorted(SCHEMES)}")

    @property
    def prefixes(self) -> tuple[str, ...]:
        return SCHEMES[self.scheme]

    @property
    def size(self) -> int:
        """Number of tags (the classifier's classes)."""
        return 1 + len(self.labels) * len(self.prefixes)

    @property
    def tags(self) -> tuple[str, ...]:
        return (OUTSIDE, *(f"{p}-{label}" for label in self.labels for p in self.prefixes))

    def tag(self, prefix: str, label: int) -> int:
        """The tag index of ``prefix`` (``B``, ``I``, ...) for label index ``label``."""
        return 1 + label * len(self.prefixes) + self.prefixes.index(prefix)

    def split(self, tag: int) -> tuple[str, int]:
        """Tag index -> (prefix, label index); ``("O", -1)`` for outside."""
        if tag == 0:
            return OUTSIDE, -1
        label, prefix = divmod(tag - 1, len(self.prefixes))
        return self.prefixes[prefix], label

    def label_index(self, name: str) -> int:
        return self.labels.index(name)


def space_from_spans(
    spans: Sequence[Sequence[Span]], scheme: TagScheme = DEFAULT_SCHEME
) -> SpanLabelSpace:
    """The sorted label names that occur in ``spans`` (for data without a config)."""
    return SpanLabelSpace(tuple(sorted({s.label for row in spans for s in row})), scheme)


@dataclass(frozen=True)
class TokenProbs:
    """Tag probabilities of the units of N sentences, flat: ``probs`` ``[U, K, T]`` (K tags,
    T MC-dropout samples, 1 when deterministic) over all units in order, sentence ``i``
    owning rows ``offsets[i]:offsets[i + 1]`` (``offsets`` ``[N + 1]``, starting at 0)."""

    probs: NDArray[np.float32]
    offsets: NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.probs.ndim != 3:
            raise ValueError(f"probs must be [U, K, T], got shape {self.probs.shape}")
        if self.offsets.size == 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.probs):
            raise ValueError("offsets must run from 0 to the number of units")

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def lengths(self) -> NDArray[np.int64]:
        return np.diff(self.offsets)

    def mean(self) -> NDArray[np.float64]:
        """``[U, K]``: the mean over MC samples."""
        if self.probs.shape[2] == 1:  # deterministic: nothing to average
            return np.asarray(self.probs[:, :, 0], dtype=np.float64)
        mean: NDArray[np.float64] = np.asarray(self.probs, dtype=np.float64).mean(axis=2)
        return mean

    def sentence(self, i: int) -> NDArray[np.float32]:
        return self.probs[self.offsets[i] : self.offsets[i + 1]]

    def take(self, rows: NDArray[np.int64]) -> TokenProbs:
        """The sentences ``rows``, in that order."""
        parts = [self.sentence(int(i)) for i in rows]
        lengths = np.asarray([p.shape[0] for p in parts], dtype=np.int64)
        shape = (0, *self.probs.shape[1:])
        probs = np.concatenate(parts) if parts else np.zeros(shape, dtype=self.probs.dtype)
        return TokenProbs(probs, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def offsets_of(lengths: Sequence[int]) -> NDArray[np.int64]:
    """``[N + 1]`` row offsets of ragged rows of these lengths."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)
