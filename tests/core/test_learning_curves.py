import pytest

from ls_backend.core import learning_curves as lc


def test_auc_is_the_mean_accuracy_over_evaluation_points() -> None:
    assert lc.curve_auc([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        lc.curve_auc([])


def test_ripl_is_the_share_of_the_gap_to_perfect_that_a_strategy_closes() -> None:
    assert lc.ripl(0.8, 0.6) == pytest.approx(0.5)
    assert lc.ripl(0.6, 0.6) == 0.0
    assert lc.ripl(0.5, 0.6) < 0


def test_ripl_standard_error_pairs_seeds_so_a_steady_gain_is_certain() -> None:
    # Seeds differ a lot, but the strategy beats random by 0.1 on every one: no doubt left.
    random = [0.5, 0.6, 0.7]
    assert lc.ripl_standard_error([0.6, 0.7, 0.8], random) == pytest.approx(0.0)
    # Gains of +0.2 and 0 against a mean random AUC of 0.6: RIPL 0.5 and 0, SE 0.25.
    assert lc.ripl_standard_error([0.8, 0.6], [0.6, 0.6]) == pytest.approx(0.25)
    assert lc.ripl_standard_error([0.8], [0.6]) is None
    with pytest.raises(ValueError):
        lc.ripl_standard_error([0.8, 0.7], [0.6])


def test_labels_to_reach_is_the_first_point_at_or_above_target() -> None:
    labels = [10, 20, 30, 40]
    assert lc.labels_to_reach(labels, [0.5, 0.8, 0.7, 0.9], 0.8) == 20
    assert lc.labels_to_reach(labels, [0.5, 0.6, 0.7, 0.75], 0.8) is None


def test_savings_compare_labels_needed_with_random() -> None:
    assert lc.savings(60, 200) == pytest.approx(0.7)
    assert lc.savings(None, 200) is None
    assert lc.savings(60, None) is None
