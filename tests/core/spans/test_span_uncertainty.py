"""Sentence uncertainty from tag probabilities: higher = less sure, for every measure."""

from __future__ import annotations

import numpy as np
import pytest

from ls_backend.core.spans.alignment import decode_spans
from ls_backend.core.spans.types import SpanLabelSpace, TokenProbs, offsets_of
from ls_backend.core.spans.uncertainty import SPAN_MEASURES, span_scores, span_uncertainty_figures

SPACE = SpanLabelSpace(("PER",), "BIO")  # tags O, B-PER, I-PER


def units(n: int) -> np.ndarray:
    return np.array([[2 * i, 2 * i + 1] for i in range(n)], dtype=np.int64).reshape(-1, 2)


def batch(*sentences: list[list[float]]) -> tuple[TokenProbs, list[np.ndarray]]:
    rows = [np.asarray(s, dtype=np.float32).reshape(-1, SPACE.size) for s in sentences]
    probs = np.concatenate(rows)[:, :, None]
    return TokenProbs(probs, offsets_of([len(r) for r in rows])), [units(len(r)) for r in rows]


SURE = [0.98, 0.01, 0.01]
UNSURE = [0.5, 0.45, 0.05]


@pytest.mark.parametrize("measure", sorted(SPAN_MEASURES))
def test_a_hesitant_sentence_scores_above_a_sure_one(measure: str) -> None:
    probs, u = batch([SURE, SURE, SURE], [SURE, UNSURE, SURE], [])
    scores = span_scores(probs, decode_spans(probs, u, SPACE), measure)
    assert scores.shape == (3,)
    assert scores[1] > scores[0] and scores[2] == 0.0


def test_mnlp_and_mean_entropy_do_not_favour_long_sentences_but_the_sum_does() -> None:
    short, long_ = [SURE, UNSURE], [SURE, UNSURE] * 5
    probs, u = batch(short, long_)
    figures = span_uncertainty_figures(probs, decode_spans(probs, u, SPACE))
    assert figures["mnlp"][0] == pytest.approx(figures["mnlp"][1])
    assert figures["entropy"][0] == pytest.approx(figures["entropy"][1])
    assert figures["entropy_sum"][1] == pytest.approx(5 * figures["entropy_sum"][0])


def test_least_confident_span_looks_at_predicted_spans_and_at_possible_missed_ones() -> None:
    weak_span = [[0.1, 0.6, 0.3], SURE]  # B-PER at 0.6: the span is unsure
    missed = [[0.7, 0.29, 0.01], SURE]  # O at 0.7: an entity may hide here
    probs, u = batch(weak_span, missed, [SURE, SURE])
    decoded = decode_spans(probs, u, SPACE)
    assert len(decoded.spans[0]) == 1 and decoded.spans[1] == []
    scores = span_scores(probs, decoded, "least_confident_span")
    assert scores[0] == pytest.approx(0.4) and scores[1] == pytest.approx(0.3, abs=1e-6)
    assert scores[2] == pytest.approx(0.02, abs=1e-6)


def test_an_unknown_measure_is_refused() -> None:
    probs, u = batch([SURE])
    with pytest.raises(ValueError, match="unknown span uncertainty"):
        span_scores(probs, decode_spans(probs, u, SPACE), "margin")
