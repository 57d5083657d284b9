"""The training lanes: ``head`` (the light head, after every label) and ``lora`` (the adapter,
every ``LORA_EVERY`` labels or on START_TRAINING, in a child process)."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import Any, ClassVar, TypeVar

from ls_backend import metrics
from ls_backend.core.configs import RoundConfig
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings
from ls_backend.core.task_registry import task_of
from ls_backend.core.tasks import LabeledData, Model, NotEnoughLabels, Progress, TaskKind
from ls_backend.core.training import RoundResult, run_round
from ls_backend.jobs import stopping
from ls_backend.jobs.lanes import JobStatus, Lane, Lanes, read_status
from ls_backend.projects import LABEL_SPACE_CHANGED, MODEL_TRAINED, Project, ProjectView
from ls_backend.settings import Settings
from ls_backend.store.annotations import LABEL_ACTIONS, START_TRAINING
from ls_backend.store.base import StoreUnavailable
from ls_backend.store.pointer import StoreAddress, project_registry

log = logging.getLogger(__name__)

TRAINING_EVENTS = LABEL_ACTIONS | {START_TRAINING, LABEL_SPACE_CHANGED}
#: LoRA runs in a child process at this niceness: requests get the CPU first.
CHILD_NICENESS = 10
#: While labels stream in, head training takes at most this share of the time: a round
#: starts no sooner after the last one ended than (1 / HEAD_DUTY - 1) times that round's
#: wall time (the labels meanwhile wait and go into it), and never more than HEAD_HOLD_MAX_S.
#: A label after a quiet spell still trains at once. On a 2-core box beside Label Studio a
#: round per label took the CPU the annotators' saves needed.
HEAD_DUTY = 0.25
HEAD_HOLD_MAX_S = 30.0
#: While people label, a LoRA child (another process: the parent's turns do not reach it)
#: computes for this long, then rests (1 / BACKGROUND_DUTY - 1) times as long; whether
#: people label it asks the store at most every CHILD_LOOK_S.
CHILD_SLICE_S = 0.5
CHILD_LOOK_S = 1.0
T = TypeVar("T")


def follow_parent(poll_s: float = 1.0) -> None:
    """In a child process: exit when the parent goes (stopped by gunicorn, killed), so an
    orphaned LoRA run never trains beside the one a new server starts."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def pace_forward_passes(labeling: Callable[[], bool], duty: float) -> Any:
    """In a LoRA child: while ``labeling()``, its computing takes ``duty`` of the time, in
    slices of CHILD_SLICE_S between forward passes (a hook on every module's forward: nice
    10 alone leaves Label Studio's saves 1.8x slower beside a busy core)."""
    if duty >= 1:
        return None
    import torch  # the child trains with it anyway; the parent need not load it here

    slice_began, looked, busy = time.monotonic(), float("-inf"), False

    def hook(_module: Any, _args: Any) -> None:
        nonlocal slice_began, looked, busy
        now = time.monotonic()
        if now - looked >= CHILD_LOOK_S:
            looked, busy = now, labeling()
        if not busy:
            slice_began = now
        elif now - slice_began >= CHILD_SLICE_S:
            time.sleep((now - slice_began) * (1 / duty - 1))
            slice_began = time.monotonic()

    return torch.nn.modules.module.register_module_forward_pre_hook(hook)  # its handle


def isolated_round(
    address: StoreAddress,
    task_kind: TaskKind,
    space: Any,
    data: LabeledData,
    config: RoundConfig,
    device: str,
    progress: Progress,
    label_embeddings: Embeddings | None,
    duty: float,
) -> RoundResult:
    """A LoRA round as run in a child process: it opens the project's store and loads the
    serving model itself; while people label it computes ``duty`` of the time."""
    os.nice(CHILD_NICENESS)
    follow_parent()
    store = address.open()
    if device == "cpu":  # a GPU's work takes no core from Label Studio
        pace_forward_passes(store.labeling, duty)
    registry = project_registry(address.project_dir, store)
    task = task_of(task_kind)

    def current() -> Model | None:
        version = registry.current()
        return task.load(registry.path(version), version, device) if version else None

    return run_round(
        task, ModelKind.LORA, registry, space, data, current, config, progress, label_embeddings
    )


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a fresh process; a killed child raises BrokenProcessPool here. Stopped
    while it waits (an RQ job's timeout, a worker's cold shutdown), the child is stopped too:
    it never trains on to the end of its round beside the next one."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
    try:
        result = pool.submit(fn, *args).result()
    except BaseException:
        _stop_children(pool)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return result


def _stop_children(pool: ProcessPoolExecutor, grace_s: float = 5.0) -> None:
    # The executor has no public way to stop a task that runs: end its process.
    children = list((getattr(pool, "_processes", None) or {}).values())
    for child in children:
        child.terminate()
    for child in children:
        child.join(grace_s)
        if child.is_alive():
            child.kill()
            child.join(grace_s)


#: Runs before a training round, e.g. a re-read of Label Studio's labels on START_TRAINING.
Prepare = Callable[[Project, Progress], None]


class TrainingLane(Lane):
    """Trains a model of the lane's kind on every stored label; a new version serves only when
    the evaluation says so (``core.training.run_round``)."""

    kind: ClassVar[ModelKind]
    emits = MODEL_TRAINED
    retains = True  # a round saves a version
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

    def marker(self, project: ProjectView) -> int:
        return project.store.last_seq(LABEL_ACTIONS | {START_TRAINING})

    def events_read(self, project: ProjectView) -> int | None:
        return self.done(project)  # what is pending: events after the last run's marker

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
        self.after(project, space, data)
        found = {"label_problems": project.problems} if project.problems else {}
        return {**asdict(result), "labels": len(data), "skipped_annotations": skipped, **found}

    def after(self, project: Project, space: Any, data: LabeledData) -> None:
        """What follows a round (the head lane's stopping signal)."""

    def train(
        self, project: Project, space: Any, data: LabeledData, progress: Progress
    ) -> RoundResult:
        def serving() -> Model | None:  # under the registry's lock: read, not polled
            return project.current_model(fresh=True)

        task, names = project.task, self.prior(project, space)
        registry, config = project.registry, self.config()
        return run_round(task, self.kind, registry, space, data, serving, config, progress, names)

    def prior(self, project: Project, space: Any) -> Embeddings | None:
        """The label names' embeddings when HEAD_PRIOR shrinks the head toward them."""
        return project.label_embeddings(space) if self.settings.head_prior else None

    def config(self) -> RoundConfig:
        return self.settings.round_config(lora=self.kind is ModelKind.LORA)


class HeadLane(TrainingLane):
    name = "head"
    kind = ModelKind.HEAD
    threads = 2

    def hold(self, project: Project) -> float:
        paced = project.projects.pacer.wait_s(labeling=project.store.labeling())
        return max(head_hold(read_status(project, self.name), time.time()), paced)

    def run(self, project: Project, progress: Progress) -> dict[str, Any]:
        # A turn of the process's background work (``core.pacing``), labels read inside it.
        with project.projects.pacer.turn(labeling=project.store.labeling()):
            return super().run(project, progress)

    def after(self, project: Project, space: Any, data: LabeledData) -> None:
        # The stopping signal over the head's versions; a failure costs the signal, never
        # the round (the version is saved and may serve already).
        try:
            stopping.update(project, space, data)
        except StoreUnavailable:
            raise
        except Exception:
            log.exception("project %s: the stopping signal failed", project.key)


class LoraLane(TrainingLane):
    name = "lora"
    kind = ModelKind.LORA
    threads = 1  # minutes each, a child process each: one at a time
    timeout_s = 6 * 3600

    def wake(self, project: Project, event: str) -> bool:
        return self.settings.lora_enabled and super().wake(project, event)

    def events_read(self, project: ProjectView) -> int | None:
        return super().events_read(project) if self.settings.lora_enabled else None

    def pending(self, project: ProjectView) -> bool:
        if not self.settings.lora_enabled:
            return False
        store, done = project.store, self.done(project)
        forced = store.training_requested() > done
        due = store.count_events(LABEL_ACTIONS, after=done) >= self.settings.lora_every
        return forced or (due and store.count_labeled() >= self.settings.lora_min_labels)

    def train(
        self, project: Project, space: Any, data: LabeledData, progress: Progress
    ) -> RoundResult:
        # Minutes of training, possibly out of memory: in a child process, niced, so a crash
        # or an OOM kill fails the run instead of the server, and serving keeps the CPU.
        device = self.settings.resolved_device()
        address, kind, names = project.address, project.task.kind, self.prior(project, space)
        duty = self.settings.background_duty
        return run_isolated(
            isolated_round, address, kind, space, data, self.config(), device, progress, names, duty
        )


def head_hold(last: JobStatus, now: float) -> float:
    """Seconds before the next head round may start: ``HEAD_DUTY`` of the time at most,
    sized from the last round's cost (a round that ran long waits longer)."""
    if last.started is None or last.finished is None or last.finished < last.started:
        return 0.0  # never ran, or running
    cost = last.finished - last.started
    ready = last.finished + min(cost * (1 / HEAD_DUTY - 1), HEAD_HOLD_MAX_S)
    return max(0.0, ready - now)


def training_lanes(settings: Settings) -> Lanes:
    return Lanes([HeadLane(settings), LoraLane(settings)])
