"""Entity-level F1 counts exact offsets and type; the paired terms give the F1 change."""

from __future__ import annotations

import numpy as np
import pytest

from ls_backend.core.spans.metrics import counts, evaluate_spans, micro_f1, paired_f1_terms
from ls_backend.core.spans.types import Span

GOLD = [
    [Span(0, 4, "PER"), Span(10, 16, "LOC")],
    [],
    [Span(3, 8, "ORG")],
]


def test_a_wrong_boundary_or_type_is_both_a_false_positive_and_a_false_negative() -> None:
    pred = [
        [Span(0, 4, "PER"), Span(10, 15, "LOC")],  # one exact, one boundary off
        [Span(1, 2, "PER")],  # spurious
        [Span(3, 8, "LOC")],  # right place, wrong type
    ]
    m = evaluate_spans(pred, GOLD)
    assert (m.precision, m.recall) == (pytest.approx(1 / 4), pytest.approx(1 / 3))
    assert m.f1 == pytest.approx(2 * 1 / (2 * 1 + 3 + 2))
    assert m.entities == 3 and m.n == 3
    assert m.per_type["PER"].f1 == pytest.approx(2 / 3) and m.per_type["ORG"].support == 1
    assert m.per_type["ORG"].f1 == 0.0 and m.per_type["LOC"].precision == 0.0


def test_perfect_predictions_score_one_and_scores_ignore_span_scores() -> None:
    pred = [[Span(s.start, s.end, s.label, 0.3) for s in row] for row in GOLD]
    assert evaluate_spans(pred, GOLD).f1 == 1.0


def test_counts_per_sentence() -> None:
    pred = [[Span(0, 4, "PER")], [Span(1, 2, "PER")], []]
    assert counts(pred, GOLD).tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]


def test_paired_terms_average_to_the_exact_f1_difference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        cand = rng.integers(0, 4, size=(30, 3))
        base = rng.integers(0, 4, size=(30, 3))
        c, b = paired_f1_terms(cand, base)
        assert float((c - b).mean()) == pytest.approx(micro_f1(cand) - micro_f1(base))
        assert float(b.sum()) == pytest.approx(0.0, abs=1e-9)


def test_paired_terms_are_zero_when_there_is_nothing_to_count() -> None:
    zero = np.zeros((4, 3), dtype=np.int64)
    c, b = paired_f1_terms(zero, zero)
    assert not c.any() and not b.any()


def test_the_classification_promotion_rule_runs_unchanged_on_the_paired_f1_terms() -> None:
    from ls_backend.core.evaluation import paired_gain, should_promote

    rng = np.random.default_rng(1)
    gold = rng.integers(1, 4, size=200)
    base_tp = rng.binomial(gold, 0.6)
    cand_tp = np.minimum(gold, base_tp + rng.binomial(1, 0.5, size=200))  # clearly better
    base = np.c_[base_tp, rng.integers(0, 2, 200), gold - base_tp]
    cand = np.c_[cand_tp, base[:, 1], gold - cand_tp]
    c, b = paired_f1_terms(cand, base)
    gain, se = paired_gain(c, b)
    assert gain == pytest.approx(micro_f1(cand) - micro_f1(base)) and gain > 2 * se
    assert should_promote(c, b, same_kind=False)[0]
    assert not should_promote(*paired_f1_terms(base, cand), same_kind=False)[0]
