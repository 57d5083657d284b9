"""What Label Studio adds to the background work: the ``sync`` lane (re-rank the project's
queue) and a re-read of its labels before training on START_TRAINING."""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from ls_backend.core.tasks import Progress
from ls_backend.jobs.lanes import Lane, Lanes
from ls_backend.jobs.training import TrainingLane
from ls_backend.labelstudio.client import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
)
from ls_backend.labelstudio.queue import QueueState
from ls_backend.labelstudio.sync import SYNC, Syncer, SyncTarget, webhook_check_due
from ls_backend.projects import CONNECTED, MODEL_TRAINED, SYNC_REQUESTED, Project, ProjectView
from ls_backend.settings import Settings
from ls_backend.store.annotations import LABEL_ACTIONS, SKIPPED

log = logging.getLogger(__name__)

SyncJob = Callable[[Project, Progress], dict[str, Any]]
Reread = Callable[[Project], int]


def sync_target(project: Project) -> SyncTarget:
    """The inputs a sync of ``project`` works with."""
    return SyncTarget(
        key=project.key,
        store=project.store,
        encoder=project.encoder,
        pacer=project.projects.pacer,
        config=project.config,
        model=project.model,
        adopt_config=project.setup,
    )


class SyncLane(Lane):
    """Ranks the project's unlabeled tasks and pushes the ranking to Label Studio's queue.
    A *forced* request (new tasks, ``POST /sync``, a first connect) pushes a new ranking;
    otherwise (a new model, new labels) the run pushes only when the queue needs it
    (``core.requeue``)."""

    name = SYNC
    threads = 2
    # Label Studio away (a restart, a 5xx): retried after 15, 30, 45 s, together longer than
    # a Label Studio restart.
    retries = 3
    retry_s = 15.0

    def __init__(self, job: SyncJob, settings: Settings) -> None:
        self.job, self.settings = job, settings

    def wake(self, project: Project, event: str) -> bool:
        store = project.store
        if event in ("TASKS_CREATED", SYNC_REQUESTED):
            forced = True
        elif event == MODEL_TRAINED:
            forced = False
        elif event == CONNECTED:
            # Rank a new project's queue once, even before any label (diversity alone); a
            # connect by a new URL looks for its webhook, and with auth on, (re)connecting
            # also gives a new webhook the header.
            if not store.lane_forced(self.name):
                forced = True
            elif webhook_check_due(store, periodic=self.settings.webhook_auth):
                forced = False
            else:
                return False
        else:
            return False
        store.want_lane(self.name, forced)
        return True

    def marker(self, project: ProjectView) -> int:
        return project.store.lane_wanted(self.name)

    def events_read(self, project: ProjectView) -> int | None:
        # New labels are counted after the last push's; a replaced ranking whose predictions
        # are not all deleted yet asks which tasks were labeled since it was pushed.
        state = QueueState.load(project.store)
        read = state.label_seq
        replaced = [ranking.pushed for ranking in state.rankings[:-1]]
        if replaced:
            read = min(read, project.store.first_seq_since(min(replaced)) - 1)
        return read

    def run(self, project: Project, progress: Progress) -> dict[str, Any]:
        return self.job(project, progress)

    def transient(self, exc: Exception) -> bool:
        return isinstance(exc, LabelStudioError) and not isinstance(exc, LabelStudioAuthError)


class RereadOnce:
    """START_TRAINING: re-read the labels from Label Studio once per request (the head and
    lora lanes both run it), and best effort: a Label Studio that fails to answer must not
    stop training on the labels already stored."""

    def __init__(self, reread: Reread) -> None:
        self.reread = reread
        self._lock = threading.Lock()

    def __call__(self, project: Project, progress: Progress) -> None:
        store = project.store
        with self._lock:
            requested = store.training_requested()
            if requested <= store.reread_done():
                return
            progress(0.0, "re-reading labeled tasks from Label Studio")
            try:
                log.info("project %s: re-read %d labeled tasks", project.key, self.reread(project))
            except Exception:
                log.warning(
                    "project %s: re-reading labels from Label Studio failed; training on the"
                    " stored ones:\n%s", project.key, traceback.format_exc(),
                )  # fmt: skip
            store.set_reread_done(requested)


def attach(lanes: Lanes, settings: Settings, job: SyncJob, reread: Reread) -> None:
    """Register the sync lane and the START_TRAINING re-read with ``lanes``."""
    lanes.add(SyncLane(job, settings))
    prepare = RereadOnce(reread)
    for lane in lanes:
        if isinstance(lane, TrainingLane):
            lane.prepare.append(prepare)


def attach_label_studio(lanes: Lanes, settings: Settings) -> None:
    """With LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY: queue ranking and re-reads, sharing
    one Label Studio client per process, created on first use."""
    syncers: list[Syncer] = []

    def syncer() -> Syncer:
        if not syncers:
            syncers.append(Syncer(LabelStudioClient.from_settings(settings), settings))
        return syncers[0]

    def sync(project: Project, progress: Progress) -> dict[str, Any]:
        return syncer()(sync_target(project), progress)

    def reread(project: Project) -> int:
        """Make the store match every labeled task Label Studio holds (read page by page,
        each written in short transactions while webhooks go on)."""
        upto = project.store.last_seq(LABEL_ACTIONS | {SKIPPED})
        tasks = syncer().client.labeled_tasks(int(project.key))
        read = project.store.replace_labeled((dict(task) for task in tasks), upto)
        if not read:
            log.warning(
                "project %s: Label Studio returned no labeled task; the stored labels stay",
                project.key,
            )
        return read

    attach(lanes, settings, sync, reread)
