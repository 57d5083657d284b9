"""One training round: fit a candidate, evaluate it beside the serving model, save, promote.

Two kinds of round share this path (PRepAL + STAR): ``head`` refits the light head
on frozen embeddings (well under a second), ``lora`` fine-tunes an adapter in the
background. Every candidate is saved as a version, promoted or not; whether it serves
is decided on the same held-out labels as the current model (``should_promote``).

From EVAL_MIN_LABELS on, a round fits twice: the *evaluated* fit leaves the held-out
labels out and gives the version's figures; the *served* fit repeats it on every label
(the adapter with the epochs the evaluated fit chose), so no label is spent on
evaluation. Versions are compared by their evaluated fits, kept in ``evaluated/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.configs import RoundConfig
from ls_backend.core.evaluation import (
    Metrics,
    evaluate,
    holdout_split,
    item_correct,
    should_promote,
    strata_of,
    stratified_folds,
)
from ls_backend.core.heads import LinearHead, PrototypeHead, choose_prior_strength
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings, LabelSpace
from ls_backend.core.model import ModelVersion
from ls_backend.core.registry import Registry

Progress = Callable[[float, str], None]
#: A version's folder keeps the fit its metrics come from here (held-out labels left out).
EVALUATED = "evaluated"


class NotEnoughLabels(Exception):
    """The round cannot run yet (too few labels or classes); not a failure."""


@dataclass
class LabeledData:
    keys: list[int]  # annotation ids: what each version records it saw
    strata_keys: list[int]  # task ids: the held-out side is decided per task
    texts: list[str]
    targets: NDArray[np.int64]
    embeddings: Embeddings

    def take(self, index: NDArray[np.int64]) -> LabeledData:
        return LabeledData(
            [self.keys[i] for i in index],
            [self.strata_keys[i] for i in index],
            [self.texts[i] for i in index],
            self.targets[index],
            self.embeddings[index],
        )

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class RoundResult:
    version: str
    kind: ModelKind
    promoted: bool
    metrics: dict[str, float]
    baseline: dict[str, float] | None
    reason: str


def prototype_model(space: LabelSpace, label_embeddings: Embeddings) -> ModelVersion:
    return ModelVersion("", space, PrototypeHead(space, label_embeddings))


def save_prototype(registry: Registry, model: ModelVersion, reason: str) -> str:
    """Zero-shot serves a new label space until labels exist: versioned like any model."""
    with registry.lock():
        version = registry.save(
            model.kind, model.save, {"promoted": True, "reason": reason, "metrics": None}
        )
        registry.set_current(version)
    return version


def _fit_head(
    space: LabelSpace,
    data: LabeledData,
    c: float,
    prior: Embeddings | None = None,
    strength: float | None = None,
) -> LinearHead:
    """The light head; with ``prior`` (label-name embeddings), shrunk toward them with
    ``strength``, or as strongly as cross-validation on these labels says
    (``choose_prior_strength``; 0 is the plain head)."""
    x, y = data.embeddings, data.targets
    try:
        if strength is None:
            strength = 0.0 if prior is None else choose_prior_strength(space, x, y, prior, c)
        return LinearHead.fit(space, x, y, c=c, prior=prior, strength=strength)
    except ValueError as exc:
        raise NotEnoughLabels(str(exc)) from exc


#: A model's metrics on some labels, and which of those labels it gets right.
Scores = tuple[Metrics, NDArray[np.bool_]]


def _score(model: ModelVersion, space: LabelSpace, data: LabeledData) -> Scores | None:
    """The model's figures on ``data``, or None when it predicts another label space."""
    if model.space != space:
        return None
    probs = model.predict(data.texts, data.embeddings, mc_samples=1).probs
    return evaluate(space, probs, data.targets), item_correct(space, probs, data.targets)


def _kfold_head_metrics(
    space: LabelSpace, data: LabeledData, c: float, prior: Embeddings | None
) -> Scores | None:
    strata = strata_of(space, data.targets)
    smallest = min(np.unique(strata, return_counts=True)[1])
    k = int(min(5, smallest))
    if k < 2:
        return None
    probs = np.zeros((len(data), space.size, 1), dtype=np.float32)
    for train, test in stratified_folds(strata, k):
        head = _fit_head(space, data.take(train), c, prior)
        probs[test] = head.predict_proba(data.embeddings[test])
    return evaluate(space, probs, data.targets), item_correct(space, probs, data.targets)


def run_round(
    kind: ModelKind,
    registry: Registry,
    space: LabelSpace,
    data: LabeledData,
    load_current: Callable[[], ModelVersion | None],
    config: RoundConfig,
    progress: Progress | None = None,
    label_embeddings: Embeddings | None = None,
) -> RoundResult:
    """Train, evaluate, save and (maybe) promote one candidate.

    Training runs outside the registry lock; the comparison with the serving model,
    the save and the promotion run inside it, against whatever serves by then.
    ``label_embeddings``: the label names' (zero-shot prototypes), the head's prior when
    ``config.head_prior``.
    """
    kind = ModelKind(kind)
    report = progress or (lambda _fraction, _stage: None)
    prior = label_embeddings if config.head_prior else None
    started = time.monotonic()
    report(0.0, "split")
    few = len(data) < config.eval_min_labels
    if kind is ModelKind.LORA and few:
        raise NotEnoughLabels(f"LoRA needs at least {config.eval_min_labels} labels")
    if few:
        # Too few labels for a held-out set: fit on all, estimate by k-fold, and compare
        # only with zero-shot, which never trained on these labels.
        candidate = ModelVersion("", space, _fit_head(space, data, config.head_c, prior))
        evaluated, scores = None, _kfold_head_metrics(space, data, config.head_c, prior)
        train_data = eval_data = data
    else:
        # The evaluated fit leaves the held-out part out; the candidate that would serve
        # is then fitted the same way on every label (no label is spent on evaluation).
        train_idx, held_idx = holdout_split(
            data.strata_keys, strata_of(space, data.targets), config.eval_fraction
        )
        train_data, eval_data = data.take(train_idx), data.take(held_idx)
        evaluated_head = _fit_head(space, train_data, config.head_c, prior)
        evaluated = ModelVersion("", space, evaluated_head)
        # With the prior strength the evaluated fit chose, as the adapter keeps its epochs.
        strength = evaluated_head.prior_strength
        candidate = ModelVersion("", space, _fit_head(space, data, config.head_c, prior, strength))
        if kind is ModelKind.LORA:
            lora_round = 1 + sum(  # STAR's t: adapters promoted before this one
                ModelKind.of(v) is ModelKind.LORA and bool(registry.info(v).get("promoted"))
                for v in registry.versions()
            )
            evaluated = _train_lora(
                space, evaluated, train_data, eval_data, lora_round, config, report, 0.05, 0.5
            )
            assert evaluated.lora is not None and evaluated.lora.fit_result is not None
            assert config.lora is not None
            epochs = evaluated.lora.fit_result.best_epoch
            chosen = replace(config.lora, epochs=epochs, min_steps=0)
            candidate = _train_lora(
                space,
                candidate,
                data,
                None,
                lora_round,
                replace(config, lora=chosen),
                report,
                0.5,
                0.9,
            )
        scores = _score(evaluated, space, eval_data)

    report(0.95, "save")
    with registry.lock():
        current = load_current()
        reference = _evaluated_fit(registry, current) if current else None
        comparable = reference is not None and (not few or reference.kind is ModelKind.PROTOTYPE)
        against = _score(reference, space, eval_data) if reference and comparable else None
        metrics = scores[0] if scores else None
        baseline = against[0] if against else None
        if reference is None or against is None:
            promoted, reason = True, "nothing comparable serves"
        elif scores is None:
            promoted, reason = True, "too few labels per class to estimate; more labels win"
        else:
            same_kind = (candidate.lora is None) == (reference.lora is None)
            promoted, reason = should_promote(scores[1], against[1], same_kind)

        def write(path: Path) -> None:
            candidate.save(path)
            if evaluated is not None:
                (path / EVALUATED).mkdir()
                evaluated.save(path / EVALUATED)
            seen = {
                "trained_on": data.keys,
                "evaluated_fit_trained_on": train_data.keys if evaluated else data.keys,
                "held_out": [] if few else eval_data.keys,
            }
            (path / "annotations.json").write_text(json.dumps(seen))

        info = {
            "promoted": promoted,
            "reason": reason,
            "metrics": metrics.as_dict() if metrics else None,
            "baseline": baseline.as_dict() if baseline else None,
            "baseline_version": current.version if current else None,
            "evaluation": "k-fold" if few else "held-out",
            "fits": {
                "served": {"labels": len(data)},
                "evaluated": {"labels": len(train_data), "held_out": len(eval_data)}
                if evaluated
                else {"labels": len(data), "k_fold": True},
                "metrics_from": "k-fold over every label"
                if few
                else f"the evaluated fit ({EVALUATED}/) on the held-out labels",
            },
            "labels": len(data),
            "train_seconds": round(time.monotonic() - started, 3),
            "settings": _settings_record(config),
        }
        if isinstance(candidate.head, LinearHead) and config.head_prior:
            info["head_prior_strength"] = candidate.head.prior_strength
        version = registry.save(candidate.kind, write, info)
        if promoted:
            registry.set_current(version)
    report(1.0, "done")
    return RoundResult(
        version,
        candidate.kind,
        promoted,
        metrics.as_dict() if metrics else {},
        baseline.as_dict() if baseline else None,
        reason,
    )


def _settings_record(config: RoundConfig) -> dict[str, Any]:
    record: dict[str, Any] = {
        "head_c": config.head_c,
        "head_prior": config.head_prior,
        "eval_fraction": config.eval_fraction,
        "eval_min_labels": config.eval_min_labels,
        "star_lambda_decay": config.star_lambda_decay,
        **config.extra,
    }
    if config.lora is not None:
        record["lora"] = asdict(config.lora)
    return record


def _train_lora(
    space: LabelSpace,
    base: ModelVersion,
    train: LabeledData,
    held: LabeledData | None,
    lora_round: int,
    config: RoundConfig,
    report: Progress,
    start: float,
    end: float,
) -> ModelVersion:
    """An adapter on ``train`` (ending on its best epoch on ``held`` when given), reporting
    progress between ``start`` and ``end``."""
    from ls_backend.core.lora import LoraClassifier

    stage = "lora" if held is not None else "lora on every label"

    def on_epoch(epoch: int, total: int, _metrics: dict[str, float]) -> None:
        report(start + (end - start) * epoch / total, f"{stage}: epoch {epoch}/{total}")

    lora = LoraClassifier.train(
        space,
        train.texts,
        train.targets,
        config.lora,
        eval_texts=held.texts if held is not None else (),
        eval_targets=held.targets if held is not None else None,
        progress=on_epoch,
    )
    return ModelVersion("", space, base.head, lora, lora_round=lora_round)


def _evaluated_fit(registry: Registry, current: ModelVersion) -> ModelVersion | None:
    """What the serving version is compared by: its fit that never saw a held-out label
    (held-out sides are stable per task). None for a version fitted on every label without
    one (k-fold, below EVAL_MIN_LABELS): it saw today's held-out labels, nothing compares."""
    if current.kind is ModelKind.PROTOTYPE:
        return current  # never trained on a label
    path = registry.path(current.version)
    if (path / EVALUATED).is_dir():
        return _load_evaluated(path / EVALUATED, current.version)
    info = registry.info(current.version)
    if info.get("evaluation") == "held-out" and "fits" not in info:
        return current  # saved before served fits used every label: fitted on its train side
    return None


@lru_cache(maxsize=2)
def _load_evaluated(path: Path, version: str) -> ModelVersion:
    """Kept loaded: every head round compares with the serving version's evaluated fit."""
    return ModelVersion.load(path, version)
