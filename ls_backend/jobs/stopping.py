"""The plateau stopping signal of a project (``core.stopping``), computed after each head round:
the head lane gathers what the registry and the store hold (every head version's decisions on
the project's stop set, the labels' out-of-fold probabilities, the forecasts of the earlier
rounds), and stores the verdict (``AnnotationStore.set_plateau``) for ``/status``, the report
and the dashboard to read without recomputing it.

Which inputs a kind of task gives lives in ``INPUTS`` (a registry, one entry per kind): the
single-label classification judge is the one measured; span projects judge each version's
expected entity F1 by the newest one's spans; a kind without one gets a note.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.core import stopping
from ls_backend.core.kinds import ModelKind
from ls_backend.core.report import out_of_fold_probs
from ls_backend.core.spans.metrics import judged_f1
from ls_backend.core.spans.task import SpanModel, Spans
from ls_backend.core.spans.types import Span
from ls_backend.core.task_registry import task_of
from ls_backend.core.tasks import LabeledData, Model, TaskKind
from ls_backend.labelstudio.config import TaskError
from ls_backend.projects import Project

log = logging.getLogger(__name__)

#: Successive head versions the stopping signals cover (each is one small matrix product).
STOP_VERSIONS = 200
#: Forecasts of earlier rounds kept for the persistence rule (far more than it looks back).
HISTORY = 500


def stop_set(project: Project, config: Any) -> list[str]:
    """Texts of up to ``STOP_SET`` of the mirror's tasks, chosen by a hash of the task id, so
    the set stays put as tasks come and go."""
    ids, _labeled = project.store.task_states()
    key = [hashlib.blake2b(str(int(t)).encode(), digest_size=8).digest() for t in ids]
    chosen = [
        int(ids[i]) for i in sorted(range(len(ids)), key=key.__getitem__)[: stopping.STOP_SET]
    ]
    data = project.store.task_data(chosen)
    texts = []
    for task_id in chosen:
        try:
            texts.append(config.text_of({"id": task_id, "data": data.get(task_id, {})}))
        except TaskError:
            continue
    return texts


@lru_cache(maxsize=STOP_VERSIONS + 16)
def load_version(kind: str, path: Path, version: str) -> Model:
    """A saved version (never changed once written), loaded once per process."""
    return task_of(TaskKind(kind)).load(path, version)


def head_versions(project: Project, space: Any) -> list[tuple[dict[str, Any], Model]]:
    """The last ``STOP_VERSIONS`` light-head versions of the label space, oldest first."""
    registry = project.registry
    infos = [registry.info(v) for v in registry.versions()]
    heads = [i for i in infos if i.get("kind") == ModelKind.HEAD][-STOP_VERSIONS:]
    out = []
    for info in heads:
        version = str(info["version"])
        model = load_version(info.get("task", "classification"), registry.path(version), version)
        if model.space == space:  # another label config: its decisions do not compare
            out.append((info, model))
    return out


#: ``(project, space, labeled data, earlier forecasts)`` -> the signal, or a note on why not.
Inputs = Callable[
    [Project, Any, LabeledData, list[tuple[int, float | None]]],
    "stopping.PlateauSignal | str",
]


def classification(
    project: Project, space: Any, data: LabeledData, earlier: list[tuple[int, float | None]]
) -> stopping.PlateauSignal | str:
    """Single-label classification: each head version's decisions on the stop set, judged by
    the newest one's probabilities, calibrated on the labels' out-of-fold probabilities."""
    if space.multi_label:
        return "not computed for multi-label projects (the judge is single-label)"
    targets: NDArray[np.int64] = np.asarray(data.targets, dtype=np.int64)
    if np.unique(targets).size < 2:
        return "needs labels of at least 2 classes"
    versions = head_versions(project, space)
    if not versions:
        return "needs a trained version of the light head"
    # Only tasks already embedded (a sync embeds them all; a labeled task is embedded by its
    # round): the signal never waits for the encoder.
    _rows, embeddings = project.encoder.cached(stop_set(project, project.config()))
    if not len(embeddings):
        return "no stop set yet: none of the project's tasks is embedded"
    labels, decisions, newest = [], [], None
    for info, model in versions:
        probs = model.head.predict_proba(embeddings)[:, :, 0]
        labels.append(int(info.get("labels", 0)))
        decisions.append(np.asarray(probs.argmax(axis=1), dtype=np.int64))
        newest = probs
    assert newest is not None
    order = np.argsort(labels, kind="stable")  # versions by labels (a re-read can go back)
    labels = [labels[i] for i in order]
    decisions = [decisions[i] for i in order]
    c = project.settings.head_c
    oof = out_of_fold_probs(space, data.embeddings, targets, c)
    counts = np.bincount(targets, minlength=space.size).tolist()
    return stopping.plateau_signal(
        labels, decisions, newest, oof, targets, earlier, counts, metric=project.task.metric
    )


#: Span head versions the signal covers, at most, spread over the labels (each decodes the
#: stop set once: about 0.1-0.3 CPU s at 2,000 sentences; their spans are kept).
SPAN_VERSIONS = 48
#: Spans of a version on the stop set, by (its directory, version, the stop set's digest).
_SPAN_DECISIONS: OrderedDict[tuple[str, str, str], list[list[Span]]] = OrderedDict()


def _spread(versions: list[tuple[dict[str, Any], Model]], most: int) -> list[Any]:
    """At most ``most`` of the versions (oldest first), the newest always among them: those
    whose label count is a multiple of the smallest power of two that leaves few enough,
    so a version chosen once stays chosen (its spans are kept) until the labels double."""
    step = 1
    counts = [int(info.get("labels", 0)) for info, _ in versions]
    while step < 1 << 30 and sum(1 for n in counts if n % step == 0) >= most:
        step *= 2
    newest = versions[-1:]
    kept = [v for v in versions[:-1] if int(v[0].get("labels", 0)) % step == 0]
    return kept[-(most - 1) :] + newest


def spans(
    project: Project, space: Any, data: LabeledData, earlier: list[tuple[int, float | None]]
) -> stopping.PlateauSignal | str:
    """Span labeling: each head version's spans on the stop set, judged by the newest one's
    spans and their scores (expected entity F1, ``judged_f1``; uncalibrated: no out-of-fold
    temperature for span scores yet)."""
    task = project.task
    assert isinstance(task, Spans)
    if not any(data.targets):
        return "needs a labeled entity"
    versions = head_versions(project, space)
    versions = [(i, m) for i, m in versions if isinstance(m, SpanModel) and m.head.trained]
    if not versions:
        return "needs a trained version of the light head"
    # Only texts whose token vectors are at hand (a sync predicts every task, a round its
    # labeled ones): the signal never waits for the encoder.
    texts = task.source.cached(stop_set(project, project.config()))
    if not texts:
        return "no stop set yet: no task of the project has been predicted"
    digest = hashlib.blake2b("\x00".join(texts).encode(), digest_size=12).hexdigest()
    labels, decisions = [], []
    for info, model in _spread(versions, SPAN_VERSIONS):
        key = (str(project.registry.path(str(info["version"]))), str(info["version"]), digest)
        found = _SPAN_DECISIONS.get(key)
        if found is None:
            items, _ = model.predict(texts, task.source, mc_samples=1)
            found = _SPAN_DECISIONS[key] = [item.spans for item in items]
        _SPAN_DECISIONS.move_to_end(key)
        labels.append(int(info.get("labels", 0)))
        decisions.append(found)
    while len(_SPAN_DECISIONS) > 4 * SPAN_VERSIONS:
        _SPAN_DECISIONS.popitem(last=False)
    order = np.argsort(labels, kind="stable")
    labels = [labels[i] for i in order]
    decisions = [decisions[i] for i in order]
    judged = judged_f1(decisions[-1], decisions)
    per_type = dict.fromkeys(space.labels, 0)
    for row in data.targets:
        for span in row:
            per_type[span.label] = per_type.get(span.label, 0) + 1
    return stopping.curve_signal(
        labels,
        judged,
        len(space.labels),
        earlier,
        list(per_type.values()),
        metric=task.metric,
    )


INPUTS: dict[TaskKind, Inputs] = {TaskKind.CLASSIFICATION: classification, TaskKind.SPANS: spans}


def update(project: Project, space: Any, data: LabeledData) -> dict[str, Any]:
    """Compute the project's signal after a head round and store it; what was stored."""
    started = time.process_time()
    held = project.store.plateau() or {}
    same = held.get("labels_of") == list(space.labels)
    earlier = [(int(n), g) for n, g in held.get("history", [])] if same else []
    inputs = INPUTS.get(project.task.kind)
    result = (
        inputs(project, space, data, earlier)
        if inputs is not None
        else f"no stopping signal for {project.task.kind.value} projects yet"
    )
    stored: dict[str, Any] = {"labels_of": list(space.labels), "history": earlier}
    if isinstance(result, str):
        stored.update(signal=None, note=result)
    else:
        history = {n: g for n, g in earlier if n < result.labels}
        history[result.labels] = result.gain
        stored.update(
            signal=asdict(result),
            note=result.reason,
            history=sorted(history.items())[-HISTORY:],
        )
    stored["cpu_s"] = round(time.process_time() - started, 4)
    stored["at"] = time.time()
    project.store.set_plateau(stored)
    cost, note = stored["cpu_s"], stored["note"]
    log.info("project %s: stopping signal in %.2f CPU s: %s", project.key, cost, note)
    return stored


def summary(stored: dict[str, Any] | None) -> dict[str, Any]:
    """What ``/status`` shows of a project's stored signal: the verdict, the expected gain of
    the next ``HORIZON`` labels with its 80% interval, and how sure (the probability that
    they buy more than a point); ``verdict`` None (with a note) while there is none."""
    if stored is None:
        return {"verdict": None, "note": "computed after each round of the light head"}
    raw = stored.get("signal")
    if raw is None:
        return {"verdict": None, "note": stored.get("note", "")}
    signal = stopping.PlateauSignal(**raw)
    forecast = signal.gain is not None
    return {
        "verdict": signal.headline if forecast else None,
        "stop": signal.stop,
        "labels": signal.labels,
        "metric": signal.metric,
        "gain_per_100_labels": signal.gain,
        "gain_80_percent": [signal.gain_low, signal.gain_high] if forecast else None,
        "p_gain_over_a_point": signal.p_over_point,
        "note": signal.reason,
    }


def details(stored: dict[str, Any] | None) -> dict[str, Any]:
    """``summary`` and what the report plots: each version's estimated accuracy, the fitted
    curve, the rule in words and what the last computation cost."""
    out = {**summary(stored), "rule": stopping.RULE}
    raw = (stored or {}).get("signal")
    if raw is not None:
        for key in ("curve_labels", "curve_accuracy", "fit_labels", "fit_accuracy"):
            out[key] = raw.get(key, [])
        out["cpu_s"] = (stored or {}).get("cpu_s")
    return out
