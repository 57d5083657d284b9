"""The simulated annotator: replay a labeled dataset through the core's own models and ranking.

Protocol (AL_REFERENCE.md): the pool is the train split, stratified-subsampled to
``pool_size``; every strategy starts from the same ``init`` random labels per seed, labels the
top ``batch`` items of its order each round up to ``budget``, and is evaluated on the test
split (optionally stratified-subsampled to ``test_size``) after every round.

Models (the one loop, ``simulate``, with a different ``Fit``; span data runs the same loop
with what its kind provides, ``LoopKind``: ``bench.spans.SpanData``):
- ``head``: the light head on frozen embeddings, refit every round (fast on CPU);
- ``lora``: a fresh LoRA classifier from the backbone every round (the server's lora lane),
  ranking with its MC-dropout probabilities; diversity still uses the embeddings;
- ``prepal-then-lora``: select with the head (exactly the ``head`` loop), then fine-tune LoRA
  once on the acquired labels (``lora_once``);
- ``served``: the server's head lane (``ServedFit``); ``served-lora``: its head lane every round
  and its LoRA lane every ``lora_every`` labels, ranked as the server ranks (``ServedLoraFit``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import f1_score
from tqdm import tqdm

from ls_backend.bench.data import BenchData
from ls_backend.core import stopping, uncertainty
from ls_backend.core.classification import CLASSIFICATION
from ls_backend.core.configs import LoraTrainConfig, RoundConfig
from ls_backend.core.evaluation import expected_calibration_error, paired_gain
from ls_backend.core.heads import LinearHead, choose_prior_strength
from ls_backend.core.labels import Probs
from ls_backend.core.model import ModelVersion
from ls_backend.core.ranking import rank_pool
from ls_backend.core.registry import Registry
from ls_backend.core.report import cohen_kappa, out_of_fold_probs
from ls_backend.core.tasks import LabeledData, NotEnoughLabels
from ls_backend.core.training import RoundResult, run_round, save_prototype

#: Strategies whose order ignores the predictions: no pool prediction is made for them.
PROB_FREE = frozenset({"random", "k_center"})


@dataclass
class Run:
    """One strategy, one seed: figures after each round, and the labeled rows at the end."""

    labels: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    acquired: list[int] = field(default_factory=list)
    promotions: dict[str, int] = field(default_factory=dict)  # --model served: ``ServedFit``
    # Stabilizing predictions: kappa of each round's test predictions against the round
    # before (the test texts serve as the stop set: predicted, never trained on).
    kappas: list[float] = field(default_factory=list)
    ece: list[float] = field(default_factory=list)  # of the test probabilities, each round
    # The plateau signal (core.stopping) after each round, --model served: its forecast gain
    # of the next 100 labels (None: no verdict yet), whether it said stop, and the
    # Good-Turing probability that the next label's class is new.
    plateau_gain: list[float | None] = field(default_factory=list)
    plateau_stop: list[bool] = field(default_factory=list)
    plateau_unseen: list[float | None] = field(default_factory=list)
    plateau_counts: list[list[int]] = field(default_factory=list)  # labels per class, per round


@dataclass
class Predicted:
    """What a ``Fit`` gives: the test probabilities ``[M, C, T]`` of the model that serves and,
    when asked, the pool's ``[N, C, T]`` and the scores ``default`` ranks by (None: margin)."""

    test: Probs
    pool: Probs | None = None
    scores: NDArray[np.float64] | None = None


#: ``(data, labeled rows, predict the pool?)`` -> ``Predicted``.
Fit = Callable[[BenchData, NDArray[np.int64], bool], Predicted]


def decided(probs: Probs) -> NDArray[np.int64]:
    """Single-label decisions: the most probable class of the mean over samples."""
    return np.asarray(probs.mean(axis=2).argmax(axis=1), dtype=np.int64)


def calibration_error(probs: Probs, targets: NDArray[np.int64]) -> float:
    """ECE of the top class's mean probability (10 bins, as the versions' metrics)."""
    mean = probs.mean(axis=2)
    return expected_calibration_error(mean.max(axis=1), mean.argmax(axis=1) == targets)


def fit_predict(
    data: BenchData, labeled: NDArray[np.int64], pool: bool = True, prior: bool = False
) -> Predicted:
    """Test and (if ``pool``) pool probabilities of the light head trained on ``labeled``; with
    ``prior``, shrunk toward the label names as the server's head is (HEAD_PRIOR)."""
    targets = data.pool_y[labeled]
    if np.unique(targets).size < 2:
        # One class seen: it is the only answer the model can give.
        def certain(n: int) -> Probs:
            probs = np.zeros((n, data.space.size, 1), dtype=np.float32)
            probs[:, targets[0], 0] = 1.0
            return probs

        return Predicted(certain(data.test_y.size), certain(data.pool_y.size) if pool else None)
    x = data.pool_x[labeled]
    names = data.label_x if prior else None
    strength = 0.0 if names is None else choose_prior_strength(data.space, x, targets, names)
    head = LinearHead.fit(data.space, x, targets, prior=names, strength=strength)
    return Predicted(
        head.predict_proba(data.test_x), head.predict_proba(data.pool_x) if pool else None
    )


@dataclass(frozen=True)
class LoraFit:
    """A ``Fit``: a fresh LoRA classifier from the backbone on the labeled texts (the server's
    lora lane, without its held-out split: the last epoch is kept); test predictions are one
    deterministic pass, pool probabilities ``config.mc_samples`` MC-dropout passes."""

    config: LoraTrainConfig

    def __call__(self, data: BenchData, labeled: NDArray[np.int64], pool: bool = True) -> Predicted:
        from ls_backend.core.lora import LoraClassifier

        texts = [data.pool_texts[i] for i in labeled]
        clf = LoraClassifier.train(data.space, texts, data.pool_y[labeled], self.config)
        test = clf.predict_proba(data.test_texts, mc_samples=1)
        if not pool:
            return Predicted(test)
        # Only the unlabeled rows are ranked: the labeled ones get a placeholder.
        n, classes, samples = data.pool_y.size, data.space.size, self.config.mc_samples
        probs = np.full((n, classes, samples), 1 / classes, dtype=np.float32)
        rest = np.setdiff1d(np.arange(n), labeled)
        probs[rest] = clf.predict_proba([data.pool_texts[i] for i in rest])
        return Predicted(test, probs)


class ServedFit:
    """A ``Fit`` that is the server's head lane: every round runs the server's own
    ``run_round`` (evaluated fit, served fit on every label, promotion) on a registry of its
    own, starting from zero-shot prototypes, and predicts with whatever then serves."""

    #: MC-dropout passes an adapter predicts with (the server's MC_SAMPLES); heads have one.
    mc_samples = 1

    def __init__(self, root: Path, data: BenchData, config: RoundConfig) -> None:
        if data.label_x is None:
            raise ValueError("--model served needs the label names' embeddings")
        self.registry = Registry(root)
        self.config = config
        #: Rounds, promotions, and the decisions the full test split says were wrong.
        self.promotions = dict.fromkeys(
            ("rounds", "promoted", "worse_promoted", "better_kept_out"), 0
        )
        self._test: dict[str, Probs] = {}  # test probabilities by version
        self.task = CLASSIFICATION
        self.serving = self.task.prototype(data.space, data.label_x)  # what the registry serves
        self.serving.version = save_prototype(self.registry, self.serving, "bench", self.task.kind)
        # The plateau signal as the server computes it: every head version's decisions on a
        # fixed stop set of pool rows (never the test split), one signal per round.
        size = min(stopping.STOP_SET, data.pool_y.size)
        self.stop_rows = np.sort(np.random.default_rng(0).choice(data.pool_y.size, size, False))
        self._versions: tuple[list[int], list[NDArray[np.int64]]] = ([], [])
        self.plateau: list[stopping.PlateauSignal | None] = []
        self.counts: list[list[int]] = []  # labels per class at each round

    def __call__(self, data: BenchData, labeled: NDArray[np.int64], pool: bool = True) -> Predicted:
        self.head_round(data, labeled)
        return self.predict(data, labeled, pool)

    def head_round(self, data: BenchData, labeled: NDArray[np.int64]) -> None:
        """The head lane's round, then the plateau signal over every head version so far."""
        result = self.round("head", data, labeled, self.config)
        targets = data.pool_y[labeled]
        classes = np.bincount(targets, minlength=data.space.size).tolist()
        self.counts.append(classes)
        if result is None:
            self.plateau.append(None)
            return
        head = self.task.load(self.registry.path(result.version), result.version).head
        probs = head.predict_proba(data.pool_x[self.stop_rows])[:, :, 0]
        counts, decisions = self._versions
        counts.append(int(labeled.size))
        decisions.append(np.asarray(probs.argmax(axis=1), dtype=np.int64))
        oof = out_of_fold_probs(data.space, data.pool_x[labeled], targets, self.config.head_c)
        earlier = [(p.labels, p.gain) for p in self.plateau if p is not None]
        signal = stopping.plateau_signal(counts, decisions, probs, oof, targets, earlier, classes)
        self.plateau.append(signal)

    def round(
        self, kind: str, data: BenchData, labeled: NDArray[np.int64], config: RoundConfig
    ) -> RoundResult | None:
        """One ``run_round`` of ``kind`` on the labeled rows, tallied; a promotion serves."""
        rows = labeled.tolist()
        labels = LabeledData(
            keys=rows,
            strata_keys=rows,
            texts=[data.pool_texts[i] if data.pool_texts else "" for i in rows],
            targets=data.pool_y[labeled],
            embeddings=data.pool_x[labeled],
        )
        before = self.serving
        try:
            result = run_round(
                self.task, kind, self.registry, data.space, labels, lambda: before, config, None,
                data.label_x,
            )  # fmt: skip
        except NotEnoughLabels:  # one class so far: zero-shot still serves
            return None
        candidate = self.task.load(self.registry.path(result.version), result.version)
        # Judged like the rule judges, but on the full test split: a paired difference
        # beyond 2 of its standard errors (one item of 500 is not "worse").
        gain, se = paired_gain(self._correct(data, candidate), self._correct(data, before))
        tally, prefix = self.promotions, "" if kind == "head" else f"{kind}_"
        tally[f"{prefix}rounds"] += 1
        tally[f"{prefix}promoted"] += result.promoted
        tally[f"{prefix}worse_promoted"] += result.promoted and gain < -2 * se
        tally[f"{prefix}better_kept_out"] += not result.promoted and gain > 2 * se
        if result.promoted:
            self.serving = candidate
        return result

    def predict(self, data: BenchData, labeled: NDArray[np.int64], pool: bool) -> Predicted:
        """What serves, on the test split and (if ``pool``) the pool, as the server ranks it:
        zero-shot prototypes give no probabilities (the order is pure diversity)."""
        model = self.serving
        test = self._test_probs(data, model)
        if not pool or model.kind == "prototype":
            return Predicted(test)
        return Predicted(test, model.head.predict_proba(data.pool_x))

    def _test_probs(self, data: BenchData, model: ModelVersion) -> Probs:
        if model.version not in self._test:
            prediction = model.predict(data.test_texts, data.test_x, mc_samples=self.mc_samples)
            self._test[model.version] = prediction.probs
        return self._test[model.version]

    def _correct(self, data: BenchData, model: ModelVersion) -> NDArray[np.bool_]:
        return np.asarray(decided(self._test_probs(data, model)) == data.test_y)


class ServedLoraFit(ServedFit):
    """``ServedFit`` with the server's LoRA lane as well: after the head round, an adapter
    round whenever ``every`` labels came in since the last one (from ``min_labels`` on), as
    the lane runs after a burst of labels. While an adapter serves, the pool is ranked as the
    server ranks it: STAR's mix of the base head's and the adapter's margins, or the
    adapter's margin alone without ``star_mix``."""

    def __init__(
        self,
        root: Path,
        data: BenchData,
        config: RoundConfig,
        lora: RoundConfig,
        every: int,
        min_labels: int,
        star_mix: bool = True,
    ) -> None:
        super().__init__(root, data, config)
        self.lora, self.every, self.min_labels, self.star_mix = lora, every, min_labels, star_mix
        self.mc_samples = lora.lora.mc_samples
        self.promotions.update(
            dict.fromkeys(
                ("lora_rounds", "lora_promoted", "lora_worse_promoted", "lora_better_kept_out"), 0
            )
        )
        self._lora_labels = 0  # labels at the last LoRA round
        self._pool: tuple[str, Probs] | None = None  # the serving adapter's pool probabilities

    def __call__(self, data: BenchData, labeled: NDArray[np.int64], pool: bool = True) -> Predicted:
        self.head_round(data, labeled)
        due = labeled.size - self._lora_labels >= self.every
        if due and labeled.size >= self.min_labels:
            self._lora_labels = labeled.size
            self.round("lora", data, labeled, self.lora)
        return self.predict(data, labeled, pool)

    def predict(self, data: BenchData, labeled: NDArray[np.int64], pool: bool) -> Predicted:
        model = self.serving
        if model.lora is None or not pool:
            return super().predict(data, labeled, pool)
        if self._pool is None or self._pool[0] != model.version:
            # An adapter serves unchanged until the next promotion: predict the pool once (the
            # rows labeled then get a placeholder; later ones are never ranked again).
            n, classes = data.pool_y.size, data.space.size
            fresh = np.full((n, classes, self.mc_samples), 1 / classes, dtype=np.float32)
            rest = np.setdiff1d(np.arange(n), labeled)
            texts = [data.pool_texts[i] for i in rest]
            fresh[rest] = model.lora.predict_proba(texts, mc_samples=self.mc_samples)
            self._pool = (model.version, fresh)
        probs = self._pool[1]
        scores = None
        if self.star_mix:
            base = model.head.predict_proba(data.pool_x)
            decay = self.lora.star_lambda_decay
            scores = uncertainty.star_scores(base, probs, model.lora_round, decay)
        return Predicted(self._test_probs(data, model), probs, scores)


@dataclass(frozen=True)
class Judged:
    """One round's predictions on the test split, as the loop records them."""

    decisions: Any  # what the next round's agreement is computed against
    accuracy: float  # the kind's headline metric (accuracy; entity F1 for spans)
    macro_f1: float
    ece: float


class LoopKind(Protocol):
    """What a kind of data gives the one loop (``simulate``): everything else, the rounds,
    the batches, the timing and what a run records, is shared."""

    def first(self, data: Any, seed: int, init: int) -> NDArray[np.int64]:
        """The ``init`` random labels every strategy of a seed starts from."""
        ...

    def ask(self, strategy: str, last: bool) -> Any:
        """What the ``Fit`` is asked to predict of the pool (its third argument)."""
        ...

    def judge(self, data: Any, predicted: Any) -> Judged: ...

    def agreement(self, before: Any, now: Any) -> float:
        """Agreement of two rounds' test decisions (the stabilizing-predictions figure)."""
        ...

    def order(
        self,
        strategy: str,
        data: Any,
        predicted: Any,
        labeled: NDArray[np.int64],
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        """The pool's rows in the order the strategy labels them."""
        ...


class Classes:
    """Classification data (``BenchData``): accuracy, kappa, the server's rankings."""

    def first(self, data: BenchData, seed: int, init: int) -> NDArray[np.int64]:
        return np.random.default_rng(seed).choice(data.pool_y.size, init, replace=False)

    def ask(self, strategy: str, last: bool) -> bool:
        return not last and strategy not in PROB_FREE

    def judge(self, data: BenchData, predicted: Predicted) -> Judged:
        pred = decided(predicted.test)
        return Judged(
            pred,
            float((pred == data.test_y).mean()),
            float(f1_score(data.test_y, pred, average="macro", zero_division=0)),
            calibration_error(predicted.test, data.test_y),
        )

    def agreement(self, before: NDArray[np.int64], now: NDArray[np.int64]) -> float:
        return cohen_kappa(before, now)

    def order(
        self,
        strategy: str,
        data: BenchData,
        predicted: Predicted,
        labeled: NDArray[np.int64],
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        return rank_pool(
            strategy, predicted.pool, data.pool_x, labeled, rng=rng, scores=predicted.scores
        )


CLASSES = Classes()


def simulate(
    data: Any,
    strategy: str,
    seed: int,
    init: int,
    batch: int,
    budget: int,
    fit: Callable[[Any, NDArray[np.int64], Any], Any] = fit_predict,
    on_round: Callable[[], object] | None = None,
    kind: LoopKind = CLASSES,
) -> Run:
    """One strategy, one seed: fit, judge on the test split, label the strategy's next
    ``batch``, until ``budget`` labels; ``kind``: what the data's kind provides."""
    labeled = kind.first(data, seed, init)
    rng = np.random.default_rng([seed, 1])  # the strategy's own tie-breaking
    run = Run()
    previous: Any = None
    while True:
        start = time.perf_counter()
        last = labeled.size >= budget
        predicted = fit(data, labeled, kind.ask(strategy, last))
        judged = kind.judge(data, predicted)
        run.labels.append(int(labeled.size))
        run.ece.append(judged.ece)
        run.accuracy.append(judged.accuracy)
        run.macro_f1.append(judged.macro_f1)
        if previous is not None:
            run.kappas.append(kind.agreement(previous, judged.decisions))
        previous = judged.decisions
        if not last:
            order = kind.order(strategy, data, predicted, labeled, rng)
            # Sorted, so the fit does not depend on the order within a batch: otherwise float
            # rounding alone sends two strategies with the same picks down different paths.
            picks = order[: min(batch, budget - labeled.size)]
            labeled = np.sort(np.concatenate([labeled, picks]))
        run.seconds.append(time.perf_counter() - start)
        if on_round is not None:
            on_round()
        if last:
            run.acquired = labeled.tolist()
            run.promotions = dict(getattr(fit, "promotions", {}))
            signals: list[stopping.PlateauSignal | None] = getattr(fit, "plateau", [])
            run.plateau_gain = [None if p is None else p.gain for p in signals]
            run.plateau_stop = [p is not None and p.stop for p in signals]
            run.plateau_unseen = [None if p is None else p.unseen for p in signals]
            run.plateau_counts = list(getattr(fit, "counts", []))
            return run


def ceiling(data: BenchData) -> float:
    """Test accuracy of the same head trained on the whole pool."""
    pred = decided(fit_predict(data, np.arange(data.pool_y.size), False).test)
    return float((pred == data.test_y).mean())


def run_strategies(
    data: Any,
    strategies: Sequence[str],
    seeds: int,
    init: int,
    batch: int,
    budget: int,
    fit_for: Callable[[int], Any],
    desc: str,
    kind: LoopKind = CLASSES,
) -> dict[str, list[Run]]:
    """``simulate`` every strategy for every seed, each with a fresh ``Fit`` for the seed."""
    runs: dict[str, list[Run]] = {name: [] for name in strategies}
    rounds = 1 + -(-(budget - init) // batch)
    with tqdm(total=len(strategies) * seeds * rounds, desc=desc, unit="round") as bar:
        for seed in range(seeds):
            for name in strategies:
                bar.set_postfix(strategy=name, seed=seed)
                step = partial(bar.update, 1)
                fit = fit_for(seed)
                runs[name].append(simulate(data, name, seed, init, batch, budget, fit, step, kind))
    return runs


def lora_once(
    data: BenchData, runs: dict[str, list[Run]], fit_for: Callable[[int], Fit]
) -> dict[str, list[tuple[float, float]]]:
    """Fit once on each run's acquired labels: (test accuracy, seconds) per strategy and seed."""
    once: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    with tqdm(total=sum(map(len, runs.values())), desc="lora once", unit="fit") as bar:
        for name, rs in runs.items():
            for seed, run in enumerate(rs):  # _loop appends seed by seed
                start = time.perf_counter()
                test = fit_for(seed)(data, np.array(run.acquired, dtype=np.int64), False).test
                pred = decided(test)
                accuracy = float((pred == data.test_y).mean())
                once[name].append((accuracy, time.perf_counter() - start))
                bar.update(1)
    return once
