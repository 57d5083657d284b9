"""The final model (PRepAL's last step): the labels the cheap loop gathered, trained once on the
backbone of the user's choice (a LoRA adapter or every weight), and evaluated as the server's
rounds evaluate; ``core.export`` writes it as a Hugging Face directory.

Evaluation, as ``core.training`` does it: from ``eval_min_labels`` labels on, the stable
held-out split (a label's side depends only on its key): the *evaluated* fit leaves the
held-out labels out and ends on its best epoch on them (the figures), then the *final* fit
trains on every label for that many epochs. Below, k-fold: out-of-fold figures with the
configured epochs, then the final fit on every label. No label is spent on evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.configs import LoraTrainConfig, RoundConfig
from ls_backend.core.embeddings import resolve_model_path
from ls_backend.core.evaluation import evaluate, holdout_split, strata_of, stratified_folds
from ls_backend.core.labels import Embeddings, LabelSpace
from ls_backend.core.lora import LoraClassifier
from ls_backend.core.registry import Registry
from ls_backend.core.tasks import LabeledData, Model, Progress, Task
from ls_backend.core.training import RoundResult, lora_round_of, save_candidate

#: Labels each class needs at least: the held-out split then holds one of every class, and
#: the evaluated fit still trains on two.
MIN_PER_CLASS = 3
#: Folds of the out-of-fold figures below ``eval_min_labels``, at most.
KFOLD = 5
#: A full fine-tune's learning rate: LoRA's (2e-3) would wreck a backbone's weights.
FULL_LR = 3e-5

EvaluationMode = Literal["auto", "held-out", "k-fold", "none"]
EVALUATION_MODES: tuple[str, ...] = get_args(EvaluationMode)


class FinetuneError(ValueError):
    """Input a fine-tune cannot run on; the message says what to change."""


@dataclass
class FinetuneConfig:
    """A fine-tune: the training (backbone, method, epochs, ...) and how it is evaluated."""

    train: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    #: ``auto``: held-out from ``eval_min_labels`` labels on, else k-fold; ``none``: train on
    #: every label for the configured epochs and report no figures (a test file may).
    evaluation: EvaluationMode = "auto"
    eval_fraction: float = 0.2
    eval_min_labels: int = 30
    min_per_class: int = MIN_PER_CLASS

    def __post_init__(self) -> None:
        if self.evaluation not in EVALUATION_MODES:
            raise FinetuneError(f"evaluation must be one of {EVALUATION_MODES}")
        if self.min_per_class < 0:
            raise FinetuneError("min_per_class must not be negative")

    def resolved_evaluation(self, n: int) -> EvaluationMode:
        if self.evaluation != "auto":
            return self.evaluation
        return "held-out" if n >= self.eval_min_labels else "k-fold"


@dataclass
class Labeled:
    """What a fine-tune trains on: texts, targets as ``LabelSpace.encode`` gives them, and a
    stable key per item (a task id) that decides its held-out side."""

    texts: list[str]
    targets: NDArray[np.int64]
    keys: list[int]

    def __post_init__(self) -> None:
        if not len(self.texts) == len(self.targets) == len(self.keys):
            raise ValueError("texts, targets and keys must have one entry per item")

    def take(self, index: NDArray[np.int64]) -> Labeled:
        return Labeled(
            [self.texts[i] for i in index], self.targets[index], [self.keys[i] for i in index]
        )

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Finetuned:
    """A fine-tune's outcome: the final model (trained on every label), the evaluated one
    (held-out only), and what the model card and the registry record."""

    space: LabelSpace
    classifier: LoraClassifier
    evaluated: LoraClassifier | None
    config: FinetuneConfig
    evaluation: EvaluationMode  # as resolved: held-out, k-fold or none
    metrics: dict[str, Any] | None  # accuracy, macro_f1, ece, n: of the evaluation
    split: dict[str, Any]  # what the metrics come from, in words and counts
    counts: dict[str, int]  # labels per class
    examples: int  # labeled texts trained on
    fingerprint: str
    epochs: int  # of the final fit
    seconds: float
    #: (trained on, held out): the evaluated fit's split of the labels, by index.
    split_index: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None
    test_metrics: dict[str, Any] | None = None


# --- checks --------------------------------------------------------------------------------


def check_backbone(name: str) -> str:
    """The backbone's local path (or hub id it loads from), or a ``FinetuneError`` saying why
    it cannot be used: no such folder, a folder without a model, an id this machine cannot
    load (offline, no cache)."""
    path = resolve_model_path(name)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FinetuneError(f"backbone {name!r}: the folder {path} holds no config.json")
        return path
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise FinetuneError(
            f"unknown backbone {name!r}: not `embedded`, not a model folder, and not a Hugging "
            f"Face id that loads here (offline, download it first): {exc}"
        ) from exc
    return path


def label_counts(space: LabelSpace, targets: NDArray[np.int64]) -> dict[str, int]:
    """Labels per class (multi-label: items that carry it)."""
    if space.multi_label:
        per = targets.sum(axis=0) if targets.size else np.zeros(space.size, dtype=np.int64)
    else:
        per = np.bincount(targets, minlength=space.size)
    return {label: int(n) for label, n in zip(space.labels, per, strict=True)}


def check_labels(space: LabelSpace, data: Labeled, config: FinetuneConfig) -> dict[str, int]:
    """The counts per class, or a ``FinetuneError`` naming the classes with too few labels."""
    counts = label_counts(space, data.targets)
    short = {label: n for label, n in counts.items() if n < config.min_per_class}
    if short:
        listed = ", ".join(f"{label!r}: {n}" for label, n in short.items())
        raise FinetuneError(
            f"too few labels per class ({listed}); a fine-tune needs at least "
            f"{config.min_per_class} of each class: label more, or remove the class from the "
            f"label config"
        )
    return counts


def fingerprint(space: LabelSpace, data: Labeled) -> str:
    """A hash of the label set (label names, and each text with its labels), whatever their
    order: two fine-tunes with one fingerprint trained on the same data."""
    decided = (
        [[space.labels[c] for c in np.flatnonzero(row)] for row in data.targets]
        if space.multi_label
        else [[space.labels[int(t)]] for t in data.targets]
    )
    items = sorted(
        hashlib.sha256(json.dumps([text, names]).encode()).hexdigest()
        for text, names in zip(data.texts, decided, strict=True)
    )
    header = json.dumps({"labels": list(space.labels), "multi_label": space.multi_label})
    return "sha256:" + hashlib.sha256("\n".join([header, *items]).encode()).hexdigest()


def model_bytes(backbone_path: str) -> int | None:
    """The backbone's weights on disk (None when it is not a local folder): what an export
    writes about twice (safetensors and ONNX)."""
    if not os.path.isdir(backbone_path):
        return None
    sizes = [
        p.stat().st_size
        for p in Path(backbone_path).iterdir()
        if p.suffix in (".safetensors", ".bin") and p.is_file()
    ]
    return sum(sizes) or None


# --- training ------------------------------------------------------------------------------


def metrics_of(
    clf: LoraClassifier, space: LabelSpace, texts: Sequence[str], targets: NDArray[np.int64]
) -> dict[str, Any]:
    """Accuracy (exact match for multi-label), macro-F1 and ECE of one deterministic pass."""
    return evaluate(space, clf.predict_proba(list(texts), mc_samples=1), targets).as_dict()


def _progress(report: Progress, start: float, end: float, stage: str) -> Any:
    return lambda epoch, total, _metrics: report(
        start + (end - start) * epoch / total, f"{stage}: epoch {epoch}/{total}"
    )


def finetune(
    space: LabelSpace,
    data: Labeled,
    config: FinetuneConfig,
    progress: Progress | None = None,
    show_progress: bool = False,
    test: Labeled | None = None,
) -> Finetuned:
    """Check the input, evaluate, train the final model on every label (and score it on
    ``test`` when given). Raises ``FinetuneError`` before any training on bad input."""
    report = progress or (lambda _fraction, _stage: None)
    started = time.monotonic()
    report(0.0, "checking")
    check_backbone(config.train.backbone)
    counts = check_labels(space, data, config)
    mode = config.resolved_evaluation(len(data))
    train_cfg = config.train
    strata = strata_of(space, data.targets)
    evaluated: LoraClassifier | None = None
    metrics: dict[str, Any] | None = None
    split_index: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None

    def fit(
        part: Labeled,
        cfg: LoraTrainConfig,
        stage: str,
        span: tuple[float, float],
        eval_part: Labeled | None = None,
    ) -> LoraClassifier:
        clf = LoraClassifier.create(space, cfg)
        clf.fit(
            part.texts,
            part.targets,
            eval_part.texts if eval_part is not None else (),
            eval_part.targets if eval_part is not None else None,
            _progress(report, *span, stage),
            show_progress,
        )
        return clf

    final_cfg = train_cfg
    if mode == "held-out":
        split_index = holdout_split(data.keys, strata, config.eval_fraction)
        trained_on, held = data.take(split_index[0]), data.take(split_index[1])
        if not len(held):
            raise FinetuneError("no label falls in the held-out split: use --evaluation k-fold")
        evaluated = fit(trained_on, train_cfg, "evaluated fit", (0.02, 0.45), held)
        metrics = metrics_of(evaluated, space, held.texts, held.targets)
        assert evaluated.fit_result is not None
        # The final fit repeats the evaluated one's epochs on every label, as a round does.
        final_cfg = replace(train_cfg, epochs=evaluated.fit_result.best_epoch, min_steps=0)
        split = {
            "name": "held-out",
            "labels": len(held),
            "trained_on": len(trained_on),
            "fraction": config.eval_fraction,
            "note": "the evaluated fit, trained without these labels; its epoch count was "
            "chosen on them, so the figures lean optimistic",
        }
    elif mode == "k-fold":
        k = int(min(KFOLD, min(np.unique(strata, return_counts=True)[1])))
        if k < 2:
            raise FinetuneError("k-fold needs at least 2 labels of every class")
        probs = np.zeros((len(data), space.size, 1), dtype=np.float32)
        folds = stratified_folds(strata, k)
        for f, (train_idx, test_idx) in enumerate(folds):
            span = (0.02 + 0.43 * f / k, 0.02 + 0.43 * (f + 1) / k)
            clf = fit(data.take(train_idx), train_cfg, f"fold {f + 1}/{k}", span)
            probs[test_idx] = clf.predict_proba([data.texts[i] for i in test_idx], mc_samples=1)
        metrics = evaluate(space, probs, data.targets).as_dict()
        split = {
            "name": "k-fold",
            "labels": len(data),
            "folds": k,
            "note": f"out-of-fold predictions of {k} fits, each without its fold",
        }
    else:
        split = {"name": "none", "labels": 0, "note": "not evaluated on the labels"}

    span = (0.45, 0.95) if mode != "none" else (0.02, 0.95)
    classifier = fit(data, final_cfg, "final fit on every label", span)
    epochs = classifier.fit_result.best_epoch if classifier.fit_result else final_cfg.epochs
    test_metrics = None
    if test is not None and len(test):
        report(0.96, "scoring the test split")
        test_metrics = metrics_of(classifier, space, test.texts, test.targets)
    report(1.0, "trained")
    return Finetuned(
        space=space,
        classifier=classifier,
        evaluated=evaluated,
        config=config,
        evaluation=mode,
        metrics=metrics,
        split=split,
        counts=counts,
        examples=len(data),
        fingerprint=fingerprint(space, data),
        epochs=epochs,
        seconds=time.monotonic() - started,
        split_index=split_index,
        test_metrics=test_metrics,
    )


def register(
    task: Task,
    registry: Registry,
    space: LabelSpace,
    data: LabeledData,
    done: Finetuned,
    config: RoundConfig,
    load_current: Callable[[], Model | None],
    label_embeddings: Embeddings | None = None,
    extra_info: dict[str, Any] | None = None,
) -> RoundResult:
    """Save a held-out fine-tune as a model version beside light heads (STAR's base) and
    promote it by the server's rule, as a LoRA round's adapter would be: its evaluated fit
    against the serving version's on the same held-out labels. ``data``: the labels it was
    trained on, in the same order (``strata_keys`` as its keys), with their embeddings."""
    from ls_backend.core.model import ModelVersion

    if done.evaluated is None or done.split_index is None:
        raise FinetuneError(
            f"registering needs the held-out evaluation ({config.eval_min_labels} labels or "
            f"more): the promotion rule compares models on held-out labels"
        )
    train_idx, held_idx = done.split_index
    train_data, eval_data = data.take(train_idx), data.take(held_idx)
    evaluated_head = task.fit_head(space, train_data, config, label_embeddings)
    served_head = task.fit_head(space, data, config, label_embeddings, like=evaluated_head)
    assert isinstance(evaluated_head, ModelVersion) and isinstance(served_head, ModelVersion)
    t = lora_round_of(registry)
    evaluated = ModelVersion("", space, evaluated_head.head, done.evaluated, lora_round=t)
    candidate = ModelVersion("", space, served_head.head, done.classifier, lora_round=t)
    scores = task.evaluate(evaluated, space, eval_data)
    config = replace(config, lora=done.config.train)
    return save_candidate(
        task, registry, space, data, train_data, eval_data, evaluated, candidate, scores,
        load_current, config, extra_info,
    )  # fmt: skip
