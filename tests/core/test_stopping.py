import numpy as np
import pytest

from ls_backend.core.stopping import (
    LABELS_PER_CLASS,
    MIN_LABELS,
    MIN_STOP,
    PERSIST,
    POINT,
    PlateauSignal,
    below_since,
    calibrated,
    fit_power_law,
    gain_probability,
    judged_accuracy,
    persistent_stop,
    plateau_signal,
    stop_floor,
    temperature,
    unseen_mass,
)

N, C = 2000, 4


def judge(sure: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Newest probabilities on the stop set: ``sure`` on a class per item (its decision)."""
    truth = np.random.default_rng(seed).integers(0, C, N)
    probs = np.full((N, C), (1 - sure) / (C - 1))
    probs[np.arange(N), truth] = sure
    return probs, truth


def versions(
    errors: list[float], truth: np.ndarray, seed: int = 1, churn: float = 0.0
) -> list[np.ndarray]:
    """Each version decides against the judge on a nested share ``errors[k]`` of the items
    (fewer as labels grow), plus ``churn``: a fresh random share it flips each time."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(N)
    out = []
    for e in errors:
        d = truth.copy()
        wrong = order[: int(round(e * N))]
        d[wrong] = (d[wrong] + 1) % C
        flips = rng.random(N) < churn
        d[flips] = (d[flips] + 2) % C
        out.append(d)
    out[-1] = truth.copy()  # the newest version agrees with itself
    return out


LABELS = list(range(20, 510, 10))


def curve(labels: list[int], a: float, b: float, c: float) -> list[float]:
    """Disagreement with the newest version of a power-law learning curve a - b n^-c."""
    n = labels[-1]
    return [max(0.0, b * (m**-c - n**-c)) + a for m in labels]


def replay(
    errors: list[float], churn: float = 0.0, counts: list[int] | None = None
) -> list[PlateauSignal]:
    """The signal after every version, as the server computes it after each head round
    (each version's own stop-set decisions judge the ones before it)."""
    probs, truth = judge()
    decided = versions(errors, truth, churn=churn)
    signals: list[PlateauSignal] = []
    for k in range(len(LABELS)):
        judge_k = np.full((N, C), 0.05 / (C - 1))
        judge_k[np.arange(N), decided[k]] = 0.95
        earlier = [(s.labels, s.gain) for s in signals]
        signals.append(
            plateau_signal(LABELS[: k + 1], decided[: k + 1], judge_k, None, None, earlier, counts)
        )
    return signals


def test_a_plateaued_curve_says_stop_and_reports_a_small_gain() -> None:
    probs, truth = judge()
    # Steep early, flat after ~150 labels: the last 100 labels changed almost nothing.
    errors = curve(LABELS, 0.0, 40.0, 1.5)
    signal = plateau_signal(LABELS, versions(errors, truth), probs)
    assert not signal.stop  # a forecast under a point, but no history of it yet
    signal = replay(errors)[-1]
    assert signal.stop
    assert signal.gain is not None and signal.gain < POINT / 2
    assert signal.reason.startswith("stop:")
    assert signal.gain_low is not None and signal.gain_high is not None
    assert signal.gain_low < signal.gain < signal.gain_high
    assert signal.p_over_point is not None and signal.p_over_point < 0.5
    assert signal.below_since is not None and signal.below_since <= LABELS[-1] - PERSIST


def test_it_stops_at_the_first_version_the_rule_allows_on_a_flat_curve() -> None:
    signals = replay(curve(LABELS, 0.0, 40.0, 1.5))
    first = next(s.labels for s in signals if s.stop)
    assert first == MIN_STOP + PERSIST  # flat long before: the guards decide when


def test_a_rising_curve_says_keep_labeling() -> None:
    probs, truth = judge()
    # Still climbing about 1.5 points per 100 labels at 500.
    signal = plateau_signal(LABELS, versions(curve(LABELS, 0.0, 4.0, 0.5), truth), probs)
    assert not signal.stop
    assert signal.gain is not None and signal.gain > 1.2 * POINT
    assert signal.reason.startswith("keep labeling:")
    assert signal.p_over_point is not None and signal.p_over_point > 0.5


def test_churn_between_versions_does_not_stop_a_rising_curve() -> None:
    signals = replay(curve(LABELS, 0.0, 4.0, 0.5), churn=0.02)
    assert not any(s.stop for s in signals)
    assert signals[-1].gain is not None and signals[-1].gain > POINT


def test_no_verdict_before_enough_labels_even_when_nothing_changes() -> None:
    probs, truth = judge()
    early = [10, 20, 30, 40]
    signal = plateau_signal(early, [truth.copy() for _ in early], probs)
    assert early[-1] < MIN_LABELS
    assert not signal.stop and signal.gain is None
    assert signal.reason.startswith("too early")


def test_the_figures_follow_the_versions_and_the_fit_reaches_past_the_newest() -> None:
    probs, truth = judge()
    signal = plateau_signal(LABELS, versions(curve(LABELS, 0.0, 4.0, 0.5), truth), probs)
    assert signal.curve_labels == LABELS
    assert len(signal.curve_accuracy) == len(LABELS)
    # The newest version is judged by itself: its expected accuracy is its own confidence.
    assert signal.curve_accuracy[-1] == pytest.approx(0.95)
    assert signal.curve_accuracy[0] < signal.curve_accuracy[-1]
    assert signal.fit_labels[-1] == LABELS[-1] + signal.horizon
    assert signal.fit_accuracy[-1] > signal.curve_accuracy[-1]
    assert signal.recent_gain is not None and signal.recent_gain > 0


def test_one_low_forecast_is_not_a_plateau() -> None:
    labels = list(range(200, 310, 10))
    low = [0.02] * 10 + [0.005]
    assert below_since(labels, low) == 300
    assert not persistent_stop(labels, low)
    steady = [0.02, 0.005, 0.004, 0.006, 0.005, 0.004, 0.003, 0.004, 0.005, 0.004, 0.003]
    assert below_since(labels, steady) == 210 and persistent_stop(labels, steady)
    gap = steady[:-3] + [0.011] + steady[-2:]
    assert not persistent_stop(labels, gap)  # one forecast above a point starts it over


def test_no_stop_before_the_minimum_however_flat() -> None:
    labels = list(range(60, MIN_STOP + PERSIST, 10))
    assert not persistent_stop(labels, [0.001] * len(labels))
    labels.append(MIN_STOP + PERSIST)
    assert persistent_stop(labels, [0.001] * len(labels))
    assert not persistent_stop(labels, [0.001] * (len(labels) - 1) + [None])


def test_the_floor_grows_with_the_classes_of_the_label_config() -> None:
    assert stop_floor(2) == stop_floor(C) == MIN_STOP
    many = MIN_STOP // LABELS_PER_CLASS + 40  # a floor above the last version
    assert stop_floor(many) == LABELS_PER_CLASS * many > MIN_STOP
    # The same flat curve over many classes: no stop before each had its labels on average.
    flat = curve(LABELS, 0.0, 40.0, 1.5)
    probs, truth = judge()
    wide = np.zeros((N, many))
    wide[:, :C] = probs
    labels, decisions = LABELS, versions(flat, truth)
    earlier: list[tuple[int, float | None]] = []
    for k in range(1, len(labels) + 1):
        signal = plateau_signal(labels[:k], decisions[:k], wide, earlier=earlier)
        earlier.append((signal.labels, signal.gain))
    assert signal.gain is not None and signal.gain < POINT
    assert labels[-1] < stop_floor(many) and not signal.stop
    assert f"from {stop_floor(many)} labels on" in signal.reason


def test_the_headline_names_the_tasks_metric() -> None:
    stop = replay(curve(LABELS, 0.0, 40.0, 1.5))[-1]
    assert stop.headline == "stop: more labels are unlikely to buy more than a point of accuracy"
    probs, truth = judge()
    flat = versions(curve(LABELS, 0.0, 40.0, 1.5), truth)
    f1 = plateau_signal(LABELS, flat, probs, metric="F1")
    assert f1.metric == "F1" and "points of F1" in f1.reason
    rising = plateau_signal(LABELS, versions(curve(LABELS, 0.0, 4.0, 0.5), truth), probs)
    assert rising.headline == "keep labeling"


def test_classes_with_a_single_label_hold_the_stop_back() -> None:
    assert unseen_mass([300, 150, 40]) == 0.0
    assert unseen_mass([200, 1, 1, 1, 0]) == pytest.approx(3 / 203)
    assert unseen_mass([0, 0]) == 1.0
    flat = curve(LABELS, 0.0, 40.0, 1.5)
    assert replay(flat, counts=[300, 150, 40, 10])[-1].stop
    rare = replay(flat, counts=[250, 150, 40, 1, 1, 1, 1, 1, 1, 0])[-1]
    assert not rare.stop and rare.gain is not None and rare.gain < POINT
    assert rare.unseen == pytest.approx(6 / 446) and "Good-Turing" in rare.reason


def test_temperature_softens_overconfidence_and_sharpens_underconfidence() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 400)
    right = rng.random(400) < 0.7  # the model is right 70% of the time
    decided = np.where(right, targets, 1 - targets)
    over = np.where(decided[:, None] == np.arange(2), 0.95, 0.05)  # claims 95%
    under = np.where(decided[:, None] == np.arange(2), 0.55, 0.45)  # claims 55%
    assert temperature(over, targets) > 1.5
    assert temperature(under, targets) < 0.7
    assert temperature(over[:5], targets[:5]) == 1.0  # too few labels to tell
    soft = calibrated(over, temperature(over, targets))
    assert soft.max(axis=1).mean() == pytest.approx(0.7, abs=0.03)


def test_judged_accuracy_is_the_judges_probability_of_each_decision() -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7]])
    same, flipped = np.array([0, 1]), np.array([1, 0])
    assert judged_accuracy(probs, [same, flipped]).tolist() == pytest.approx([0.75, 0.25])


def test_the_power_law_fit_recovers_the_curve() -> None:
    labels = np.arange(100.0, 500.0, 10.0)
    gains = 2.0 * (labels**-0.7 - 500.0**-0.7)
    law = fit_power_law(labels, gains, 500)
    assert law.c == pytest.approx(0.7, abs=0.05)
    assert law.gain(500, 600) == pytest.approx(2.0 * (500**-0.7 - 600**-0.7), rel=0.05)


def test_the_probability_of_a_point_grows_with_the_forecast() -> None:
    assert gain_probability(0.0, POINT, 0.5) == 0.0
    assert gain_probability(POINT, POINT, 0.5) == pytest.approx(0.5)
    assert gain_probability(0.005, POINT, 0.5) < 0.1 < 0.9 < gain_probability(0.02, POINT, 0.5)


def test_mismatched_inputs_are_refused() -> None:
    probs, truth = judge()
    with pytest.raises(ValueError):
        plateau_signal([100, 200], [truth], probs)
    with pytest.raises(ValueError):
        plateau_signal([], [], probs)
