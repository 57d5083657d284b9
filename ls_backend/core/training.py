"""One training round: fit a candidate, evaluate it beside the serving model, save, promote.

Two kinds of round share this path (PRepAL + STAR): ``head`` refits the light head on frozen
embeddings (well under a second), ``lora`` fine-tunes an adapter in the background. Every
candidate is saved as a version, promoted or not; whether it serves is decided on the same
held-out labels as the current model (``should_promote``). The task kind (``core.tasks``)
supplies the fits and the figures; nothing here depends on it.

From EVAL_MIN_LABELS on, a round fits twice: the *evaluated* fit leaves the held-out labels
out and gives the version's figures; the *served* fit repeats it on every label (the adapter
with the epochs the evaluated fit chose), so no label is spent on evaluation. Versions are
compared by their evaluated fits, kept in ``evaluated/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ls_backend.core.configs import RoundConfig
from ls_backend.core.evaluation import holdout_split, should_promote
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings
from ls_backend.core.registry import Registry
from ls_backend.core.task_registry import task_of
from ls_backend.core.tasks import (
    Evaluation,
    LabeledData,
    Model,
    NotEnoughLabels,
    Progress,
    Task,
    TaskKind,
)

#: A version's folder keeps the fit its metrics come from here (held-out labels left out).
EVALUATED = "evaluated"


@dataclass
class RoundResult:
    version: str
    kind: ModelKind
    promoted: bool
    metrics: dict[str, Any]
    baseline: dict[str, Any] | None
    reason: str


def save_prototype(registry: Registry, model: Model, reason: str, task: TaskKind) -> str:
    """Zero-shot serves a new label space until labels exist: versioned like any model."""
    with registry.lock():
        pin = registry.pinned()  # a version of another label space cannot serve this one
        if pin is not None:
            reason = f"{reason}; lifts the pin on {pin}"
        info = {"promoted": True, "reason": reason, "metrics": None, "task": task.value}
        version = registry.save(model.kind, model.save, info)
        registry.set_current(version)
    return version


def run_round(
    task: Task,
    kind: ModelKind,
    registry: Registry,
    space: Any,
    data: LabeledData,
    load_current: Callable[[], Model | None],
    config: RoundConfig,
    progress: Progress | None = None,
    label_embeddings: Embeddings | None = None,
) -> RoundResult:
    """Train, evaluate, save and (maybe) promote one candidate of ``task``'s model family.

    Training runs outside the registry lock; the comparison with the serving model,
    the save and the promotion run inside it, against whatever serves by then.
    ``label_embeddings``: the label names' (zero-shot prototypes), the head's prior when
    ``config.head_prior``.
    """
    kind = ModelKind(kind)
    report = progress or (lambda _fraction, _stage: None)
    started = time.monotonic()
    report(0.0, "split")
    few = len(data) < config.eval_min_labels
    if kind is ModelKind.LORA and few:
        raise NotEnoughLabels(f"LoRA needs at least {config.eval_min_labels} labels")
    evaluated: Model | None
    scores: Evaluation | None
    if few:
        # Too few labels for a held-out set: fit on all, estimate out of fold, and compare
        # only with zero-shot, which never trained on these labels.
        candidate = task.fit_head(space, data, config, label_embeddings)
        evaluated, scores = None, task.cross_validate(space, data, config, label_embeddings)
        train_data = eval_data = data
    else:
        # The evaluated fit leaves the held-out part out; the candidate that would serve
        # is then fitted the same way on every label (no label is spent on evaluation).
        train_idx, held_idx = holdout_split(
            data.strata_keys, task.strata(space, data.targets), config.eval_fraction
        )
        train_data, eval_data = data.take(train_idx), data.take(held_idx)
        # The serving version's evaluated fit never saw a label of today's held-out side
        # (sides are stable per task): the evaluated fit may start from it.
        current = load_current()
        start = None if current is None else _evaluated_fit(task, registry, current)
        evaluated = task.fit_head(space, train_data, config, label_embeddings, start=start)
        candidate = task.fit_head(space, data, config, label_embeddings, like=evaluated)
        if kind is ModelKind.LORA:
            evaluated, candidate = _adapters(
                task, registry, space, evaluated, candidate, train_data, eval_data, data, config,
                report,
            )  # fmt: skip
        scores = task.evaluate(evaluated, space, eval_data)

    report(0.95, "save")
    result = save_candidate(
        task, registry, space, data, train_data, eval_data, evaluated, candidate, scores,
        load_current, config, {"train_seconds": round(time.monotonic() - started, 3)},
    )  # fmt: skip
    report(1.0, "done")
    return result


def save_candidate(
    task: Task,
    registry: Registry,
    space: Any,
    data: LabeledData,
    train_data: LabeledData,
    eval_data: LabeledData,
    evaluated: Model | None,
    candidate: Model,
    scores: Evaluation | None,
    load_current: Callable[[], Model | None],
    config: RoundConfig,
    extra_info: dict[str, Any] | None = None,
) -> RoundResult:
    """Compare a fitted candidate with whatever serves (on the held-out labels), save it as a
    version and promote it by the rule: a round's second half, and how a model trained
    elsewhere (``ls-backend finetune --register``) joins the registry. ``evaluated`` is None
    for a k-fold candidate (fitted on every label, compared only with zero-shot)."""
    few = evaluated is None
    with registry.lock():
        current = load_current()
        reference = _evaluated_fit(task, registry, current) if current else None
        comparable = reference is not None and (not few or reference.kind is ModelKind.PROTOTYPE)
        against = task.evaluate(reference, space, eval_data) if reference and comparable else None
        if reference is None or against is None:
            promoted, reason = True, "nothing comparable serves"
        elif scores is None:
            promoted, reason = True, "too few labels per class to estimate; more labels win"
        else:
            # Another family (a head and an adapter; adapters of two backbones or methods)
            # must be clearly better: more labels make a better model only within one.
            same_kind = candidate.family == reference.family
            promoted, reason = should_promote(*task.paired(scores, against), same_kind, task.metric)
        pin = registry.pinned()  # after a rollback: saved and compared; the pointer stays
        if pin is not None and promoted:
            promoted, reason = False, f"{pin} is pinned by a rollback; would serve: {reason}"

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

        metrics = dict(scores.metrics) if scores else None
        baseline = dict(against.metrics) if against else None
        info = {
            "task": task.kind.value,
            "promoted": promoted,
            "reason": reason,
            "metrics": metrics,
            "baseline": baseline,
            "baseline_version": current.version if current else None,
            **({"pinned": pin} if pin else {}),
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
            "settings": _settings_record(config),
            **_choices(candidate, config),
            **(extra_info or {}),
        }
        version = registry.save(candidate.kind, write, info)
        if promoted:
            registry.set_current(version)
    return RoundResult(version, candidate.kind, promoted, metrics or {}, baseline, reason)


def lora_round_of(registry: Registry) -> int:
    """STAR's t for a new adapter: 1 + the adapters promoted before it."""
    return 1 + sum(
        ModelKind.of(v) is ModelKind.LORA and bool(registry.info(v).get("promoted"))
        for v in registry.versions()
    )


def _adapters(
    task: Task,
    registry: Registry,
    space: Any,
    evaluated_head: Model,
    served_head: Model,
    train: LabeledData,
    held: LabeledData,
    every: LabeledData,
    config: RoundConfig,
    report: Progress,
) -> tuple[Model, Model]:
    """The evaluated adapter (ending on its best epoch on the held-out labels) and the served
    one on every label, trained for the epochs the first chose."""
    lora_round = lora_round_of(registry)

    def on_epoch(stage: str, start: float, end: float) -> Callable[[int, int], None]:
        return lambda epoch, total: report(
            start + (end - start) * epoch / total, f"{stage}: epoch {epoch}/{total}"
        )

    evaluated = task.fit_lora(
        space, evaluated_head, train, held, lora_round, config, on_epoch("lora", 0.05, 0.5)
    )
    assert config.lora is not None and evaluated.lora.fit_result is not None
    epochs = evaluated.lora.fit_result.best_epoch
    chosen = replace(config, lora=replace(config.lora, epochs=epochs, min_steps=0))
    served = task.fit_lora(
        space,
        served_head,
        every,
        None,
        lora_round,
        chosen,
        on_epoch("lora on every label", 0.5, 0.9),
    )
    return evaluated, served


def _choices(model: Model, config: RoundConfig) -> dict[str, Any]:
    """What the fit chose, recorded with the version (the head prior's strength)."""
    strength = getattr(getattr(model, "head", None), "prior_strength", None)
    return {"head_prior_strength": strength} if config.head_prior and strength is not None else {}


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


def _evaluated_fit(task: Task, registry: Registry, current: Model) -> Model | None:
    """What the serving version is compared by: its fit that never saw a held-out label
    (held-out sides are stable per task). None for a version fitted on every label without
    one (k-fold, below EVAL_MIN_LABELS): it saw today's held-out labels, nothing compares."""
    if current.kind is ModelKind.PROTOTYPE:
        return current  # never trained on a label
    path = registry.path(current.version)
    if (path / EVALUATED).is_dir():
        return _load_evaluated(task.kind, path / EVALUATED, current.version)
    info = registry.info(current.version)
    if info.get("evaluation") == "held-out" and "fits" not in info:
        return current  # saved before served fits used every label: fitted on its train side
    return None


@lru_cache(maxsize=2)
def _load_evaluated(kind: TaskKind, path: Path, version: str) -> Model:
    """Kept loaded: every head round compares with the serving version's evaluated fit."""
    return task_of(kind).load(path, version)
