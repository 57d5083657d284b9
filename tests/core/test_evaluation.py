import numpy as np
import pytest

from ls_backend.core.evaluation import (
    evaluate,
    expected_calibration_error,
    holdout_split,
    paired_gain,
    should_promote,
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


def items(better: int, worse: int, same: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of a candidate and the serving model on the same held-out labels."""
    candidate = np.array([True] * better + [False] * worse + [True] * same)
    serving = np.array([False] * better + [True] * worse + [True] * same)
    return candidate, serving


def test_a_head_on_more_labels_serves_unless_clearly_worse():
    assert should_promote(*items(0, 0, 18), same_kind=True)[0]
    assert should_promote(*items(1, 2, 15), same_kind=True)[0]  # one item: noise
    assert not should_promote(*items(0, 6, 12), same_kind=True)[0]


def test_another_kind_must_be_clearly_better_not_by_a_few_items():
    # The case: an adapter 0.72 vs 0.56 on 18 items, wins and losses mixed.
    promoted, reason = should_promote(*items(5, 2, 11), same_kind=False)
    assert not promoted and "+0.167" in reason
    assert not should_promote(*items(0, 0, 18), same_kind=False)[0]  # a tie keeps what serves
    assert should_promote(*items(9, 0, 9), same_kind=False)[0]


def test_paired_gain_and_its_standard_error():
    gain, se = paired_gain(*items(3, 1, 16))
    assert gain == pytest.approx(0.1)
    assert se == pytest.approx(np.std([1, 1, 1, -1] + [0] * 16, ddof=1) / np.sqrt(20))
