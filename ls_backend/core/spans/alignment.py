"""Texts <-> tokens <-> spans, with character offsets into the original text.

The classifier predicts one tag per *unit*: a word as the tokenizer's pre-tokenizer cuts
the text (whitespace, and each punctuation mark on its own: "U.S." is 4 units). A unit's
offsets are those of its first and last sub-word token, which the fast tokenizer maps back
into the original text even where it lowercases or strips accents (MiniLM is uncased), so
every span we output has exact offsets on the text as given: case, Unicode, repeated
spaces and emoji untouched.

A gold span whose boundary falls inside a unit ("fire" in "firemen") is widened to the
units it touches; ``spans_to_tags`` reports it, so a caller can count it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.spans.types import Span, SpanLabelSpace, TokenProbs

Index = NDArray[np.int64]
#: How a span's score is made from the probabilities of its units' decoded tags.
SpanScore = Literal["mean", "min"]
#: log(0) stand-in: a tag the head gives probability 0 (never seen) stays decodable.
_LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class TokenizedText:
    """One text as sub-word tokens (no special tokens) grouped into units."""

    text: str
    ids: Index  # [S] token ids
    offsets: Index  # [S, 2] character [start, end) of each token in ``text``
    unit_of: Index  # [S] the unit each token belongs to
    units: Index  # [n, 2] character [start, end) of each unit

    @property
    def n_units(self) -> int:
        return int(self.units.shape[0])


def group_units(offsets: Index, word_ids: Sequence[int | None]) -> tuple[Index, Index]:
    """(unit of each token [S], unit offsets [n, 2]) from the tokenizer's word ids: tokens of
    one word form one unit; a token without a word id forms its own."""
    unit_of = np.empty(len(word_ids), dtype=np.int64)
    units: list[list[int]] = []
    previous: int | None = None
    for i, word in enumerate(word_ids):
        if word is None or word != previous or not units:
            units.append([int(offsets[i, 0]), int(offsets[i, 1])])
        else:
            units[-1][1] = int(offsets[i, 1])
        unit_of[i] = len(units) - 1
        previous = word
    return unit_of, np.asarray(units, dtype=np.int64).reshape(-1, 2)


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, stop)`` token ranges of at most ``size`` tokens that cover ``0..n``, the
    next starting ``size - overlap`` after the last; the last one ends at ``n`` (no stub)."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError("windows need size >= 1 and 0 <= overlap < size")
    if n <= size:
        return [(0, n)]
    step = size - overlap
    starts = list(range(0, n - size, step)) + [n - size]
    return [(s, s + size) for s in starts]


def owners(n: int, spans: Sequence[tuple[int, int]]) -> Index:
    """For each token, the window whose output it takes: the one where it sits farthest from
    a cut (the text's own ends are no cut), so every token sees the most context."""
    best = np.full(n, -1, dtype=np.int64)
    margin = np.full(n, -1.0)
    for w, (start, stop) in enumerate(spans):
        i = np.arange(start, stop)
        left = i - start if start > 0 else np.full(i.size, np.inf)
        right = stop - 1 - i if stop < n else np.full(i.size, np.inf)
        m = np.minimum(left, right)
        better = m > margin[start:stop]
        best[start:stop][better] = w
        margin[start:stop][better] = m[better]
    return best


def pool_units(vectors: NDArray[np.float32], unit_of: Index, n_units: int) -> NDArray[np.float32]:
    """Mean of each unit's token vectors ``[S, D]`` -> ``[n, D]``."""
    out = np.zeros((n_units, vectors.shape[1]), dtype=np.float64)
    np.add.at(out, unit_of, vectors)
    counts = np.bincount(unit_of, minlength=n_units).astype(np.float64)
    pooled: NDArray[np.float32] = (out / np.maximum(counts, 1.0)[:, None]).astype(np.float32)
    return pooled


def spans_to_tags(
    units: Index, spans: Sequence[Span], space: SpanLabelSpace
) -> tuple[Index, list[int]]:
    """Gold tags per unit, and the positions in ``spans`` of spans that do not sit on unit
    boundaries (widened to the units they touch) or touch no free unit (dropped).

    ``spans`` must not overlap (``validation.check_regions``); labels outside ``space`` raise.
    """
    tags = np.zeros(units.shape[0], dtype=np.int64)
    taken = np.zeros(units.shape[0], dtype=bool)
    inexact: list[int] = []
    for i in sorted(range(len(spans)), key=lambda j: spans[j]):
        span = spans[i]
        label = space.label_index(span.label)
        touched = np.flatnonzero((units[:, 0] < span.end) & (units[:, 1] > span.start) & ~taken)
        if touched.size == 0:
            inexact.append(i)
            continue
        first, last = int(touched[0]), int(touched[-1])
        if (
            units[first, 0] != span.start
            or units[last, 1] != span.end
            or last - first + 1 != (touched.size)
        ):
            inexact.append(i)
        run = np.arange(first, last + 1)
        run = run[~taken[run]]
        taken[run] = True
        if space.scheme == "BILOU" and run.size == 1:
            tags[run[0]] = space.tag("U", label)
            continue
        tags[run] = space.tag("I", label)
        tags[run[0]] = space.tag("B", label)
        if space.scheme == "BILOU":
            tags[run[-1]] = space.tag("L", label)
    return tags, sorted(inexact)


def _span_bounds(
    tags: Index, starts: NDArray[np.bool_], space: SpanLabelSpace
) -> tuple[Index, Index, Index]:
    """(first unit, last unit, label index) of every span in ``tags``, read leniently; units
    where ``starts`` is set begin a new sentence. Unit i continues the span of unit i - 1
    exactly when it is an ``I``/``L`` of the label of an ``B``/``I`` before it."""
    k = len(space.prefixes)
    label = np.where(tags > 0, (tags - 1) // k, -1)
    prefix = np.where(tags > 0, (tags - 1) % k, -1)  # 0 B, 1 I, 2 L, 3 U
    inner = (prefix == 1) | (prefix == 2)
    open_ = (prefix == 0) | (prefix == 1)
    cont = np.zeros(tags.size, dtype=bool)
    cont[1:] = inner[1:] & open_[:-1] & (label[1:] == label[:-1]) & ~starts[1:]
    entity = tags > 0
    begins = np.flatnonzero(entity & ~cont)
    nxt = np.zeros(tags.size, dtype=bool)
    nxt[:-1] = cont[1:]
    ends = np.flatnonzero(entity & ~nxt)
    return begins, ends, label[begins]


def tags_to_spans(
    tags: Index,
    units: Index,
    space: SpanLabelSpace,
    confidence: NDArray[np.float64] | None = None,
    score: SpanScore = "mean",
) -> list[Span]:
    """Unit tags -> spans with the units' character offsets. Invalid sequences are read
    leniently, as conlleval does: an ``I-X`` (or ``L-X``) that does not continue an ``X``
    starts one. ``confidence`` (probability of each unit's tag) gives each span a score."""
    starts = np.zeros(tags.size, dtype=bool)
    starts[:1] = True
    return _spans_of(tags, units, space, starts, confidence, score, np.array([0, tags.size]))[0]


def _spans_of(
    tags: Index,
    units: Index,
    space: SpanLabelSpace,
    starts: NDArray[np.bool_],
    confidence: NDArray[np.float64] | None,
    score: SpanScore,
    offsets: Index,
) -> list[list[Span]]:
    """Spans per sentence of a ragged batch (``units`` ``[U, 2]`` stacked like ``tags``)."""
    out: list[list[Span]] = [[] for _ in range(offsets.size - 1)]
    if not tags.any():  # most sentences: nothing to read
        return out
    firsts, lasts, labels = _span_bounds(tags, starts, space)
    values: list[float | None] = [None] * firsts.size
    if confidence is not None and firsts.size:
        if score == "mean":
            cumulative = np.concatenate([[0.0], np.cumsum(confidence)])
            values = list((cumulative[lasts + 1] - cumulative[firsts]) / (lasts - firsts + 1))
        else:
            # [first, last + 1) per span; the sentinel makes an index at the very end valid.
            padded = np.append(confidence, np.inf)
            values = list(np.minimum.reduceat(padded, np.c_[firsts, lasts + 1].ravel())[::2])
    sentence = np.searchsorted(offsets, firsts, side="right") - 1
    for i, first, last, label, value in zip(
        sentence.tolist(), firsts.tolist(), lasts.tolist(), labels.tolist(), values, strict=True
    ):
        out[i].append(
            Span(
                int(units[first, 0]),
                int(units[last, 1]),
                space.labels[label],
                None if value is None else float(value),
            )
        )
    return out


@dataclass(frozen=True)
class _Structure:
    """Which tag may follow which, for the structured Viterbi (BIO validity)."""

    fresh: Index  # tags that open something new (O, B, U): any "free" predecessor
    free: Index  # tags after which something new may open
    cont: Index  # tags that continue a span (I, L)
    cont_from: Index  # [len(cont), 2]: the B-X and I-X a continuing tag may follow
    end: Index  # tags a sequence may end on


def _structure(space: SpanLabelSpace) -> _Structure:
    fresh, free, cont, cont_from, end = [0], [0], [], [], [0]
    bilou = space.scheme == "BILOU"
    for label in range(len(space.labels)):
        b, i = space.tag("B", label), space.tag("I", label)
        fresh.append(b)
        cont.extend([i] + ([space.tag("L", label)] if bilou else []))
        cont_from.extend([[b, i]] * (2 if bilou else 1))
        if bilou:
            u, last = space.tag("U", label), space.tag("L", label)
            fresh.append(u)
            free.extend([last, u])
            end.extend([last, u])
        else:
            free.extend([b, i])
            end.extend([b, i])
    arr = (np.asarray(x, dtype=np.int64) for x in (fresh, free, cont))
    f, fr, c = arr
    return _Structure(
        f, fr, c, np.asarray(cont_from, dtype=np.int64).reshape(-1, 2), np.asarray(end, np.int64)
    )


def viterbi(logp: NDArray[np.float64], lengths: Index, space: SpanLabelSpace) -> Index:
    """The most probable *valid* tag sequence per row of ``logp`` ``[B, L, K]`` (rows padded
    past ``lengths``): no ``I-X`` after anything but ``B-X``/``I-X`` (BILOU: also ends closed).
    Each step looks only at the allowed predecessors, so it costs O(K), not O(K^2)."""
    st = _structure(space)
    rows, steps, k = logp.shape
    back = np.zeros((rows, steps, k), dtype=np.int64)
    score: NDArray[np.float64] = np.full((rows, k), -np.inf)
    if steps == 0:
        return np.zeros((rows, 0), dtype=np.int64)
    score[:, st.fresh] = logp[:, 0, st.fresh]
    for t in range(1, steps):
        new = np.full((rows, k), -np.inf)
        free_scores = score[:, st.free]
        arg = st.free[free_scores.argmax(axis=1)]
        best = free_scores.max(axis=1)
        new[:, st.fresh] = best[:, None] + logp[:, t, st.fresh]
        back[:, t, st.fresh] = arg[:, None]
        pair = score[:, st.cont_from]  # [B, C, 2]
        pick = pair.argmax(axis=2)
        new[:, st.cont] = pair.max(axis=2) + logp[:, t, st.cont]
        back[:, t, st.cont] = st.cont_from[np.arange(st.cont.size), pick]
        live = (t < lengths)[:, None]
        score = np.asarray(np.where(live, new, score), dtype=np.float64)
    ends = score[:, st.end]
    path = np.zeros((rows, steps), dtype=np.int64)
    last = np.maximum(lengths - 1, 0)
    row = np.arange(rows)
    path[row, last] = st.end[ends.argmax(axis=1)]
    for t in range(steps - 1, 0, -1):
        live = t <= last
        prev = back[row, t, path[row, t]]
        path[live, t - 1] = prev[live]
    return path


def decode(
    probs: NDArray[np.floating[Any]],
    offsets: Index,
    space: SpanLabelSpace,
    constrained: bool = True,
    chunk: int = 256,
) -> Index:
    """Tags for every unit of a ragged batch: ``probs`` ``[U, K]`` over all units, sentence
    ``i`` owning rows ``offsets[i]:offsets[i + 1]``. Constrained: Viterbi over valid
    sequences (``viterbi``); else the most probable tag per unit."""
    mean = np.asarray(probs)
    if not constrained:
        return np.asarray(mean.argmax(axis=1), dtype=np.int64)
    tags = np.zeros(mean.shape[0], dtype=np.int64)
    if mean.shape[0] == 0:
        return tags
    # Labels none of whose tags has any probability (a head that has not seen them) cannot
    # be on the best path: Viterbi runs over the others only.
    k = len(space.prefixes)
    seen = mean.max(axis=0)[1:].reshape(len(space.labels), k).max(axis=1) > 0
    live = [int(i) for i in np.flatnonzero(seen)]
    if not live:
        return tags
    small = SpanLabelSpace(tuple(space.labels[i] for i in live), space.scheme)
    columns = np.asarray([0] + [1 + i * k + j for i in live for j in range(k)], dtype=np.int64)
    logp = np.log(np.maximum(mean[:, columns], _LOG_FLOOR)).astype(np.float64)
    lengths = np.diff(offsets)
    order = np.argsort(lengths, kind="stable")  # similar lengths share a padded block
    for begin in range(0, order.size, chunk):
        rows = order[begin : begin + chunk]
        width = int(lengths[rows].max())
        if width == 0:
            continue
        steps = np.arange(width)
        valid = steps[None, :] < lengths[rows][:, None]
        index = np.where(valid, offsets[rows][:, None] + steps[None, :], 0)
        block = np.where(valid[:, :, None], logp[index], 0.0)
        path = viterbi(block, lengths[rows], small)
        tags[index[valid]] = columns[path[valid]]
    return tags


@dataclass(frozen=True)
class Decoded:
    """What a model's tag probabilities say, for a ragged batch of sentences."""

    tags: Index  # [U] the decoded tag of every unit
    confidence: NDArray[np.float64]  # [U] the (mean) probability of that tag
    spans: list[list[Span]]  # per sentence, with character offsets and a score each


def decode_spans(
    probs: TokenProbs,
    units: Sequence[Index],
    space: SpanLabelSpace,
    constrained: bool = True,
    score: SpanScore = "mean",
) -> Decoded:
    """Spans per sentence from tag probabilities; ``units[i]`` are sentence ``i``'s unit
    offsets (``TokenizedText.units``)."""
    if len(units) != len(probs):
        raise ValueError(f"{len(units)} unit lists for {len(probs)} sentences")
    mean = probs.mean()
    tags = decode(mean, probs.offsets, space, constrained)
    confidence = mean[np.arange(tags.size), tags]
    stacked = np.concatenate(list(units)) if len(units) else np.zeros((0, 2), dtype=np.int64)
    starts = np.zeros(tags.size, dtype=bool)
    starts[probs.offsets[:-1][probs.lengths > 0]] = True
    spans = _spans_of(tags, stacked, space, starts, confidence, score, probs.offsets)
    return Decoded(tags, confidence, spans)
