"""Sync: fetch a project's tasks -> embed -> predict -> rank -> push the order to Label Studio.

Label Studio serves the next task by *uncertainty sampling* over the predictions of
``project.model_version``, lowest ``score`` first (LABEL_STUDIO.md 5.1). So a sync pushes
one prediction per unlabeled task under a new ranking version: the real pre-annotation
(with its confidence and uncertainty inside the result item) and ``score`` = priority.
The bulk endpoint drops ``cluster``, so batch diversity lives in the order itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ls_backend.core.ranking import rank_pool
from ls_backend.core.training import Progress
from ls_backend.labelstudio.client import LabelStudioClient, PredictionItem
from ls_backend.labelstudio.config import TaskError
from ls_backend.labelstudio.events import LABEL_ACTIONS, SKIPPED
from ls_backend.settings import Settings

if TYPE_CHECKING:  # the service calls into this adapter; it does not import the service
    from ls_backend.service import Project

log = logging.getLogger(__name__)

#: Ranking versions kept in Label Studio besides the current one (older ones are deleted).
KEEP_RANKINGS = 1


def priorities(n: int) -> np.ndarray:
    """Queue position -> a score in (0, 1): Label Studio serves the lowest first and
    silently drops scores outside [0, 1]."""
    return (np.arange(n, dtype=np.float64) + 1.0) / (n + 1.0)


def sync_project(
    project: Project,
    client: LabelStudioClient,
    settings: Settings,
    progress: Progress | None = None,
) -> dict[str, Any]:
    report = progress or (lambda _fraction, _stage: None)
    project_id = int(project.key)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str, fraction: float) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now
        report(fraction, stage)

    report(0.0, "fetch")
    label_config = client.get_project(project_id).get("label_config")
    if label_config:
        project.setup(label_config)
    config = project.config()
    ids, texts, labeled = [], [], []
    unreadable = 0
    for task in client.iter_tasks(project_id):
        try:
            texts.append(config.text_of(task))
        except TaskError:
            unreadable += 1
            continue
        ids.append(task["id"])
        labeled.append(bool(task["annotations"]))
    lap("fetch", 0.2)
    if unreadable:
        log.warning("project %s: %d tasks lack the text field; not ranked", project_id, unreadable)

    embeddings = project.backend.encoder.encode(texts, progress=True)
    lap("embed", 0.5)
    # Only unlabeled tasks get a prediction (MC-dropout passes are the costly part with an
    # adapter); labeled rows stay in the pool for diversity, their zeros are never read.
    is_labeled = np.asarray(labeled, dtype=bool)
    unlabeled_idx = np.flatnonzero(~is_labeled)
    scored = project.score([texts[i] for i in unlabeled_idx], embeddings[unlabeled_idx])
    probs = np.zeros((len(ids), *scored.probs.shape[1:]), dtype=scored.probs.dtype)
    probs[unlabeled_idx] = scored.probs
    scores = np.zeros(len(ids))
    scores[unlabeled_idx] = scored.uncertainty
    result_of = dict(zip(unlabeled_idx.tolist(), scored.results, strict=True))
    lap("predict", 0.7)

    order = rank_pool(
        settings.strategy,
        probs if scored.model.kind != "prototype" else None,
        embeddings,
        np.flatnonzero(is_labeled).astype(np.int64),
        multi_label=scored.model.space.multi_label,
        scores=scores,
    )
    lap("rank", 0.75)

    version = f"rank-{scored.model.version}-{time.strftime('%Y%m%dT%H%M%S')}"
    items: list[PredictionItem] = [
        {
            "task": ids[row],
            "result": result_of[int(row)]["result"],
            "score": float(priority),
            "model_version": version,
        }
        for row, priority in zip(order, priorities(len(order)), strict=True)
    ]
    created = client.import_predictions(project_id, items) if items else 0
    client.set_queue(project_id, version)
    lap("push", 1.0)

    _forget_old_rankings(project, client, version)
    log.info(
        "project %s: ranked %d unlabeled of %d tasks as %s (%s)",
        project_id,
        len(order),
        len(ids),
        version,
        ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()),
    )
    return {
        "ranking_version": version,
        "model_version": scored.model.version,
        "tasks": len(ids),
        "ranked": len(order),
        "pushed": created,
        "unreadable": unreadable,
        "seconds": timings,
    }


def _forget_old_rankings(project: Project, client: LabelStudioClient, current: str) -> None:
    """Delete older ranking versions in the background: Label Studio takes ~2 minutes per
    10k predictions, and ignores them meanwhile (only the project's version counts)."""
    store = project.store
    history = [v for v in (store.meta("rankings") or "").split() if v]
    history.append(current)
    stale, keep = history[: -1 - KEEP_RANKINGS], history[-1 - KEEP_RANKINGS :]
    store.set_meta("rankings", " ".join(keep))

    def delete() -> None:
        for version in stale:
            try:
                client.delete_model_version(int(project.key), version)
            except Exception as exc:  # best effort: an old ranking left behind is harmless
                log.warning(
                    "could not delete ranking %s of project %s: %s", version, project.key, exc
                )

    if stale:
        threading.Thread(target=delete, name=f"forget-{project.key}", daemon=True).start()


def label_studio_jobs(
    settings: Settings,
) -> tuple[Callable[[Project, Progress], dict[str, Any]], Callable[[Project], int]]:
    """The worker's sync lane and the START_TRAINING re-read, sharing one Label Studio client
    per process, created on first use."""
    clients: list[LabelStudioClient] = []

    def client() -> LabelStudioClient:
        if not clients:
            clients.append(LabelStudioClient.from_settings(settings))
        return clients[0]

    def sync(project: Project, progress: Progress) -> dict[str, Any]:
        return sync_project(project, client(), settings, progress)

    def reread(project: Project) -> int:
        """Make the store match every labeled task Label Studio holds."""
        upto = project.store.last_seq(LABEL_ACTIONS | {SKIPPED})
        tasks = client().labeled_tasks(int(project.key))
        project.store.replace_labeled([dict(task) for task in tasks], upto)
        return len(tasks)

    return sync, reread
