import numpy as np
import pytest

from ls_backend.core import uncertainty as u


def probs(*rows: list[float]) -> np.ndarray:
    """Single-sample probabilities [N, C, 1] from rows of class probabilities."""
    return np.asarray(rows, dtype=np.float32)[:, :, None]


@pytest.mark.parametrize("measure", ["least_confidence", "margin", "entropy"])
def test_a_coin_flip_is_more_uncertain_than_a_sure_thing(measure: str) -> None:
    scores = u.scores(probs([0.5, 0.5], [0.99, 0.01]), measure)  # type: ignore[arg-type]
    assert scores.shape == (2,)
    assert scores[0] > scores[1]


def test_margin_looks_at_the_top_two_classes_only() -> None:
    # Same confidence in the top class, but the second item hesitates between two classes.
    scores = u.margin(probs([0.5, 0.25, 0.25], [0.5, 0.45, 0.05]))
    assert scores[1] > scores[0]
    assert u.margin(probs([0.5, 0.5]))[0] == pytest.approx(1.0)
    assert u.margin(probs([1.0, 0.0]))[0] == pytest.approx(0.0)


def test_entropy_ignores_classes_with_probability_zero() -> None:
    scores = u.entropy(probs([0.5, 0.5, 0.0], [1.0, 0.0, 0.0]))
    assert np.all(np.isfinite(scores))
    assert scores == pytest.approx([np.log(2), 0.0])


def test_bald_is_zero_when_samples_agree_and_positive_when_they_disagree() -> None:
    agree = np.tile(np.array([[0.6, 0.4]], dtype=np.float32)[:, :, None], (1, 1, 4))
    disagree = np.array([[[0.9, 0.1, 0.9, 0.1], [0.1, 0.9, 0.1, 0.9]]], dtype=np.float32)
    assert u.bald(agree)[0] == pytest.approx(0.0, abs=1e-6)
    assert u.bald(disagree)[0] > 0.3
    assert u.bald(probs([0.5, 0.5]))[0] == 0.0  # one sample: no disagreement to measure


def test_measures_average_over_mc_samples() -> None:
    # Two confident samples that disagree: the mean is a coin flip.
    p = np.array([[[0.99, 0.01], [0.01, 0.99]]], dtype=np.float32)
    assert u.margin(p)[0] == pytest.approx(1.0)


def test_multi_label_scores_each_label_as_its_own_binary_problem() -> None:
    p = probs([0.5, 0.99, 0.01], [0.99, 0.99, 0.01])
    view = u.binary_view(p)
    assert view.shape == (6, 2, 1)
    assert np.allclose(view.sum(axis=1), 1.0)
    per_label = u.per_label(p, "margin")
    assert per_label.shape == (2, 3)
    assert per_label[0, 0] == pytest.approx(1.0)
    scores = u.scores(p, "margin", multi_label=True)
    assert scores[0] > scores[1]
    assert scores[0] == pytest.approx(per_label[0].mean())


def test_unknown_measure_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        u.scores(probs([0.5, 0.5]), "variance")  # type: ignore[arg-type]


def test_figures_report_bald_only_with_mc_samples_and_per_label_for_multi_label() -> None:
    one = u.uncertainty_figures(probs([0.7, 0.3], [0.5, 0.5]))
    assert set(one) == {"least_confidence", "margin", "entropy"}
    assert all(v.shape == (2,) for v in one.values())
    mc = np.random.default_rng(0).dirichlet([1, 1, 1], size=(4, 5)).transpose(0, 2, 1)
    assert "bald" in u.uncertainty_figures(mc.astype(np.float32))
    multi = u.uncertainty_figures(probs([0.5, 0.9, 0.1]), multi_label=True)
    assert multi["margin_per_label"].shape == (1, 3)
    assert multi["margin"].shape == (1,)


def test_star_lambda_starts_at_one_and_decreases() -> None:
    lams = [u.star_lambda(t, 0.5) for t in range(5)]
    assert lams[0] == 1.0
    assert all(a > b for a, b in zip(lams, lams[1:], strict=False))
    assert all(0.0 <= lam <= 1.0 for lam in lams)
    assert u.star_lambda(3, 1.0) == 1.0
    with pytest.raises(ValueError):
        u.star_lambda(1, 1.5)


def test_dynamic_uncertainty_moves_from_base_to_lora() -> None:
    base, lora = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert u.dynamic_uncertainty(base, lora, 1.0) == pytest.approx(base)
    assert u.dynamic_uncertainty(base, lora, 0.0) == pytest.approx(lora)
    assert u.dynamic_uncertainty(base, lora, 0.25) == pytest.approx([0.25, 0.75])


def test_star_scores_weigh_the_base_margin_by_decay_to_the_adapters_round() -> None:
    base = np.array([[[0.5], [0.5]], [[1.0], [0.0]]], dtype=np.float32)  # unsure, then sure
    adapter = base[::-1].copy()  # the other way round
    assert u.star_scores(base, adapter, 1, 0.5) == pytest.approx([0.5, 0.5])
    assert u.star_scores(base, adapter, 2, 0.5) == pytest.approx([0.25, 0.75])
    assert u.star_scores(base, adapter, 0, 0.5) == pytest.approx(u.margin(base))
