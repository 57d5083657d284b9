"""The simulated annotator: replay a labeled dataset through the core's own models and ranking.

Protocol (AL_REFERENCE.md): the pool is the train split, stratified-subsampled to
``pool_size``; every strategy starts from the same ``init`` random labels per seed, labels the
top ``batch`` items of its order each round up to ``budget``, and is evaluated on the test
split (optionally stratified-subsampled to ``test_size``) after every round. Embeddings come
from the cached encoder, so reruns are fast.

Models (the one loop, ``simulate``, with a different ``Fit``):
- ``head``: the light head on frozen embeddings, refit every round (fast on CPU);
- ``lora``: a fresh LoRA classifier from the backbone every round (the server's lora lane),
  ranking with its MC-dropout probabilities; diversity still uses the embeddings;
- ``prepal-then-lora``: select with the head (exactly the ``head`` loop), then fine-tune LoRA
  once on the acquired labels; compared with ``lora`` (run here, or read from ``--compare``);
- ``served``: the server's head lane (``ServedFit``); ``served-lora``: its head lane every round
  and its LoRA lane every ``--lora-every`` labels, ranked as the server ranks (``ServedLoraFit``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from ls_backend.core import learning_curves as lc
from ls_backend.core import stopping, uncertainty
from ls_backend.core.evaluation import expected_calibration_error, paired_gain
from ls_backend.core.heads import LinearHead, choose_prior_strength, label_prototype_texts
from ls_backend.core.labels import Embeddings, LabelSpace, Probs
from ls_backend.core.model import ModelVersion
from ls_backend.core.ranking import STRATEGIES, rank_pool
from ls_backend.core.registry import Registry
from ls_backend.core.report import (
    STOP_KAPPA,
    STOP_WINDOW,
    cohen_kappa,
    first_stop,
    out_of_fold_probs,
)
from ls_backend.core.training import (
    LabeledData,
    NotEnoughLabels,
    RoundConfig,
    RoundResult,
    prototype_model,
    run_round,
    save_prototype,
)
from ls_backend.report import STOP_SET
from ls_backend.settings import Settings

if TYPE_CHECKING:
    from ls_backend.core.lora import LoraTrainConfig

MODELS = ("head", "served", "served-lora", "lora", "prepal-then-lora")
#: What the server ranks with unless STRATEGY says otherwise (Settings.strategy's default).
DEFAULT_STRATEGY = "default"
#: Share of the full-pool ("ceiling") accuracy that ``labels_to_target`` counts labels to.
TARGET_SHARE = 0.95
#: Strategies whose order ignores the predictions: no pool prediction is made for them.
PROB_FREE = frozenset({"random", "k_center"})


@dataclass
class BenchData:
    space: LabelSpace
    pool_x: Embeddings
    pool_y: NDArray[np.int64]
    test_x: Embeddings
    test_y: NDArray[np.int64]
    pool_texts: list[str] = field(default_factory=list)  # for LoRA; the head needs none
    test_texts: list[str] = field(default_factory=list)
    label_x: Embeddings | None = None  # label-name prototypes: what serves before a label


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
    # of the next 100 labels (None: no verdict yet) and whether it said stop.
    plateau_gain: list[float | None] = field(default_factory=list)
    plateau_stop: list[bool] = field(default_factory=list)
    plateau_unseen: list[float | None] = field(default_factory=list)  # Good-Turing, per round


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


def read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["text"] for r in rows], [str(r["label"]) for r in rows]


def _subsample(texts: list[str], labels: list[str], size: int) -> tuple[list[str], list[str]]:
    """A stratified subsample; fixed seed: it is part of the dataset, not of the experiment."""
    if len(texts) <= size:
        return texts, labels
    keep, _ = train_test_split(
        np.arange(len(texts)), train_size=size, stratify=labels, random_state=0
    )
    keep = np.sort(keep)
    return [texts[i] for i in keep], [labels[i] for i in keep]


def load_data(
    train: Path,
    test: Path,
    pool_size: int,
    cache_path: Path,
    progress: bool = True,
    test_size: int | None = None,
    runtime: str = "torch",
) -> BenchData:
    from ls_backend.core.embeddings import Encoder  # torch: only when embedding

    train_texts, train_labels = _subsample(*read_jsonl(train), pool_size)
    test_texts, test_labels = read_jsonl(test)
    if test_size is not None:
        test_texts, test_labels = _subsample(test_texts, test_labels, test_size)
    space = LabelSpace(tuple(sorted(set(train_labels) | set(test_labels))))
    encoder = Encoder(
        cache=cache_path,
        max_length=128,
        runtime=runtime,
        export_dir=cache_path.parent / "onnx",
    )
    label_x = encoder.encode(label_prototype_texts(space))
    return BenchData(
        space,
        encoder.encode(train_texts, progress),
        space.encode([[label] for label in train_labels]),
        encoder.encode(test_texts, progress),
        space.encode([[label] for label in test_labels]),
        train_texts,
        test_texts,
        label_x,
    )


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
        self.serving = prototype_model(data.space, data.label_x)  # what the registry serves
        self.serving.version = save_prototype(self.registry, self.serving, "bench")
        # The plateau signal as the server computes it: every head version's decisions on a
        # fixed stop set of pool rows (never the test split), one signal per round.
        size = min(STOP_SET, data.pool_y.size)
        self.stop_rows = np.sort(np.random.default_rng(0).choice(data.pool_y.size, size, False))
        self._versions: tuple[list[int], list[NDArray[np.int64]]] = ([], [])
        self.plateau: list[stopping.PlateauSignal | None] = []

    def __call__(self, data: BenchData, labeled: NDArray[np.int64], pool: bool = True) -> Predicted:
        self.head_round(data, labeled)
        return self.predict(data, labeled, pool)

    def head_round(self, data: BenchData, labeled: NDArray[np.int64]) -> None:
        """The head lane's round, then the plateau signal over every head version so far."""
        result = self.round("head", data, labeled, self.config)
        if result is None:
            self.plateau.append(None)
            return
        head = ModelVersion.load(self.registry.path(result.version), result.version).head
        probs = head.predict_proba(data.pool_x[self.stop_rows])[:, :, 0]
        counts, decisions = self._versions
        counts.append(int(labeled.size))
        decisions.append(np.asarray(probs.argmax(axis=1), dtype=np.int64))
        targets = data.pool_y[labeled]
        oof = out_of_fold_probs(data.space, data.pool_x[labeled], targets, self.config.head_c)
        earlier = [(p.labels, p.gain) for p in self.plateau if p is not None]
        classes = np.bincount(targets, minlength=data.space.size).tolist()
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
                kind, self.registry, data.space, labels, lambda: before, config, None, data.label_x
            )
        except NotEnoughLabels:  # one class so far: zero-shot still serves
            return None
        candidate = ModelVersion.load(self.registry.path(result.version), result.version)
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


def simulate(
    data: BenchData,
    strategy: str,
    seed: int,
    init: int,
    batch: int,
    budget: int,
    fit: Fit = fit_predict,
    on_round: Callable[[], object] | None = None,
) -> Run:
    labeled = np.random.default_rng(seed).choice(data.pool_y.size, init, replace=False)
    rng = np.random.default_rng([seed, 1])  # the strategy's own tie-breaking
    run = Run()
    previous: NDArray[np.int64] | None = None
    while True:
        start = time.perf_counter()
        last = labeled.size >= budget
        predicted = fit(data, labeled, not last and strategy not in PROB_FREE)
        pred = decided(predicted.test)
        run.labels.append(int(labeled.size))
        run.ece.append(calibration_error(predicted.test, data.test_y))
        run.accuracy.append(float((pred == data.test_y).mean()))
        run.macro_f1.append(float(f1_score(data.test_y, pred, average="macro", zero_division=0)))
        if previous is not None:
            run.kappas.append(cohen_kappa(previous, pred))
        previous = pred
        if not last:
            order = rank_pool(
                strategy, predicted.pool, data.pool_x, labeled, rng=rng, scores=predicted.scores
            )
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
            signals = getattr(fit, "plateau", [])
            run.plateau_gain = [None if p is None else p.gain for p in signals]
            run.plateau_stop = [p is not None and p.stop for p in signals]
            run.plateau_unseen = [None if p is None else p.unseen for p in signals]
            return run


def ceiling(data: BenchData) -> float:
    """Test accuracy of the same head trained on the whole pool."""
    pred = decided(fit_predict(data, np.arange(data.pool_y.size), False).test)
    return float((pred == data.test_y).mean())


def summarise(
    runs: dict[str, list[Run]], full_pool_accuracy: float, budget: int, model: str = "head"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, details). results: per strategy AUC (mean, std over seeds), RIPL in % and its
    standard error over paired seeds, labels to reach 95% of the ceiling, savings against
    random there, and the mean curve. details: std bands, macro-F1, labels to match random's
    final accuracy, time per round."""
    out: dict[str, Any] = {"default": DEFAULT_STRATEGY, "model": model, "strategies": {}}
    details: dict[str, Any] = {"ceiling": full_pool_accuracy, "model": model, "strategies": {}}
    target = TARGET_SHARE * full_pool_accuracy
    aucs = {name: [lc.curve_auc(r.accuracy) for r in rs] for name, rs in runs.items()}
    random_auc = float(np.mean(aucs["random"])) if "random" in runs else None
    labels = runs[next(iter(runs))][0].labels
    curves = {name: np.mean([r.accuracy for r in rs], axis=0) for name, rs in runs.items()}
    to_target = {name: lc.labels_to_reach(labels, c, target) for name, c in curves.items()}
    random_final = float(curves["random"][-1]) if "random" in runs else None
    for name, rs in runs.items():
        auc = float(np.mean(aucs[name]))
        out["strategies"][name] = {
            "auc": auc,
            "auc_std": float(np.std(aucs[name])),
            "ripl": None if random_auc is None else 100 * lc.ripl(auc, random_auc),
            "ripl_se": None
            if random_auc is None
            else _percent(lc.ripl_standard_error(aucs[name], aucs["random"])),
            "labels_to_target": to_target[name],
            "savings": lc.savings(to_target[name], to_target.get("random")),
            "curve": [float(a) for a in curves[name]],
        }
        f1 = np.array([r.macro_f1 for r in rs])
        acc = np.array([r.accuracy for r in rs])
        ece = np.array([r.ece for r in rs])
        details["strategies"][name] = {
            "labels": labels,
            "accuracy_std": acc.std(axis=0).tolist(),
            "macro_f1": f1.mean(axis=0).tolist(),
            "macro_f1_std": f1.std(axis=0).tolist(),
            "ece": ece.mean(axis=0).tolist(),  # of the test probabilities, per round
            "ece_std": ece.std(axis=0).tolist(),
            # Per seed, so runs written apart can be paired (RIPL and its SE across folders).
            "accuracy_per_seed": acc.tolist(),
            "ece_per_seed": ece.tolist(),
            "labels_to_random_final": None
            if random_final is None
            else lc.labels_to_reach(labels, curves[name], random_final),
            "seconds_per_round": float(np.mean([np.mean(r.seconds) for r in rs])),
            "seconds_total": float(np.mean([np.sum(r.seconds) for r in rs])),
        }
        details["strategies"][name]["stop"] = plateau_stop_figures(rs, stopping.POINT)
        details["strategies"][name]["stop_stabilizing"] = stop_figures(rs)
        if any(r.promotions for r in rs):  # summed over seeds
            details["strategies"][name]["promotions"] = {
                key: sum(r.promotions.get(key, 0) for r in rs) for key in rs[0].promotions
            }
    details["budget"] = budget
    details["seeds"] = len(runs[next(iter(runs))])
    return out, details


def stop_figures(runs: Sequence[Run]) -> dict[str, Any]:
    """Where the stabilizing-predictions rule (core.report) says stop, per seed: the labels
    then, and the test accuracy left on the table (accuracy at the budget minus at the stop)."""
    labels, left = [], []
    for run in runs:
        at = first_stop(run.kappas, STOP_KAPPA, STOP_WINDOW)
        if at is not None:  # kappas[i] compares round i + 1 with round i
            labels.append(run.labels[at + 1])
            left.append(run.accuracy[-1] - run.accuracy[at + 1])
    return {
        "stopped_seeds": len(labels),
        "labels": labels,
        "accuracy_left": left,
        "mean_labels": float(np.mean(labels)) if labels else None,
        "mean_accuracy_left": float(np.mean(left)) if left else None,
    }


def within(labels: Sequence[int], accuracy: Sequence[float], point: float) -> int:
    """Labels at which a curve first comes within ``point`` of its accuracy at the budget."""
    return next(n for n, a in zip(labels, accuracy, strict=True) if a >= accuracy[-1] - point)


def plateau_stop_figures(runs: Sequence[Run], point: float) -> dict[str, Any]:
    """Where the plateau signal (core.stopping) first says stop, per seed (the budget where it
    never does): labels then, accuracy left on the table (at the budget minus at the stop),
    labels saved; and where the curve first comes within ``point`` of its budget accuracy,
    per seed and for the mean curve (the goal: stop near there, leaving under ``point``)."""
    labels, left, stopped = [], [], []
    for run in runs:
        at = next((i for i, s in enumerate(run.plateau_stop) if s), len(run.labels) - 1)
        stopped.append(at < len(run.labels) - 1)
        labels.append(run.labels[at])
        left.append(run.accuracy[-1] - run.accuracy[at])
    budget = runs[0].labels[-1]
    curve = np.mean([r.accuracy for r in runs], axis=0).tolist()
    return {
        "rule": f"plateau: forecast gain of the next {stopping.HORIZON} labels < {point} at "
        f"every version of the last {stopping.PERSIST} labels, from {stopping.MIN_STOP} on, "
        f"and a new class < {point} likely",
        "stopped_seeds": sum(stopped),
        "stopped": stopped,
        "labels": labels,
        "accuracy_left": left,
        "labels_saved": [budget - n for n in labels],
        "mean_labels": float(np.mean(labels)),
        "mean_accuracy_left": float(np.mean(left)),
        "mean_labels_saved": float(budget - np.mean(labels)),
        "within_point_labels": within(runs[0].labels, curve, point),
        "within_point_per_seed": [within(r.labels, r.accuracy, point) for r in runs],
        # Per round, for re-deciding without a rerun: the forecast, and the probability that
        # the next label's class is new.
        "gain_per_seed": [r.plateau_gain for r in runs],
        "unseen_per_seed": [r.plateau_unseen for r in runs],
    }


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def markdown(title: str, summary: dict[str, Any], details: dict[str, Any]) -> str:
    budget = details["budget"]
    ceiling_of = ": the head on the full pool" if details.get("model") == "lora" else ""
    lines = [
        f"### {title} (ceiling {details['ceiling']:.3f}{ceiling_of})",
        "",
        "| strategy | AUC | RIPL % (± SE) | final acc. | final macro-F1 | final ECE | mean ECE "
        "| labels to 95% ceiling | savings vs random | labels to random@budget | s / round |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for name, s in summary["strategies"].items():
        d = details["strategies"][name]
        reach = d["labels_to_random_final"]
        share = "-" if reach is None else f"{reach} ({100 * reach / budget:.0f}%)"
        se = "" if s.get("ripl_se") is None else f" ± {s['ripl_se']:.1f}"
        lines.append(
            f"| {name} | {s['auc']:.3f} ± {s['auc_std']:.3f} | {fmt(s['ripl'], '+.1f')}{se} "
            f"| {s['curve'][-1]:.3f} ± {d['accuracy_std'][-1]:.3f} | {d['macro_f1'][-1]:.3f} "
            f"| {d['ece'][-1]:.3f} | {np.mean(d['ece']):.3f} "
            f"| {fmt(s['labels_to_target'], 'd')} | {fmt(s['savings'], '.0%')} | {share} "
            f"| {d['seconds_per_round']:.2f} |"
        )
    lines += [
        "",
        f"Stabilizing predictions (stop when the mean kappa of the last {STOP_WINDOW} rounds' "
        f"test predictions >= {STOP_KAPPA}):",
        "",
        "| strategy | seeds stopped | labels at the stop | accuracy left on the table |",
        "|---|---|---|---|",
    ]
    for name in summary["strategies"]:
        stop = details["strategies"][name]["stop_stabilizing"]
        seeds = details["seeds"]
        lines.append(
            f"| {name} | {stop['stopped_seeds']} of {seeds} "
            f"| {fmt(stop['mean_labels'], '.0f')} "
            f"| {fmt(stop['mean_accuracy_left'], '+.3f')} |"
        )
    plateaus = {n: d["stop"] for n, d in details["strategies"].items()}
    forecasts = [g for p in plateaus.values() for seed in p["gain_per_seed"] for g in seed]
    if any(g is not None for g in forecasts):  # --model served: the server's plateau signal
        lines += [
            "",
            f"Plateau signal (core.stopping; {next(iter(plateaus.values()))['rule']}); a seed "
            "that never stops counts at the budget; 'within a point': where the mean curve "
            "first comes within a point of its budget accuracy:",
            "",
            "| strategy | seeds stopped | labels at the stop | accuracy left | labels saved "
            "| within a point at | stop / within |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, p in plateaus.items():
            lines.append(
                f"| {name} | {p['stopped_seeds']} of {seeds} | {p['mean_labels']:.0f} "
                f"| {p['mean_accuracy_left']:+.3f} | {p['mean_labels_saved']:.0f} "
                f"| {p['within_point_labels']} "
                f"| {p['mean_labels'] / p['within_point_labels']:.2f}x |"
            )
    tallies = {n: d["promotions"] for n, d in details["strategies"].items() if "promotions" in d}
    if tallies:
        lines += [
            "",
            "Promotions, summed over seeds; worse / better: on the full test split, by more "
            "than 2 standard errors of the paired difference:",
            "",
            "| strategy | lane | rounds | promoted | promoted but worse | kept out but better |",
            "|---|---|---|---|---|---|",
        ]
        for name, t in tallies.items():
            for lane, prefix in (("head", ""), ("lora", "lora_")):
                if f"{prefix}rounds" in t:
                    lines.append(
                        f"| {name} | {lane} | {t[prefix + 'rounds']} | {t[prefix + 'promoted']} "
                        f"| {t[prefix + 'worse_promoted']} | {t[prefix + 'better_kept_out']} |"
                    )
    return "\n".join(lines) + "\n"


def plot(title: str, summary: dict[str, Any], details: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in summary["strategies"].items():
        x = np.array(details["strategies"][name]["labels"])
        mean, std = np.array(s["curve"]), np.array(details["strategies"][name]["accuracy_std"])
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.axhline(details["ceiling"], color="grey", linestyle=":", label="full pool")
    ax.set(title=title, xlabel="labels", ylabel="test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _lora_config(model: str, lora: LoraTrainConfig | None) -> LoraTrainConfig | None:
    """The LoRA settings the model needs (None for ``head``), with a clear error without LoRA."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {MODELS}")
    if model in ("head", "served"):
        return None
    try:
        from ls_backend.core.lora import LoraTrainConfig
    except ImportError as e:  # torch, transformers or peft missing
        raise RuntimeError(f"--model {model} needs ls_backend.core.lora: {e}") from e
    return lora or LoraTrainConfig()


def _loop(
    data: BenchData,
    strategies: Sequence[str],
    seeds: int,
    init: int,
    batch: int,
    budget: int,
    fit_for: Callable[[int], Fit],
    desc: str,
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
                runs[name].append(simulate(data, name, seed, init, batch, budget, fit, step))
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


Report = tuple[dict[str, Any], dict[str, Any]]  # (results.json, details.json)


def compare(
    head: Report,
    head_runs: dict[str, list[Run]],
    once: dict[str, list[tuple[float, float]]],
    every_round: Report | None,
) -> dict[str, Any]:
    """Per strategy: head in the loop then LoRA once vs LoRA every round. Final test accuracy
    (mean, std over seeds) and wall seconds of the whole loop per seed (the once-fit included)."""
    table: dict[str, Any] = {}
    for name, results in once.items():
        accuracy = np.array([a for a, _ in results])
        seconds = [sum(r.seconds) + s for r, (_, s) in zip(head_runs[name], results, strict=True)]
        row: dict[str, Any] = {
            "head_final_accuracy": head[0]["strategies"][name]["curve"][-1],
            "prepal_then_lora": {
                "final_accuracy": float(accuracy.mean()),
                "final_accuracy_std": float(accuracy.std()),
                "seconds": float(np.mean(seconds)),
                "lora_seconds": float(np.mean([s for _, s in results])),
            },
            "lora_every_round": None,
        }
        if every_round is not None and name in every_round[0]["strategies"]:
            s, d = every_round[0]["strategies"][name], every_round[1]["strategies"][name]
            row["lora_every_round"] = {
                "final_accuracy": s["curve"][-1],
                "final_accuracy_std": d["accuracy_std"][-1],
                "auc": s["auc"],
                "seconds": d["seconds_total"],
            }
        table[name] = row
    return table


def comparison_markdown(table: dict[str, Any], budget: int, seeds: int) -> str:
    lines = [
        f"### LoRA every round vs head in the loop, LoRA once ({budget} labels, {seeds} seeds)",
        "",
        "| strategy | head final acc. | LoRA every round: final acc. | time (s) "
        "| head loop + LoRA once: final acc. | time (s) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        once, every = row["prepal_then_lora"], row["lora_every_round"]
        if every is None:
            every_cells, speedup = "- | -", "-"
        else:
            every_cells = (
                f"{every['final_accuracy']:.3f} ± {every['final_accuracy_std']:.3f} "
                f"| {every['seconds']:.0f}"
            )
            speedup = f"{every['seconds'] / once['seconds']:.1f}x"
        lines.append(
            f"| {name} | {row['head_final_accuracy']:.3f} | {every_cells} "
            f"| {once['final_accuracy']:.3f} ± {once['final_accuracy_std']:.3f} "
            f"| {once['seconds']:.0f} | {speedup} |"
        )
    return "\n".join(lines) + "\n"


def _write(out: Path, title: str, report: Report, extra_markdown: str = "") -> None:
    summary, details = report
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "details.json").write_text(json.dumps(details, indent=2))
    (out / "results.md").write_text(markdown(title, summary, details) + extra_markdown)
    plot(title, summary, details, out / "curves.png")


def _read_report(folder: Path, budget: int) -> Report:
    """A ``--model lora`` output folder, for comparison."""
    summary = json.loads((folder / "results.json").read_text())
    details = json.loads((folder / "details.json").read_text())
    if summary.get("model") != "lora" or details["budget"] != budget:
        raise ValueError(f"{folder} is not a --model lora run with budget {budget}")
    return summary, details


def run_bench(
    train: Path,
    test: Path,
    out: Path,
    strategies: Sequence[str] = ("random", "margin", DEFAULT_STRATEGY),
    init: int = 10,
    batch: int = 10,
    budget: int = 300,
    seeds: int = 5,
    model: str = "head",
    pool_size: int = 4000,
    cache_path: Path | None = None,
    test_size: int | None = None,
    lora: LoraTrainConfig | None = None,
    compare_with: Path | None = None,
    embedding_backend: str | None = None,
    lora_every: int | None = None,
    star_mix: bool = True,
) -> dict[str, Any]:
    """Run every strategy for every seed; write results.json, details.json, results.md and
    curves.png under ``out`` and return the results.json content.

    ``prepal-then-lora`` adds the comparison (results.json key ``prepal_then_lora``, a table in
    results.md) against LoRA every round, which it runs into ``out/lora`` unless
    ``compare_with`` names the folder of an earlier ``--model lora`` run.
    ``embedding_backend``: the embedding runtime (default: the server's, EMBEDDING_BACKEND).
    ``served-lora``: a LoRA round every ``lora_every`` labels (default: the server's
    LORA_EVERY), ranked with STAR's mix unless ``star_mix`` is off.
    """
    lora_config = _lora_config(model, lora)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {sorted(STRATEGIES)}")
    if not init < budget:
        raise ValueError("--init must be below --budget")
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_path or out / "embeddings.sqlite"
    runtime = embedding_backend or Settings().resolved_embedding_backend()
    data = load_data(train, test, pool_size, cache, test_size=test_size, runtime=runtime)
    if init > data.pool_y.size or budget > data.pool_y.size:
        raise ValueError("--init and --budget must not exceed the pool")
    full_pool = ceiling(data)
    title = train.parent.name or train.stem
    loop = partial(_loop, data, strategies, seeds, init, batch, budget)

    def lora_fit(seed: int) -> Fit:
        assert lora_config is not None
        return LoraFit(replace(lora_config, seed=seed))

    if model == "lora":
        report = summarise(loop(lora_fit, "lora"), full_pool, budget, model)
        _write(out, f"{title}: LoRA every round", report)
        return report[0]
    if model in ("served", "served-lora"):
        from ls_backend.lanes import HeadLane, LoraLane  # the server's round configs

        settings = Settings()
        config = HeadLane(settings).config()
        every = lora_every or settings.lora_every

        def served_fit(registries: str, seed: int) -> Fit:
            root = Path(tempfile.mkdtemp(dir=registries))
            if model == "served":
                return ServedFit(root, data, config)
            assert lora_config is not None
            lane = replace(LoraLane(settings).config(), lora=replace(lora_config, seed=seed))
            min_labels = settings.lora_min_labels
            return ServedLoraFit(root, data, config, lane, every, min_labels, star_mix)

        with tempfile.TemporaryDirectory() as registries:
            served = loop(partial(served_fit, registries), model)
        report = summarise(served, full_pool, budget, model)
        title += ": the served model (the server's head lane"
        if model == "served-lora":
            mix = "STAR's mix" if star_mix else "the adapter's margin"
            title += f", LoRA every {every} labels, ranked by {mix})"
            assert lora_config is not None
            report[1]["served_lora"] = {
                "lora_every": every,
                "lora_min_labels": settings.lora_min_labels,
                "star_mix": star_mix,
                "star_lambda_decay": settings.star_lambda_decay,
                "lora": asdict(lora_config),
            }
        else:
            title += ")"
        _write(out, title, report)
        return report[0]
    head_fit = partial(fit_predict, prior=Settings().head_prior)
    runs = loop(lambda _: head_fit, "head")
    report = summarise(runs, full_pool, budget, model)
    _write(out, title, report)
    if model == "prepal-then-lora":
        once = lora_once(data, runs, lora_fit)
        if compare_with is None:
            every_round = summarise(loop(lora_fit, "lora"), full_pool, budget, "lora")
            _write(out / "lora", f"{title}: LoRA every round", every_round)
        else:
            every_round = _read_report(compare_with, budget)
        table = compare(report, runs, once, every_round)
        report[0]["prepal_then_lora"] = table
        _write(out, title, report, "\n" + comparison_markdown(table, budget, seeds))
    return report[0]


def _main(args: argparse.Namespace) -> None:
    lora = None
    if args.model not in ("head", "served"):
        from ls_backend.lanes import LoraLane

        given = {
            "backbone": args.backbone,
            "epochs": args.lora_epochs,
            "min_steps": args.lora_min_steps,
            "max_length": args.max_length,
            "mc_samples": args.mc_samples,
            "b_decay": args.b_decay,
        }
        server = LoraLane(Settings()).config().lora  # the server's LoRA settings
        lora = replace(server, **{k: v for k, v in given.items() if v is not None})
    run_bench(
        args.train,
        args.test,
        args.out,
        [s.strip() for s in args.strategies.split(",") if s.strip()],
        args.init,
        args.batch,
        args.budget,
        args.seeds,
        args.model,
        args.pool_size,
        args.cache,
        args.test_size,
        lora,
        args.compare,
        args.embedding_backend,
        args.lora_every,
        args.star_mix,
    )
    print((args.out / "results.md").read_text(), end="")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to an argparse sub-command set; it dispatches through ``args.func``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="simulate an annotator on a labeled dataset and compare strategies"
    )
    p.add_argument("--train", type=Path, required=True, help="JSONL(.gz) of {text, label}: pool")
    p.add_argument("--test", type=Path, required=True, help="JSONL(.gz) of {text, label}: test")
    p.add_argument("--out", type=Path, required=True, help="directory for the results")
    p.add_argument(
        "--strategies",
        default=f"random,margin,{DEFAULT_STRATEGY}",
        help=f"comma-separated, from: {', '.join(sorted(STRATEGIES))}",
    )
    p.add_argument("--init", type=int, default=10, help="random labels to start from")
    p.add_argument("--batch", type=int, default=10, help="labels added per round")
    p.add_argument("--budget", type=int, default=300, help="labels at the last round")
    p.add_argument("--seeds", type=int, default=5, help="repetitions (seeds 0..N-1)")
    p.add_argument(
        "--model",
        choices=MODELS,
        default="head",
        help="head: light head every round, on every label; served: the server's head lane "
        "(zero-shot first, held-out evaluation, promotions); served-lora: that and the server's "
        "LoRA lane every --lora-every labels; lora: LoRA every round; "
        "prepal-then-lora: select with the head, fine-tune LoRA once, compare with LoRA every "
        "round",
    )
    p.add_argument("--pool-size", type=int, default=4000, help="stratified pool subsample size")
    p.add_argument(
        "--test-size", type=int, default=None, help="stratified test subsample (default: all)"
    )
    p.add_argument(
        "--cache", type=Path, default=None, help="embedding cache (default OUT/embeddings.sqlite)"
    )
    p.add_argument(
        "--embedding-backend",
        choices=["torch", "onnx", "openvino"],
        default=None,
        help="embedding runtime (default: the server's, EMBEDDING_BACKEND)",
    )
    lora = p.add_argument_group(
        "LoRA (--model served-lora / lora / prepal-then-lora; default: the server's)"
    )
    lora.add_argument("--backbone", default=None, help="`embedded`, a local path or a HF id")
    lora.add_argument("--lora-epochs", type=int, default=None, help="epochs per fit")
    lora.add_argument(
        "--lora-min-steps", type=int, default=None, help="add epochs up to this many steps"
    )
    lora.add_argument("--max-length", type=int, default=None, help="tokens per text")
    lora.add_argument("--mc-samples", type=int, default=None, help="MC-dropout passes (pool)")
    lora.add_argument(
        "--b-decay", type=float, default=None, help="STAR's L2 on lora_B (0 turns it off)"
    )
    lora.add_argument(
        "--lora-every",
        type=int,
        default=None,
        help="served-lora: labels between LoRA rounds (default: the server's LORA_EVERY)",
    )
    lora.add_argument(
        "--star-mix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="served-lora: rank by STAR's dynamic uncertainty while an adapter serves "
        "(--no-star-mix: by the adapter's margin alone)",
    )
    lora.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="prepal-then-lora: compare with this --model lora output folder instead of "
        "running LoRA every round again",
    )
    p.set_defaults(func=_main)
    return p
