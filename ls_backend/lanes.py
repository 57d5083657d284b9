"""Background work as lanes: each lane says which events wake it, what is pending and how
to run it; a scheduler (``worker.Worker`` in-process, ``rq_jobs`` on Redis) never names one.

What is pending lives in the project's durable store (the event log and a ``<lane>_done``
marker), so any process, after any restart, derives the same work; one run per project and
lane at a time holds the store's lock of that name and writes its status into the store. Two
lanes train: ``head`` (the light head, after every annotation) and ``lora`` (the adapter, every
``LORA_EVERY`` annotations or on START_TRAINING); the Label Studio adapter registers ``sync``
(``labelstudio.lane``).
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ls_backend import metrics
from ls_backend.core.labels import Embeddings, LabelSpace
from ls_backend.core.model import ModelVersion
from ls_backend.core.training import (
    LabeledData,
    NotEnoughLabels,
    Progress,
    RoundConfig,
    RoundResult,
    run_round,
)
from ls_backend.databases import StoreUnavailable
from ls_backend.labelstudio.events import (
    LABEL_ACTIONS,
    AnnotationStore,
    StoreAddress,
    project_registry,
)
from ls_backend.settings import Settings

if TYPE_CHECKING:  # the service holds the lanes; lanes take its projects
    from ls_backend.service import Project

log = logging.getLogger(__name__)

# Events a lane may wake on, besides Label Studio's webhook actions (``events.KNOWN_ACTIONS``).
#: Label Studio called /setup for the project.
CONNECTED = "PROJECT_CONNECTED"
#: The project's label config now has another label set.
LABEL_SPACE_CHANGED = "LABEL_SPACE_CHANGED"
#: ``POST /sync/{project}``: an admin asks for a new ranking now.
SYNC_REQUESTED = "SYNC_REQUESTED"
#: A training lane finished a round (promoted or not).
MODEL_TRAINED = "MODEL_TRAINED"
TRAINING_EVENTS = LABEL_ACTIONS | {"START_TRAINING", LABEL_SPACE_CHANGED}

#: LoRA runs in a child process at this niceness: requests get the CPU first.
CHILD_NICENESS = 10
T = TypeVar("T")


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
    #: Longest a run may take on an RQ worker before it is stopped.
    timeout_s: ClassVar[int] = 3600

    def wake(self, project: Project, event: str) -> bool:
        """Whether ``event`` gives this lane work; a lane may record what it wants durably."""
        return False

    def marker(self, project: Project) -> int:
        """What a run covers: a run marks everything up to this done."""
        raise NotImplementedError

    def done(self, project: Project) -> int:
        return int(project.store.meta(f"{self.name}_done") or 0)

    def pending(self, project: Project) -> bool:
        return self.marker(project) > self.done(project)

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


# --- training lanes ------------------------------------------------------------------------


def follow_parent(poll_s: float = 1.0) -> None:
    """In a child process: exit when the parent goes (stopped by gunicorn, killed), so an
    orphaned LoRA run never trains beside the one a new server starts."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def isolated_round(
    address: StoreAddress,
    space: LabelSpace,
    data: LabeledData,
    config: RoundConfig,
    device: str,
    progress: Progress,
    label_embeddings: Embeddings | None = None,
) -> RoundResult:
    """A LoRA round as run in a child process: it opens the project's store and loads the
    serving model itself."""
    os.nice(CHILD_NICENESS)
    follow_parent()
    registry = project_registry(address.project_dir, address.open())

    def current() -> ModelVersion | None:
        version = registry.current()
        return ModelVersion.load(registry.path(version), version, device) if version else None

    return run_round("lora", registry, space, data, current, config, progress, label_embeddings)


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a fresh process; a killed child raises BrokenProcessPool here."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


#: Runs before a training round, e.g. a re-read of Label Studio's labels on START_TRAINING.
Prepare = Callable[["Project", Progress], None]


class TrainingLane(Lane):
    """Trains a model of the lane's kind on every stored label; a new version serves only when
    the evaluation says so (``core.training.run_round``)."""

    emits = MODEL_TRAINED
    # A full disk or an unreachable database goes away without anyone restarting anything.
    retries = 6
    retry_s = 2.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prepare: list[Prepare] = []

    def transient(self, exc: Exception) -> bool:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return full or isinstance(exc, StoreUnavailable)

    def wake(self, project: Project, event: str) -> bool:
        return event in TRAINING_EVENTS

    def marker(self, project: Project) -> int:
        return project.store.last_seq(LABEL_ACTIONS | {"START_TRAINING"})

    def run(self, project: Project, progress: Progress) -> dict[str, Any]:
        for step in self.prepare:
            step(project, progress)
        space, data, skipped = project.labeled_data()
        if skipped:
            log.warning(
                "project %s: %d annotations have no usable choice or text; trained without them",
                project.key, skipped,
            )  # fmt: skip
        metrics.LABELS_SEEN.labels(project.key).set(len(data))
        if len(data) < self.settings.head_min_labels:
            needed = self.settings.head_min_labels
            raise NotEnoughLabels(f"{len(data)} labels; the head needs {needed}")
        result = self.train(project, space, data, progress)
        log.info(
            "project %s: %s round -> %s (%s: %s)",
            project.key,
            self.name,
            result.version,
            "promoted" if result.promoted else "kept",
            result.reason,
        )
        return {**asdict(result), "labels": len(data), "skipped_annotations": skipped}

    def train(
        self, project: Project, space: LabelSpace, data: LabeledData, progress: Progress
    ) -> RoundResult:
        def serving() -> ModelVersion | None:  # under the registry's lock: read, not polled
            return project.current_model(fresh=True)

        names = self.prior(project, space)
        return run_round(
            self.name, project.registry, space, data, serving, self.config(), progress, names
        )

    def prior(self, project: Project, space: LabelSpace) -> Embeddings | None:
        """The label names' embeddings when HEAD_PRIOR shrinks the head toward them."""
        return project.label_embeddings(space) if self.settings.head_prior else None

    def config(self) -> RoundConfig:
        s = self.settings
        return RoundConfig(
            head_c=s.head_c,
            head_prior=s.head_prior,
            eval_fraction=s.eval_fraction,
            eval_min_labels=s.eval_min_labels,
            star_lambda_decay=s.star_lambda_decay,
            lora=None,
            extra={
                "embedding_model": s.embedding_model,
                "embedding_backend": s.resolved_embedding_backend(),
            },
        )


class HeadLane(TrainingLane):
    name = "head"
    threads = 2


class LoraLane(TrainingLane):
    name = "lora"
    threads = 1  # minutes each, a child process each: one at a time
    timeout_s = 6 * 3600

    def wake(self, project: Project, event: str) -> bool:
        return self.settings.lora_enabled and super().wake(project, event)

    def pending(self, project: Project) -> bool:
        if not self.settings.lora_enabled:
            return False
        store, done = project.store, self.done(project)
        forced = int(store.meta("train_requested") or 0) > done
        due = store.count_events(LABEL_ACTIONS, after=done) >= self.settings.lora_every
        return forced or (due and len(store.labeled()) >= self.settings.lora_min_labels)

    def train(
        self, project: Project, space: LabelSpace, data: LabeledData, progress: Progress
    ) -> RoundResult:
        # Minutes of training, possibly out of memory: in a child process, niced, so a crash
        # or an OOM kill fails the run instead of the server, and serving keeps the CPU.
        device = self.settings.resolved_device()
        address, names = project.address, self.prior(project, space)
        return run_isolated(
            isolated_round, address, space, data, self.config(), device, progress, names
        )

    def config(self) -> RoundConfig:
        from ls_backend.core.lora import LoraTrainConfig

        s = self.settings
        lora = LoraTrainConfig(
            backbone=s.lora_backbone,
            max_length=s.max_length,
            epochs=s.lora_epochs,
            min_steps=s.lora_min_steps,
            mixed_precision=s.lora_mixed_precision,
            lr=s.lora_lr,
            batch_size=s.lora_batch_size,
            r=s.lora_r,
            alpha=s.lora_alpha,
            dropout=s.lora_dropout,
            b_decay=s.lora_b_decay,
            mc_samples=s.mc_samples,
            device=s.device,
        )
        return replace(super().config(), lora=lora)


def training_lanes(settings: Settings) -> Lanes:
    return Lanes([HeadLane(settings), LoraLane(settings)])


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


def read_status(project: Project, lane: str) -> JobStatus:
    stored = project.store.lane_status(lane)
    try:
        return JobStatus(**stored) if stored else JobStatus(project.key, lane)
    except TypeError:  # written by another version of JobStatus
        return JobStatus(project.key, lane)


def shown_status(project: Project, lane: Lane) -> JobStatus:
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
    """One run of ``lane`` (the caller holds its lock), its status file kept current; the
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
        project.store.set_meta(f"{lane.name}_done", str(seen))
    status.state, status.runs, status.finished = outcome, status.runs + 1, time.time()
    status.progress = 1.0
    project.store.set_lane_status(lane.name, asdict(status))
    metrics.record_run(lane.name, outcome, time.monotonic() - started)
    return status
