import numpy as np
import pytest

from ls_backend.core.evaluation import (
    Metrics,
    evaluate,
    expected_calibration_error,
    holdout_split,
    stratified_folds,
)
from ls_backend.core.labels import LabelSpace


def test_holdout_is_stable_as_labels_arrive():
    keys = list(range(200))
    strata = [k % 4 for k in keys]
    _, held = holdout_split(keys, strata, 0.2)
    more = keys + list(range(200, 400))
    _, held_more = holdout_split(more, [k % 4 for k in more], 0.2)
    assert set(held) <= set(held_more)  # nothing once held out is ever trained on
    assert 0.1 < len(held_more) / len(more) < 0.3


def test_holdout_covers_every_class_with_three_items():
    keys = list(range(9))
    strata = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    train, held = holdout_split(keys, strata, 0.01)
    assert {strata[i] for i in held} == {"a", "b", "c"}
    assert sorted([*train, *held]) == keys


def test_stratified_folds_partition_and_balance():
    strata = [0] * 10 + [1] * 5
    folds = stratified_folds(strata, 5)
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests) == list(range(15))
    for train, test in folds:
        assert set(train).isdisjoint(test)
        assert sorted(strata[i] for i in test) == [0, 0, 1]


def test_evaluate_single_label():
    space = LabelSpace(("a", "b", "c"))
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    m = evaluate(space, probs[:, :, None].astype(np.float32), np.array([0, 1, 1, 2]))
    assert m.accuracy == pytest.approx(0.75)
    assert m.n == 4
    assert 0 < m.macro_f1 < 1


def test_evaluate_multi_label_is_exact_match():
    space = LabelSpace(("x", "y"), multi_label=True)
    probs = np.array([[0.9, 0.8], [0.9, 0.2], [0.1, 0.1]], dtype=np.float32)[:, :, None]
    targets = np.array([[1, 1], [1, 1], [0, 0]])
    assert evaluate(space, probs, targets).accuracy == pytest.approx(2 / 3)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    conf = np.full(10, 0.7)
    correct = np.array([True] * 7 + [False] * 3)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)
    overconfident = np.full(10, 0.99)
    assert expected_calibration_error(overconfident, correct) == pytest.approx(0.29)


def test_promotion_rule():
    base = Metrics(accuracy=0.8, macro_f1=0.7, ece=0.1, n=10)
    assert Metrics(0.8, 0.7, 0.3, 10).at_least_as_good_as(base)
    assert Metrics(0.9, 0.1, 0.3, 10).at_least_as_good_as(base)
    assert not Metrics(0.8, 0.6, 0.0, 10).at_least_as_good_as(base)
    assert not Metrics(0.7, 0.9, 0.0, 10).at_least_as_good_as(base)
