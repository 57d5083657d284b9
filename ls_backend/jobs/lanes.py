"""Background work as lanes: each lane says which events wake it, what is pending and how
to run it; a scheduler (``jobs.threads`` in-process, ``jobs.rq`` on Redis) never names one.

What is pending lives in the project's durable store (the event log and what each lane last
did), so any process, after any restart, derives the same work; one run per project and lane
at a time holds the store's lock of that name and writes its status into the store. The
lanes: ``head`` and ``lora`` train (``jobs.training``), ``sync`` re-ranks Label Studio's queue
(``jobs.sync``).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ls_backend import metrics
from ls_backend.core.priority import BACKGROUND_NICENESS
from ls_backend.core.tasks import NotEnoughLabels, Progress
from ls_backend.projects import Project, ProjectView
from ls_backend.store.annotations import AnnotationStore
from ls_backend.store.pointer import StoreAddress

log = logging.getLogger(__name__)


class Lane:
    """One kind of background work. Subclasses set ``name`` and say what wakes them
    (``wake``), what a run covers (``marker``) and how to run (``run``)."""

    name: ClassVar[str]
    #: Threads the in-process scheduler gives the lane, shared by every project: the bound on
    #: what background work holds however many projects there are.
    threads: ClassVar[int] = 1
    #: The event a finished run sends to every lane.
    emits: ClassVar[str | None] = None
    #: A run that fails ``transient``-ly is retried by itself this often, after ``retry_s``,
    #: ``2 * retry_s``, ... ; other failures count as handled (the next event retries).
    retries: ClassVar[int] = 0
    retry_s: ClassVar[float] = 0.0
    #: A run that produced something is followed by the project's retention (``retain``).
    retains: ClassVar[bool] = False
    #: Longest a run may take on an RQ worker before it is stopped.
    timeout_s: ClassVar[int] = 3600
    #: Niceness of the threads that run the lane in-process (``core.priority``): background
    #: work leaves the cores to Label Studio and to our requests when they want them.
    niceness: ClassVar[int] = BACKGROUND_NICENESS

    def wake(self, project: Project, event: str) -> bool:
        """Whether ``event`` gives this lane work; a lane may record what it wants durably."""
        return False

    def marker(self, project: ProjectView) -> int:
        """What a run covers: a run marks everything up to this done."""
        raise NotImplementedError

    def done(self, project: ProjectView) -> int:
        return project.store.lane_done(self.name)

    def pending(self, project: ProjectView) -> bool:
        """Whether a run has work; reads the store only (a read-only view will do)."""
        return self.marker(project) > self.done(project)

    def events_read(self, project: ProjectView) -> int | None:
        """The logged events this lane still reads are those numbered after this (None: it
        reads none). Older ones may be deleted (``retain``)."""
        return None

    def hold(self, project: Project) -> float:
        """Seconds before the next run may start, though work is pending (0: now)."""
        return 0.0

    def run(self, project: Project, progress: Progress) -> dict[str, Any]:
        raise NotImplementedError

    def transient(self, exc: Exception) -> bool:
        return False


class Lanes:
    """The registered lanes, by name: schedulers iterate them, adapters add theirs."""

    def __init__(self, lanes: list[Lane] | None = None) -> None:
        self._lanes: dict[str, Lane] = {}
        for lane in lanes or []:
            self.add(lane)

    def add(self, lane: Lane) -> None:
        self._lanes[lane.name] = lane

    def __getitem__(self, name: str) -> Lane:
        return self._lanes[name]

    def __iter__(self) -> Iterator[Lane]:
        return iter(list(self._lanes.values()))

    def names(self) -> list[str]:
        return list(self._lanes)

    def woken_by(self, project: Project, event: str) -> list[str]:
        return [lane.name for lane in self if lane.wake(project, event)]


#: Logged events younger than this stay whatever the lanes have read: a full read of Label
#: Studio replays the events that came while it ran, the queue counts who labeled lately.
EVENTS_KEPT_S = 86400.0


def retain(project: Project, lanes: Lanes, keep_versions: int) -> dict[str, int]:
    """The project's retention, after a round: versions that neither serve, nor are among the
    newest ``keep_versions``, nor were promoted are deleted (under the registry's lock); logged
    events that every lane reading events has read, older than EVENTS_KEPT_S, are deleted but
    the newest of each action. Returns how many of each went."""
    with project.registry.lock():
        versions = project.registry.prune(keep_versions)
    read = [n for n in (lane.events_read(project) for lane in lanes) if n is not None]
    events = 0
    if read:
        events = project.store.prune_events(min(read), time.time() - EVENTS_KEPT_S)
    if versions or events:
        log.info(
            "project %s: %d old versions and %d old events deleted",
            project.key, len(versions), events,
        )  # fmt: skip
    return {"versions": len(versions), "events": events}


# --- one run, whichever scheduler runs it ----------------------------------------------------


@dataclass
class JobStatus:
    project: str
    lane: str
    state: str = "idle"  # idle | queued | running | done | failed
    progress: float = 0.0
    stage: str = ""
    runs: int = 0
    failures: int = 0  # consecutive failed runs
    retries: int = 0  # transient failures of the request now being retried
    last_error: str | None = None
    last_result: dict[str, Any] | None = None
    started: float | None = None
    finished: float | None = None
    pid: int | None = None  # of the process running or last to run it

    @property
    def produced(self) -> bool:
        """The last run did its work (not failed, not skipped for too few labels)."""
        return self.state == "done" and "skipped" not in (self.last_result or {})


@dataclass
class ProgressRecord:
    """Writes a run's progress into the store; picklable, so a child process reports too (it
    opens the store again)."""

    address: StoreAddress
    status: JobStatus
    store: AnnotationStore | None = field(default=None, compare=False)

    def __call__(self, fraction: float, stage: str) -> None:
        self.status.progress, self.status.stage = round(fraction, 3), stage
        self.store = self.store or self.address.open()
        self.store.set_lane_status(self.status.lane, asdict(self.status))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "store": None}  # connections do not cross processes


def read_status(project: ProjectView, lane: str) -> JobStatus:
    stored = project.store.lane_status(lane)
    try:
        return JobStatus(**stored) if stored else JobStatus(project.key, lane)
    except TypeError:  # written by another version of JobStatus
        return JobStatus(project.key, lane)


def shown_status(project: ProjectView, lane: Lane) -> JobStatus:
    """The lane's last run as /status shows it: ``queued`` when work waits and no run is in
    flight, unless the last run failed and is to be retried (the failure is the news)."""
    status = read_status(project, lane.name)
    if status.state != "running" and not status.retries and lane.pending(project):
        status.state = "queued"
    return status


def lane_lock(project: Project, lane: Lane) -> AbstractContextManager[bool]:
    """Whether this process may run ``lane`` for ``project`` now (one run at a time)."""
    return project.store.database.lock(lane.name, wait=False)


def run_once(project: Project, lane: Lane) -> JobStatus:
    """One run of ``lane`` (the caller holds its lock), its status kept current; the
    status says whether it is to be retried (``retries``) and whether it produced something
    (``produced``). Never raises for the run's own failures: a failed run must never take
    serving down."""
    seen = lane.marker(project)
    status = read_status(project, lane.name)
    status.state, status.started, status.finished = "running", time.time(), None
    status.pid = os.getpid()
    progress = ProgressRecord(project.address, status, project.store)
    progress(0.0, "starting")
    started = time.monotonic()
    outcome, transient = "done", False
    try:
        status.last_result = lane.run(project, progress)
        status.last_error = None
    except NotEnoughLabels as exc:
        status.last_result = {"skipped": str(exc)}
    except Exception as exc:
        outcome, transient = "failed", lane.transient(exc)
        status.last_error = f"{type(exc).__name__}: {exc}"
        log.error("%s run, project %s, failed:\n%s", lane.name, project.key, traceback.format_exc())
    status.failures = status.failures + 1 if outcome == "failed" else 0
    # Failed runs count as handled: the next event retries, a bad input does not loop.
    # Except a transient failure (Label Studio away): that one comes back by itself.
    retry = transient and status.retries < lane.retries
    status.retries = status.retries + 1 if retry else 0  # each new request: a fresh budget
    if not retry:
        project.store.set_lane_done(lane.name, seen)
    status.state, status.runs, status.finished = outcome, status.runs + 1, time.time()
    status.progress = 1.0
    project.store.set_lane_status(lane.name, asdict(status))
    metrics.record_run(lane.name, outcome, time.monotonic() - started)
    return status
