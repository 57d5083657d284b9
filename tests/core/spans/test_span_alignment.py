"""Spans <-> unit tags <-> spans, with exact offsets on the original text."""

from __future__ import annotations

import numpy as np
import pytest

from ls_backend.core.spans.alignment import (
    decode,
    decode_spans,
    group_units,
    owners,
    spans_to_tags,
    tags_to_spans,
    viterbi,
    windows,
)
from ls_backend.core.spans.types import Span, SpanLabelSpace, TokenProbs, offsets_of

BIO = SpanLabelSpace(("PER", "LOC"), "BIO")
BILOU = SpanLabelSpace(("PER", "LOC"), "BILOU")


def whitespace_units(text: str) -> np.ndarray:
    """Units at whitespace, as the tokenizer's words are for plain words."""
    out, start = [], None
    for i, ch in enumerate(text + " "):
        if ch.isspace() and start is not None:
            out.append((start, i))
            start = None
        elif not ch.isspace() and start is None:
            start = i
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def test_tag_space_layout_puts_outside_first_and_each_label_s_prefixes_together() -> None:
    assert BIO.tags == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    assert BILOU.size == 9 and BILOU.tags[5:] == ("B-LOC", "I-LOC", "L-LOC", "U-LOC")
    assert BILOU.split(BILOU.tag("L", 1)) == ("L", 1) and BIO.split(0) == ("O", -1)


@pytest.mark.parametrize("space", [BIO, BILOU], ids=["BIO", "BILOU"])
def test_gold_spans_go_through_tags_and_back_unchanged(space: SpanLabelSpace) -> None:
    text = "  Anna  Maria lives in   New York 🙂 city"
    units = whitespace_units(text)
    gold = [Span(2, 13, "PER"), Span(25, 33, "LOC"), Span(34, 35, "PER")]
    tags, inexact = spans_to_tags(units, gold, space)
    assert inexact == []
    back = tags_to_spans(tags, units, space)
    assert back == gold
    assert [text[s.start : s.end] for s in back] == ["Anna  Maria", "New York", "🙂"]


def test_bilou_tags_mark_single_and_last_units() -> None:
    units = whitespace_units("Anna met Bob Smith")
    tags, _ = spans_to_tags(units, [Span(0, 4, "PER"), Span(9, 18, "PER")], BILOU)
    assert [BILOU.tags[t] for t in tags] == ["U-PER", "O", "B-PER", "L-PER"]


def test_a_boundary_inside_a_unit_widens_the_span_and_is_reported() -> None:
    units = whitespace_units("the firemen came")
    tags, inexact = spans_to_tags(units, [Span(4, 8, "PER")], BIO)  # "fire" of "firemen"
    assert inexact == [0]
    assert tags_to_spans(tags, units, BIO) == [Span(4, 11, "PER")]


def test_a_span_over_no_unit_is_dropped_and_reported() -> None:
    units = whitespace_units("a  b")
    tags, inexact = spans_to_tags(units, [Span(1, 3, "PER")], BIO)  # the spaces only
    assert inexact == [0] and not tags.any()


def test_lenient_reading_of_invalid_sequences_starts_a_span_at_a_stray_inside_tag() -> None:
    units = whitespace_units("a b c d")
    tags = np.array([BIO.tag("I", 0), BIO.tag("I", 0), BIO.tag("I", 1), 0])
    assert tags_to_spans(tags, units, BIO) == [Span(0, 3, "PER"), Span(4, 5, "LOC")]


def test_group_units_joins_word_pieces_and_keeps_unmapped_tokens_alone() -> None:
    offsets = np.array([[0, 4], [4, 7], [8, 9], [9, 10], [11, 12]])
    unit_of, units = group_units(offsets, [0, 0, 1, 2, None])
    assert unit_of.tolist() == [0, 0, 1, 2, 3]
    assert units.tolist() == [[0, 7], [8, 9], [9, 10], [11, 12]]


def test_windows_cover_every_token_and_each_token_takes_the_most_central_window() -> None:
    assert windows(5, 8, 2) == [(0, 5)]
    cuts = windows(20, 8, 4)
    assert cuts[0] == (0, 8) and cuts[-1] == (12, 20)
    assert all(b - a == 8 for a, b in cuts)
    owner = owners(20, cuts)
    assert (owner >= 0).all()
    for i, w in enumerate(owner):
        a, b = cuts[w]
        assert a <= i < b
    # Token 5 sits 1 from the end of window 0 and 1 from the start of window 1 ...
    # token 6 is 2 into window 1 (4..12) and 1 from window 0's end: window 1.
    assert owner[6] == 1 and owner[0] == 0 and owner[19] == len(cuts) - 1


def brute_force_best_valid(logp: np.ndarray, space: SpanLabelSpace) -> tuple[float, list[int]]:
    import itertools

    best = (-np.inf, [])
    for path in itertools.product(range(space.size), repeat=logp.shape[0]):
        spans_ok = True
        for t, tag in enumerate(path):
            prefix, label = space.split(tag)
            prev = space.split(path[t - 1]) if t else ("O", -1)
            if prefix in ("I", "L") and not (prev[0] in ("B", "I") and prev[1] == label):
                spans_ok = False
            if prefix in ("B", "U", "O") and space.scheme == "BILOU" and prev[0] in ("B", "I"):
                spans_ok = False
        last = space.split(path[-1])[0]
        if space.scheme == "BILOU" and last in ("B", "I"):
            spans_ok = False
        if spans_ok:
            score = float(sum(logp[t, tag] for t, tag in enumerate(path)))
            if score > best[0]:
                best = (score, list(path))
    return best


@pytest.mark.parametrize("space", [BIO, BILOU], ids=["BIO", "BILOU"])
def test_viterbi_finds_the_best_valid_sequence(space: SpanLabelSpace) -> None:
    rng = np.random.default_rng(0)
    for length in (1, 2, 3, 4):
        logp = np.log(rng.dirichlet(np.ones(space.size) * 0.3, size=length))
        path = viterbi(logp[None], np.array([length]), space)[0]
        score, expected = brute_force_best_valid(logp, space)
        assert float(sum(logp[t, tag] for t, tag in enumerate(path))) == pytest.approx(score)


def test_decode_handles_ragged_batches_and_empty_sentences_like_one_at_a_time() -> None:
    rng = np.random.default_rng(1)
    lengths = [3, 0, 7, 1, 5]
    probs = rng.dirichlet(np.ones(BIO.size) * 0.5, size=sum(lengths)).astype(np.float32)
    offsets = offsets_of(lengths)
    together = decode(probs, offsets, BIO, chunk=2)
    for i in range(len(lengths)):
        alone = decode(probs[offsets[i] : offsets[i + 1]], offsets_of([lengths[i]]), BIO)
        assert together[offsets[i] : offsets[i + 1]].tolist() == alone.tolist()


def test_constrained_decoding_never_starts_a_span_with_inside() -> None:
    probs = np.array([[0.1, 0.25, 0.6, 0.0, 0.05], [0.1, 0.25, 0.6, 0.0, 0.05]])
    assert decode(probs, offsets_of([2]), BIO, constrained=False).tolist() == [2, 2]
    assert decode(probs, offsets_of([2]), BIO).tolist() == [1, 2]  # B-PER I-PER


def test_decoded_spans_carry_offsets_on_the_original_text_and_a_score() -> None:
    text = "Visit  Zürich 🙂 now"
    units = whitespace_units(text)
    p = np.full((4, BIO.size), 0.01, dtype=np.float32)
    p[[0, 2, 3], 0] = 0.96
    p[1, BIO.tag("B", 1)] = 0.8
    p[1, 0] = 0.17
    decoded = decode_spans(TokenProbs(p[:, :, None], offsets_of([4])), [units], BIO)
    (span,) = decoded.spans[0]
    assert text[span.start : span.end] == "Zürich" and span.label == "LOC"
    assert span.score == pytest.approx(0.8)
    min_score = decode_spans(TokenProbs(p[:, :, None], offsets_of([4])), [units], BIO, score="min")
    assert min_score.spans[0][0].score == pytest.approx(0.8)


def test_labels_the_model_never_predicts_are_left_out_of_decoding_without_changing_it() -> None:
    rng = np.random.default_rng(2)
    lengths = [4, 6, 2]
    probs = rng.dirichlet(np.ones(BILOU.size), size=sum(lengths))
    probs[:, [BILOU.tag(p, 0) for p in BILOU.prefixes]] = 0.0  # PER never predicted
    probs /= probs.sum(axis=1, keepdims=True)
    tags = decode(probs, offsets_of(lengths), BILOU)
    assert not np.isin(tags, [BILOU.tag(p, 0) for p in BILOU.prefixes]).any()
    only_loc = SpanLabelSpace(("LOC",), "BILOU")
    kept = [0, *(BILOU.tag(p, 1) for p in BILOU.prefixes)]
    expected = decode(probs[:, kept], offsets_of(lengths), only_loc)
    assert tags.tolist() == [kept[t] for t in expected]
    assert decode(np.eye(BILOU.size)[[0, 0]], offsets_of([2]), BILOU).tolist() == [0, 0]


@pytest.mark.parametrize("score", ["mean", "min"])
def test_span_scores_over_a_batch_match_one_sentence_at_a_time(score: str) -> None:
    rng = np.random.default_rng(4)
    lengths = [5, 0, 3, 8]
    probs = rng.dirichlet(np.ones(BILOU.size) * 0.2, size=sum(lengths)).astype(np.float32)
    offsets = offsets_of(lengths)
    units = [
        np.array([[2 * j, 2 * j + 1] for j in range(n)], dtype=np.int64).reshape(-1, 2)
        for n in lengths
    ]
    batch = decode_spans(TokenProbs(probs[:, :, None], offsets), units, BILOU, score=score)
    assert sum(len(s) for s in batch.spans) > 0
    for i, n in enumerate(lengths):
        rows = probs[offsets[i] : offsets[i + 1]]
        alone = decode_spans(
            TokenProbs(rows[:, :, None], offsets_of([n])), [units[i]], BILOU, score=score
        )
        assert [(s.key(), round(s.score, 6)) for s in alone.spans[0]] == [
            (s.key(), round(s.score, 6)) for s in batch.spans[i]
        ]
        conf = rows[np.arange(n), batch.tags[offsets[i] : offsets[i + 1]]]
        for span in batch.spans[i]:
            a, b = span.start // 2, (span.end - 1) // 2
            expected = conf[a : b + 1].mean() if score == "mean" else conf[a : b + 1].min()
            assert span.score == pytest.approx(float(expected), rel=1e-5)
