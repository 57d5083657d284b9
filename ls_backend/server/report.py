"""A project's report: what the admin's dashboard, ``GET /projects/{id}/report`` and
``ls-backend report`` show. Gathers the project's versions, labels, task mirror and queue,
and hands the maths to ``core.report``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ls_backend.core import report as core
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import LabelSpace
from ls_backend.core.model import ModelVersion
from ls_backend.core.spans import quality
from ls_backend.core.spans.quality import OutOfFold, out_of_fold
from ls_backend.core.spans.task import Spans
from ls_backend.core.spans.types import SpanLabelSpace
from ls_backend.core.task_registry import task_of
from ls_backend.core.tasks import LabeledData, TaskKind
from ls_backend.jobs.stopping import STOP_VERSIONS, stop_set
from ls_backend.jobs.stopping import details as plateau_details
from ls_backend.labelstudio.config import TaskError
from ls_backend.labelstudio.queue import QueueState
from ls_backend.projects import Project, ProjectView

#: Tasks of the queue, and suspected mislabels, the report lists; characters of text shown.
QUEUE_SHOWN = 20
SUSPECTS_SHOWN = 20
TEXT_SHOWN = 200
#: Fewest labels before annotations are judged out of fold.
SUSPECT_MIN_LABELS = 10

WHY = {
    "uncertain": "the model is unsure of it",
    "explore": "exploration: a typical task from a region the labels have not covered yet",
    "near_duplicate": "moved down: nearly the same text as a task ranked above it",
    "diversity": "diversity: far from every labeled task (no trained model yet)",
    "random": "random order (STRATEGY=random)",
}


class QueueItem(BaseModel):
    position: int = Field(description="1 = what Label Studio serves next")
    task_id: int
    text: str = Field(description=f"the task's text, cut to {TEXT_SHOWN} characters")
    predicted: str = Field(description="the pre-annotation pushed with the ranking")
    uncertainty: float | None = Field(description="what the task was ranked by (higher: less sure)")
    reason: str = Field(description="uncertain | explore | near_duplicate | diversity | random")
    why: str
    url: str | None = Field(description="the task in Label Studio, when LABEL_STUDIO_URL is set")


class SuspectItem(BaseModel):
    task_id: int
    annotation_id: int
    text: str = Field(description="the task's text (span projects: around the region)")
    given: str
    predicted: str = Field(description="the out-of-fold model's label")
    quality: float = Field(description="out-of-fold probability of the given label")
    issue: bool = Field(description="cleanlab's confident learning flags it")
    url: str | None
    region: str | None = Field(
        default=None, description="span projects: the region's text (the suspect is a region)"
    )
    start: int | None = Field(default=None, description="the region's character offsets")
    end: int | None = None
    confidence: float | None = Field(
        default=None, description="out-of-fold probability of the suggested label"
    )


@dataclass
class LabelFigures:
    """What the report shows of a project's labels, as its kind of task computes it."""

    distribution: dict[str, int]
    confusions: list[core.Confusion] = field(default_factory=list)
    confusions_note: str = ""
    suspects: list[SuspectItem] = field(default_factory=list)
    suspects_note: str = ""


class ProjectReport(BaseModel):
    project: str
    model_version: str | None
    pinned: bool = Field(
        description="a rollback pinned the serving version: new versions train but do not "
        "serve until the pin is lifted"
    )
    annotations: int = Field(description="stored annotations, skips included")
    labels: int = Field(description="usable labels (what a training round sees)")
    tasks: int = Field(description="tasks in the mirror of Label Studio")
    jobs: dict[str, dict[str, Any]] = Field(description="per lane, as on /status")
    learning_curve: list[core.CurvePoint]
    gain_per_100_labels: float | None = Field(
        description="held-out accuracy gained per 100 labels, latest versions of one kind"
    )
    label_distribution: dict[str, int]
    metric: str = Field(
        description="the task's headline metric (accuracy; entity F1 for span projects): "
        "what learning_curve's 'accuracy' and the gains are figures of"
    )
    confusions: list[core.Confusion] = Field(description="out-of-fold: given -> predicted")
    confusions_note: str = ""
    suspects: list[SuspectItem]
    suspects_note: str
    queue: list[QueueItem]
    queue_version: str | None = Field(description="the ranking version Label Studio serves")
    queue_note: str
    plateau: dict[str, Any] = Field(
        description="the stopping signal (after each head round): 'verdict' (stop: more "
        "labels are unlikely to buy more than a point / keep labeling), the expected gain "
        "of the next 100 labels with its 80% interval, the probability that they buy more "
        "than a point, each version's estimated accuracy and the fitted curve"
    )
    stopping: core.StopSignal | None = Field(description="stabilizing predictions (kappa)")
    stopping_note: str
    label_studio_url: str | None
    warnings: list[str] = Field(
        default_factory=list, description="what keeps the project from learning, and the fix"
    )


def project_warnings(project: ProjectView) -> list[str]:
    """What the admin must fix for the project to learn (its webhook in Label Studio)."""
    problem = project.store.webhook_problem()
    return [problem] if problem else []


def task_url(base: str | None, project: str, task_id: int) -> str | None:
    return f"{base.rstrip('/')}/projects/{project}/data?task={task_id}" if base else None


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_SHOWN else text[: TEXT_SHOWN - 1] + "…"


def build_report(project: Project, jobs: dict[str, dict[str, Any]]) -> ProjectReport:
    """Everything the dashboard shows about ``project`` (raises ConfigError before /setup)."""
    settings = project.settings
    base = settings.label_studio_url
    config = project.config()
    space, data, _skipped = project.labeled_data()
    registry = project.registry
    serving = registry.current()
    pinned = registry.pinned() is not None
    infos = [registry.info(v) for v in registry.versions()]  # the ones still on disk
    curve = core.learning_curve(registry.history(), serving)  # the pruned ones' figures too

    kind = KINDS.get(config.kind)
    if kind is None:
        figures = LabelFigures({}, suspects_note=f"not computed for {config.kind} projects")
        stopping, stopping_note = None, f"not computed for {config.kind} projects"
    else:
        figures = kind.labels(project, space, data)
        stopping, stopping_note = kind.stabilizing(project, space, infos, config)
    queue, queue_version, queue_note = _queue(project, base)
    return ProjectReport(
        project=project.key,
        model_version=serving,
        pinned=pinned,
        annotations=project.store.count("annotations"),
        labels=len(data),
        tasks=project.store.count("tasks"),
        jobs=jobs,
        learning_curve=curve,
        gain_per_100_labels=core.gain_per_100_labels(curve),
        metric=project.task.metric,
        label_distribution=figures.distribution,
        confusions=figures.confusions,
        confusions_note=figures.confusions_note,
        suspects=figures.suspects,
        suspects_note=figures.suspects_note,
        queue=queue,
        queue_version=queue_version,
        queue_note=queue_note,
        plateau=plateau_details(project.store.plateau()),
        stopping=stopping,
        stopping_note=stopping_note,
        label_studio_url=base,
        warnings=project_warnings(project),
    )


def _class_counts(space: LabelSpace, targets: Any) -> dict[str, int]:
    """Labels per class."""
    return (
        core.label_distribution(space, targets) if len(targets) else dict.fromkeys(space.labels, 0)
    )


def _span_counts(space: SpanLabelSpace, targets: list[list[Any]]) -> dict[str, int]:
    """Labeled regions per entity type."""
    counts = dict.fromkeys(space.labels, 0)
    for row in targets:
        for span in row:
            counts[span.label] = counts.get(span.label, 0) + 1
    return counts


def _classification_labels(project: Project, space: LabelSpace, data: LabeledData) -> LabelFigures:
    """Labels per class; confusions and suspected mislabels from 5-fold out-of-fold
    probabilities of the light head (single-label projects)."""
    figures = LabelFigures(_class_counts(space, data.targets))
    if space.multi_label:
        figures.suspects_note = "not computed for multi-label projects"
        return figures
    if len(data) < SUSPECT_MIN_LABELS or np.unique(data.targets).size < 2:
        figures.suspects_note = f"needs {SUSPECT_MIN_LABELS} labels of at least 2 classes"
        return figures
    base = project.settings.label_studio_url
    probs = core.out_of_fold_probs(space, data.embeddings, data.targets, project.settings.head_c)
    figures.confusions = core.confusions(space, data.targets, probs)
    found = core.suspected_mislabels(space, data.targets, probs, SUSPECTS_SHOWN)
    figures.suspects = [
        SuspectItem(
            task_id=data.strata_keys[s.index],
            annotation_id=data.keys[s.index],
            text=_cut(data.texts[s.index]),
            given=s.given,
            predicted=s.predicted,
            quality=round(s.quality, 4),
            issue=s.issue,
            url=task_url(base, project.key, data.strata_keys[s.index]),
        )
        for s in found
    ]
    flagged = sum(s.issue for s in found)
    figures.suspects_note = (
        f"{len(data)} labels judged by {core.OOF_FOLDS}-fold out-of-fold predictions of the "
        f"light head; {flagged} of the {len(found)} shown flagged by confident learning"
    )
    return figures


#: Out-of-fold span predictions by (project, a digest of its labels): 5 head fits each
#: (seconds at 1,000 sentences), so a dashboard reloaded between labels does not refit.
_SPAN_OOF: OrderedDict[tuple[str, str], OutOfFold] = OrderedDict()
_SPAN_OOF_KEPT = 8


def _span_oof(project: Project, space: SpanLabelSpace, data: LabeledData) -> OutOfFold:
    task = project.task
    assert isinstance(task, Spans)
    digest = hashlib.blake2b(digest_size=16)
    for key, text, spans in zip(data.keys, data.texts, data.targets, strict=True):
        digest.update(f"{key}\x00{text}\x00{[s.key() for s in spans]}\x01".encode())
    cache_key = (project.key, digest.hexdigest())
    found = _SPAN_OOF.get(cache_key)
    if found is None:
        found = out_of_fold(space, task.source.vectors(data.texts), data.targets)
        _SPAN_OOF[cache_key] = found
        while len(_SPAN_OOF) > _SPAN_OOF_KEPT:
            _SPAN_OOF.popitem(last=False)
    return found


def _excerpt(text: str, start: int, end: int) -> str:
    """``TEXT_SHOWN`` characters around ``text[start:end]``."""
    if len(text) <= TEXT_SHOWN:
        return text
    room = max(TEXT_SHOWN - (end - start), 0) // 2
    begin = max(0, min(start - room, len(text) - TEXT_SHOWN))
    stop = begin + TEXT_SHOWN
    return ("…" if begin else "") + text[begin:stop] + ("…" if stop < len(text) else "")


def _span_labels(project: Project, space: SpanLabelSpace, data: LabeledData) -> LabelFigures:
    """Labeled regions per entity type; confusions between types and suspected mislabeled
    regions from 5-fold out-of-fold predictions of the light span head."""
    figures = LabelFigures(_span_counts(space, data.targets))
    entities = sum(1 for row in data.targets if row)
    if len(data) < SUSPECT_MIN_LABELS or entities < 2:
        need = f"needs {SUSPECT_MIN_LABELS} labeled sentences, 2 of them with an entity"
        figures.suspects_note = figures.confusions_note = need
        return figures
    oof = _span_oof(project, space, data)
    found = quality.type_confusions(oof.predicted, data.targets)
    figures.confusions = [core.Confusion(g, p, n) for g, p, n in found.pairs]
    figures.confusions_note = (
        f"out-of-fold regions against the labeled ones: {found.correct} right, "
        f"{found.other_type} of another type, {found.boundary} at other offsets, "
        f"{found.missed} missed, {found.spurious} spurious"
    )
    suspects = quality.suspected_spans(space, data.targets, oof, SUSPECTS_SHOWN)
    base = project.settings.label_studio_url
    figures.suspects = [
        SuspectItem(
            task_id=data.strata_keys[s.index],
            annotation_id=data.keys[s.index],
            text=_excerpt(data.texts[s.index], s.start, s.end),
            given=s.given,
            predicted=s.suggested,
            quality=round(s.quality, 4),
            issue=s.issue,
            url=task_url(base, project.key, data.strata_keys[s.index]),
            region=data.texts[s.index][s.start : s.end],
            start=s.start,
            end=s.end,
            confidence=round(s.confidence, 4),
        )
        for s in suspects
    ]
    flagged = sum(s.issue for s in suspects)
    figures.suspects_note = (
        f"{len(data)} labeled sentences judged by {quality.FOLDS}-fold out-of-fold "
        "predictions of the light span head; a region is suspect when the model prefers "
        f"another type or no entity; {flagged} of the {len(suspects)} shown flagged by "
        "confident learning on their words"
    )
    return figures


def _queue(project: Project, base: str | None) -> tuple[list[QueueItem], str | None, str]:
    """The pushed ranking's tasks nobody has labeled or skipped yet, in the order Label Studio
    serves them (lowest score = earliest position first)."""
    ranking = QueueState.load(project.store).serving
    if ranking is None:
        note = (
            "no ranking pushed yet: Label Studio serves its own order"
            if project.settings.sync_configured
            else "sync is off (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY): "
            "Label Studio serves its own order"
        )
        return [], None, note
    touched = project.store.touched_tasks()
    waiting = [i for i, t in enumerate(ranking.tasks) if t not in touched][:QUEUE_SHOWN]
    data = project.store.task_data([ranking.tasks[i] for i in waiting])
    config = project.config()
    items: list[QueueItem] = []
    for i in waiting:
        task_id = ranking.tasks[i]
        try:
            text = config.text_of({"id": task_id, "data": data.get(task_id, {})})
        except TaskError:
            text = ""
        reason = ranking.reasons[i] if i < len(ranking.reasons) else "uncertain"
        items.append(
            QueueItem(
                position=len(items) + 1,
                task_id=task_id,
                text=_cut(text),
                predicted=ranking.labels[i] if i < len(ranking.labels) else "",
                uncertainty=ranking.uncertainty[i] if i < len(ranking.uncertainty) else None,
                reason=reason,
                why=WHY.get(reason, reason),
                url=task_url(base, project.key, task_id),
            )
        )
    left = len(ranking.tasks) - len(touched.intersection(ranking.tasks))
    note = (
        f"{left} of the {len(ranking.tasks)} tasks pushed are still waiting; once they are "
        "used up Label Studio serves the rest at random until the next push"
    )
    return items, ranking.version, note


@lru_cache(maxsize=64)
def _load(path: Path, version: str) -> ModelVersion:
    """A saved version (never changed once written), loaded once per process."""
    return ModelVersion.load(path, version)


def _stopping(
    project: Project, space: LabelSpace, infos: list[dict[str, Any]], config: Any
) -> tuple[core.StopSignal | None, str]:
    """Stabilizing predictions over the light head's successive versions (refitted on every
    label: the model whose changes follow the labels; adapters train too seldom to compare)."""
    heads = [i for i in infos if i.get("kind") == ModelKind.HEAD][-STOP_VERSIONS:]
    if len(heads) < 2:
        return None, "needs at least two trained versions of the light head"
    # Only tasks already embedded (a sync embeds them all): the report never waits for the
    # encoder, which training and syncs keep busy.
    rows, embeddings = project.encoder.cached(stop_set(project, config))
    if not rows:
        return None, "no stop set yet: the sync has not embedded the project's tasks"
    versions, labels, decisions = [], [], []
    for info in heads:
        model = _load(project.registry.path(info["version"]), info["version"])
        if model.space != space:
            continue  # another label config: its predictions do not compare
        probs = model.head.predict_proba(embeddings)
        chosen = (probs[:, :, 0] >= 0.5) if space.multi_label else probs[:, :, 0].argmax(axis=1)
        versions.append(info["version"])
        labels.append(int(info.get("labels", 0)))
        decisions.append(np.asarray(chosen, dtype=np.int64))
    if len(versions) < 2:
        return None, "needs at least two trained versions of the light head"
    signal = core.stabilizing_predictions(versions, labels, decisions)
    rule = (
        f"mean Cohen's kappa of the last {signal.window} successive light-head versions on "
        f"{len(rows)} tasks >= {signal.threshold}"
    )
    if signal.mean_recent is None:
        note = f"too early to tell: the rule ({rule}) needs {signal.window + 1} versions"
    elif signal.stop:
        note = (
            f"Predictions have stabilized (kappa {signal.mean_recent:.3f}; rule: {rule}): "
            "more labels are unlikely to change the model much. Consider stopping, or "
            "labeling only to fix suspected mislabels."
        )
    else:
        note = (
            f"Still learning: successive versions agree at kappa {signal.mean_recent:.3f}, "
            f"below the {signal.threshold} of the rule ({rule}). More labels still change "
            "the model."
        )
    return signal, note


def _part_counts(space: Any, targets: Any) -> dict[str, int]:
    """Several controls: ``<control>: <label>`` counts, each part as its kind counts."""
    counts: dict[str, int] = {}
    for j, part in enumerate(space.parts):
        own = [t[j] for t in targets if t[j] is not None]
        found = KINDS[part.kind].distribution(
            part.space, task_of(part.kind).targets(part.space, own)
        )
        counts.update({f"{part.name}: {label}": n for label, n in found.items()})
    return counts


def _multi_labels(project: Project, space: Any, data: LabeledData) -> LabelFigures:
    note = "not computed for projects with several controls yet"
    return LabelFigures(_part_counts(space, data.targets), suspects_note=note)


def _no_stabilizing(
    project: Project, space: Any, infos: list[dict[str, Any]], config: Any
) -> tuple[core.StopSignal | None, str]:
    return None, (
        "kappa over class decisions is for classification; the stopping signal above "
        "judges span projects by entity F1"
    )


def _not_yet(
    project: Project, space: Any, infos: list[dict[str, Any]], config: Any
) -> tuple[core.StopSignal | None, str]:
    return None, "not computed for projects with several controls yet"


@dataclass(frozen=True)
class ReportKind:
    """What a kind of task puts in the report: its labels' figures and the stabilizing
    predictions signal (None with a note where it has none)."""

    labels: Callable[[Project, Any, LabeledData], LabelFigures]
    stabilizing: Callable[
        [Project, Any, list[dict[str, Any]], Any], tuple[core.StopSignal | None, str]
    ]
    distribution: Callable[[Any, Any], dict[str, int]]  # (space, targets): labels per class


#: One entry per kind of task (``core.task_registry``); a kind without one gets notes.
KINDS: dict[TaskKind, ReportKind] = {
    TaskKind.CLASSIFICATION: ReportKind(_classification_labels, _stopping, _class_counts),
    TaskKind.SPANS: ReportKind(_span_labels, _no_stabilizing, _span_counts),
    TaskKind.MULTI: ReportKind(_multi_labels, _not_yet, _part_counts),
}
