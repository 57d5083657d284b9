"""When more labels stop paying: a stopping signal that fires at the plateau of the learning curve.

Stabilizing predictions (``core.report``) waits until successive models agree almost
everywhere; a linear head keeps flipping its boundary items long after its accuracy has
flattened, so on our datasets it fires late or never. This module estimates the learning
curve itself, without a test split, and forecasts what the next labels would buy:

1. **Estimated accuracy of every version, judged by the newest one.** On a fixed stop set
   of the project's tasks, version v is expected to be right with probability
   ``mean_i p(yhat_v(i) | x_i)`` under the newest model's probabilities ``p``, calibrated
   by one temperature fitted on the labels' out-of-fold probabilities (Guo et al. 2017,
   "On calibration of modern neural networks"). The stop set is unlabeled, so the
   estimate is free of the labels' selection bias (active learning picks hard items); it
   is the probabilistic form of predicting the performance change between successive
   models from their predictions on an unlabeled stop set (Altschuler & Bloodgood 2019,
   "Stopping active learning based on predicted change of F measure for text
   classification"; Bloodgood & Vijay-Shanker 2009 for the stop set).
2. **An inverse power law fitted to that curve** (acc(n) = a - b n^-c, weighted nonlinear
   least squares: Figueroa et al. 2012, "Predicting sample size required for
   classification performance", BMC Med. Inform. Decis. Mak. 12:8), extrapolated to the
   gain of the next ``horizon`` labels: the gradient of the estimated curve, as in Laws &
   Schuetze 2008 ("Stopping criteria for active learning of named entity recognition").
3. **The decision:** stop once the forecast gain of the next ``horizon`` labels has stayed
   below ``point`` at every version over the last ``PERSIST`` labels, from a floor of labels
   on (the persistence of Laws & Schuetze's gradient criterion and of stabilizing
   predictions' window). The floor (``stop_floor``) is ``MIN_STOP`` labels, and at least
   ``LABELS_PER_CLASS`` per class of the label config; it comes down to ``MIN_STOP_COVERED``
   once every class has ``COVERED`` labels. Each part is measured, not taste: a class with
   few labels hides its mistakes from the judge (sms_spam under random sampling, spam at 13%
   of the tasks: forecasts 1.3-5x too low while it has under ~30 labels, at 60-200 labels;
   reuters_r8 at 60-100 labels: 3-7x), one version's forecast varies by 2x from the next, and
   a label config of many classes is not learnt, nor judged, before each class has had a
   few labels (reuters_r52, 52 classes: forecasts 4-40x too low up to 240 labels, where
   the old floor of 200 stopped with 2.7 points left). ``COVERED`` = 30, the usual size for
   a normal approximation of a class's accuracy from its labels, was chosen on the same
   runs it is measured on (20 and 25 leave 1.0-1.3 points on sms_spam under random
   sampling; 30-60 meet the goal): benchmarks/RESULTS.md, "Stopping signal".
4. **Classes not met yet:** the newest version cannot judge its mistakes on a class no label
   has shown it. The Good-Turing estimate of the
   probability that the next task is of a class not seen yet, the share of labels whose
   class has a single label (Good 1953, "The population frequencies of species and the
   estimation of population parameters"), must be under ``point`` too.
5. **How sure:** the forecast's error, log(true gain / forecast), measured on our six
   benchmark sets from 100 to 400 labels, has a root mean square of ``FORECAST_LOG_SD``
   (0.2-1.1 within a set, and a bias of its own on each, from -0.9 to +1.4: the pooled
   figure is the honest one for a project nobody measured): the signal gives an 80%
   interval and the probability that the next ``horizon`` labels buy more than ``point``.

Pure and typed: arrays in, a dataclass out; single-label only. Cost: a temperature fit over
the labels' ``[M, C]`` out-of-fold probabilities and a two-parameter least-squares fit over
the versions, 10-20 ms of CPU with 200 versions on 2,000 tasks; the caller's inputs cost
more (the out-of-fold probabilities: 5 head fits, 0.2 / 0.5 / 2.0 CPU seconds at 300 /
1,000 / 3,000 labels; each version's answers on the stop set, which the report already
makes for stabilizing predictions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares, minimize_scalar
from scipy.special import log_softmax
from scipy.stats import norm

#: Accuracy the decision is about: "more labels are unlikely to buy more than a point".
POINT = 0.01
#: Labels ahead the forecast is for (the dashboard's "gain per 100 labels").
HORIZON = 100
#: Stop once the forecast has stayed below POINT over this many labels (every version from
#: one at or before ``labels - PERSIST`` on) ...
PERSIST = 40
#: ... and that version had at least this many labels, and LABELS_PER_CLASS per class of the
#: label config; MIN_STOP_COVERED instead of MIN_STOP once every class has COVERED labels
#: (``stop_floor``).
MIN_STOP = 200
LABELS_PER_CLASS = 10
MIN_STOP_COVERED = 100
COVERED = 30
#: Root mean square of log(true gain / forecast gain) of the next 100 labels, measured on
#: the six benchmark datasets (benchmarks/stopping.py --spread; RESULTS.md, "Stopping signal").
FORECAST_LOG_SD = 0.9
#: Versions trained on fewer than this share of the newest one's labels are left out of the
#: fit: the early curve (tens of labels, zero-shot priors) has another shape.
FIT_FROM = 0.25
#: No forecast below this many labels, or with fewer versions in the fit.
MIN_LABELS = 50
MIN_VERSIONS = 4
#: Labeled items below which the temperature is not fitted (1.0: the probabilities as given).
MIN_CALIBRATION = 20
#: Bounds of the fitted temperature and of the power law's exponent.
TEMPERATURE_BOUNDS = (0.25, 4.0)
EXPONENT_BOUNDS = (0.05, 3.0)
#: Tasks of the project the versions are judged on (Bloodgood & Vijay-Shanker used a few
#: thousand): unlabeled ones, never a test split.
STOP_SET = 2000
#: The rule in words (reports and benchmark tables).
RULE = (
    f"plateau: forecast gain of the next {HORIZON} labels < {POINT} at every version of the "
    f"last {PERSIST} labels, from max({MIN_STOP}, {LABELS_PER_CLASS} x classes) labels on "
    f"({MIN_STOP_COVERED} once every class has {COVERED}), and a new class < {POINT} likely"
)


@dataclass(frozen=True)
class PlateauSignal:
    """The verdict and what a dashboard plots. Accuracies and gains are fractions (0.01 is
    one point); ``curve_*``: each version's estimated accuracy; ``fit_*``: the fitted law
    from the first fitted version to ``labels + horizon``."""

    stop: bool
    labels: int  # labels of the newest version
    gain: float | None  # forecast accuracy gain of the next ``horizon`` labels
    gain_low: float | None  # 80% interval of that gain
    gain_high: float | None
    p_over_point: float | None  # probability that the gain is above ``point``
    recent_gain: float | None  # estimated gain over the last ``horizon`` labels
    reason: str
    below_since: int | None = None  # labels from which every forecast has been below ``point``
    unseen: float | None = None  # Good-Turing probability that the next label's class is new
    temperature: float = 1.0
    exponent: float | None = None
    curve_labels: list[int] = field(default_factory=list)
    curve_accuracy: list[float] = field(default_factory=list)
    fit_labels: list[int] = field(default_factory=list)
    fit_accuracy: list[float] = field(default_factory=list)
    point: float = POINT
    horizon: int = HORIZON
    metric: str = "accuracy"  # the task's metric (``Task.metric``) the gains are points of

    @property
    def headline(self) -> str:
        """The verdict in one line, as the dashboard, the report and /status say it."""
        if not self.stop:
            return "keep labeling"
        points = "a point" if round(100 * self.point, 6) == 1 else f"{100 * self.point:g} points"
        return f"stop: more labels are unlikely to buy more than {points} of {self.metric}"


def temperature(probs: NDArray[np.floating], targets: NDArray[np.int64]) -> float:
    """The temperature T that makes ``softmax(log p / T)`` fit ``targets`` best (least
    negative log-likelihood); 1.0 when there are too few labels to tell."""
    if targets.size < MIN_CALIBRATION:
        return 1.0
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    rows = np.arange(targets.size)

    def nll(log_t: float) -> float:
        return -float(np.mean(log_softmax(logp / math.exp(log_t), axis=1)[rows, targets]))

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = minimize_scalar(nll, bounds=(low, high), method="bounded")
    return float(math.exp(found.x))


def calibrated(probs: NDArray[np.floating], t: float) -> NDArray[np.float64]:
    """``softmax(log p / t)``: sharper below 1, softer above."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    return np.asarray(np.exp(log_softmax(logp / t, axis=1)), dtype=np.float64)


def judged_accuracy(
    judge: NDArray[np.float64], decisions: Sequence[NDArray[np.int64]]
) -> NDArray[np.float64]:
    """Expected accuracy of each labeling of the stop set under the judge's probabilities
    ``[N, C]``: ``mean_i judge[i, decision[i]]``."""
    rows = np.arange(judge.shape[0])
    return np.array([float(judge[rows, np.asarray(d)].mean()) for d in decisions])


@dataclass(frozen=True)
class PowerLaw:
    """``gain(m -> n) = b (m^-c - n^-c)``: the inverse power law acc(n) = a - b n^-c seen
    from the newest version (a drops out)."""

    b: float
    c: float

    def gain(self, start: float, end: float) -> float:
        return float(self.b * (start**-self.c - end**-self.c))

    def gains(self, starts: NDArray[np.float64], end: float) -> NDArray[np.float64]:
        return np.asarray(self.b * (starts**-self.c - end**-self.c), dtype=np.float64)


def fit_power_law(labels: NDArray[np.float64], gains: NDArray[np.float64], n: int) -> PowerLaw:
    """Fit ``gains[k] ~ b (labels[k]^-c - n^-c)`` (the estimated accuracy the newest version,
    trained on ``n`` labels, has over each earlier one), weighted by 1/sqrt(gain): small
    gains near ``n`` decide the slope there, as Figueroa et al. weight the late points."""
    weight = 1.0 / np.sqrt(np.maximum(gains, 1e-3))

    def residuals(p: NDArray[np.float64]) -> NDArray[np.float64]:
        law = PowerLaw(math.exp(p[0]), p[1])
        return np.asarray((law.gains(labels, n) - gains) * weight, dtype=np.float64)

    low, high = EXPONENT_BOUNDS
    found = least_squares(residuals, x0=[0.0, 0.5], bounds=([-20.0, low], [20.0, high]))
    return PowerLaw(math.exp(found.x[0]), float(found.x[1]))


def gain_probability(gain: float, point: float, log_sd: float) -> float:
    """P(true gain > point) when log(true gain / forecast) ~ N(0, log_sd^2)."""
    if gain <= 0.0:
        return 0.0
    return float(norm.sf((math.log(point) - math.log(gain)) / log_sd))


def below_since(
    labels: Sequence[int], forecasts: Sequence[float | None], point: float = POINT
) -> int | None:
    """Labels of the earliest version from which every forecast (versions in label order,
    the newest last) has been below ``point``; None when the newest one is not."""
    since = None
    for n, gain in zip(labels, forecasts, strict=True):
        since = (since if since is not None else n) if gain is not None and gain < point else None
    return since


def stop_floor(
    classes: int, label_counts: Sequence[int] | None = None, covered: int = COVERED
) -> int:
    """Labels before the signal may say stop, for a label config of ``classes`` classes with
    ``label_counts`` labels each (None: unknown, the floor stays ``MIN_STOP``)."""
    every = label_counts is not None and min(label_counts, default=0) >= covered
    return max(MIN_STOP_COVERED if every else MIN_STOP, LABELS_PER_CLASS * classes)


def unseen_mass(counts: Sequence[int]) -> float:
    """Good-Turing: the share of labels whose class has exactly one label estimates the
    probability that the next label's class has none yet (1.0 before any label)."""
    total = sum(counts)
    return sum(1 for c in counts if c == 1) / total if total else 1.0


def persistent_stop(
    labels: Sequence[int],
    forecasts: Sequence[float | None],
    point: float = POINT,
    persist: int = PERSIST,
    min_stop: int = MIN_STOP,
) -> bool:
    """The decision: the forecasts have been below ``point`` since a version trained on at
    least ``min_stop`` labels and at most ``labels[-1] - persist``."""
    since = below_since(labels, forecasts, point)
    if since is None:
        return False
    anchor = max((n for n in labels if n <= labels[-1] - persist), default=None)
    return anchor is not None and anchor >= since and anchor >= min_stop


def plateau_signal(
    labels: Sequence[int],
    decisions: Sequence[NDArray[np.int64]],
    newest_probs: NDArray[np.floating],
    oof_probs: NDArray[np.floating] | None = None,
    oof_targets: NDArray[np.int64] | None = None,
    earlier: Sequence[tuple[int, float | None]] = (),
    label_counts: Sequence[int] | None = None,
    point: float = POINT,
    horizon: int = HORIZON,
    log_sd: float = FORECAST_LOG_SD,
    metric: str = "accuracy",
) -> PlateauSignal:
    """The stopping signal over successive versions of one model (single-label).

    ``labels[k]``: labels version k trained on (ascending); ``decisions[k]``: its ``[N]``
    class indices on the stop set; ``newest_probs``: the last version's ``[N, C]``
    probabilities there; ``oof_probs``/``oof_targets``: out-of-fold probabilities of the
    labeled items and their labels (the judge's temperature; None: uncalibrated);
    ``earlier``: (labels, ``gain``) of earlier versions as this function gave them then:
    the decision needs the forecasts of the last ``PERSIST`` labels; ``label_counts``:
    labels per class of the label config (None: classes not met yet are not checked);
    ``metric``: the task's metric, named in the reason (the judge estimates accuracy: a task
    whose metric is another one needs its own judge).
    """
    if len(labels) != len(decisions):
        raise ValueError("one label count per version's decisions")
    if not labels:
        raise ValueError("the signal needs at least one version")
    t = 1.0
    if oof_probs is not None and oof_targets is not None:
        t = temperature(oof_probs, oof_targets)
    accuracy = judged_accuracy(calibrated(newest_probs, t), decisions)
    classes = int(newest_probs.shape[1])
    return curve_signal(
        labels, accuracy, classes, earlier, label_counts, point, horizon, log_sd, metric, t
    )


def curve_signal(
    labels: Sequence[int],
    estimates: Sequence[float] | NDArray[np.float64],
    classes: int,
    earlier: Sequence[tuple[int, float | None]] = (),
    label_counts: Sequence[int] | None = None,
    point: float = POINT,
    horizon: int = HORIZON,
    log_sd: float = FORECAST_LOG_SD,
    metric: str = "accuracy",
    temperature: float = 1.0,
) -> PlateauSignal:
    """The stopping signal from each version's estimated metric on the stop set
    (``estimates[k]``, judged by the newest version, as ``plateau_signal`` judges accuracy;
    a kind whose metric is another one brings its own judge): the power law, the forecast
    and the rule. ``classes``: of the label config (the floor ``stop_floor``)."""
    if len(labels) != len(estimates):
        raise ValueError("one label count per version's estimate")
    if not labels:
        raise ValueError("the signal needs at least one version")
    n = int(labels[-1])
    t = temperature
    accuracy = np.asarray(estimates, dtype=np.float64)
    counts = np.asarray(labels, dtype=np.float64)
    back = counts <= n - horizon
    recent = float(accuracy[-1] - accuracy[back][-1]) if back.any() else None
    fitted = (counts >= max(1.0, FIT_FROM * n)) & (counts < n)
    unseen = None if label_counts is None else unseen_mass(label_counts)
    signal = PlateauSignal(
        stop=False,
        labels=n,
        gain=None,
        gain_low=None,
        gain_high=None,
        p_over_point=None,
        recent_gain=recent,
        unseen=unseen,
        reason=f"too early to tell: needs {MIN_LABELS} labels and {MIN_VERSIONS} versions",
        temperature=t,
        curve_labels=[int(m) for m in labels],
        curve_accuracy=[float(a) for a in accuracy],
        point=point,
        horizon=horizon,
        metric=metric,
    )
    if n < MIN_LABELS or int(fitted.sum()) < MIN_VERSIONS:
        return signal
    law = fit_power_law(counts[fitted], accuracy[-1] - accuracy[fitted], n)
    gain = law.gain(n, n + horizon)
    history = sorted((int(m), g) for m, g in earlier if m < n) + [(n, gain)]
    seen = [m for m, _ in history]
    forecasts = [g for _, g in history]
    floor = stop_floor(classes, label_counts)
    plateau = persistent_stop(seen, forecasts, point, min_stop=floor)
    new_class = unseen is not None and unseen >= point
    stop = plateau and not new_class
    since = below_since(seen, forecasts, point)
    z = float(norm.isf(0.1))  # the 80% interval
    low, high = gain * math.exp(-z * log_sd), gain * math.exp(z * log_sd)
    p_over = gain_probability(gain, point, log_sd)
    forecast = (
        f"the next {horizon} labels are forecast to buy {100 * gain:.1f} points of {metric} "
        f"(80%: {100 * low:.1f}-{100 * high:.1f}; P(more than {100 * point:g}) = {p_over:.0%})"
    )
    if stop:
        why = f"stop: {forecast}, and under {100 * point:g} since {since} labels"
    elif plateau:
        singles = sum(1 for c in label_counts or () if c == 1)
        why = (
            f"keep labeling: {forecast}, but {singles} classes have a single label: the next "
            f"label is of a class not met yet with probability {unseen:.1%} (Good-Turing)"
        )
    elif since is None:
        why = f"keep labeling: {forecast}"
    else:
        why = (
            f"keep labeling: {forecast}; under {100 * point:g} since {since} labels, the "
            f"signal waits for {PERSIST} labels of that, from {floor} labels on"
        )
    grid = np.unique(np.linspace(counts[fitted][0], n + horizon, 24).round()).astype(int)
    return replace(
        signal,
        stop=stop,
        gain=gain,
        gain_low=low,
        gain_high=high,
        p_over_point=p_over,
        reason=why,
        below_since=since,
        exponent=law.c,
        fit_labels=[int(m) for m in grid],
        fit_accuracy=[float(accuracy[-1]) - law.gain(float(m), n) for m in grid],
    )
