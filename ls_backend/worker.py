"""Background jobs: per project and lane, never in a request thread; bursts coalesce.

Lanes: ``head`` (the light head, refit after every annotation), ``lora`` (the adapter,
every ``LORA_EVERY`` annotations or on START_TRAINING) and ``sync`` (re-rank the
Label Studio queue). What is pending lives in the project's durable store, and one
run per project and lane holds an ``flock`` in ``MODEL_DIR``, so several gunicorn
workers cooperate: whoever gets the lock trains on everything stored so far, and
the others re-check once it is free.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ls_backend import metrics
from ls_backend.core.labels import LabelSpace
from ls_backend.core.model import ModelVersion
from ls_backend.core.registry import Registry, write_json_atomic
from ls_backend.core.training import (
    LabeledData,
    NotEnoughLabels,
    Progress,
    RoundConfig,
    RoundResult,
    run_round,
)
from ls_backend.labelstudio.client import LabelStudioAuthError, LabelStudioError
from ls_backend.labelstudio.events import LABEL_ACTIONS
from ls_backend.labelstudio.sync import webhook_check_due
from ls_backend.service import Backend, Project

log = logging.getLogger(__name__)

LANES = ("head", "lora", "sync")
SyncJob = Callable[[Project, Progress], dict[str, Any]]
#: How long a loser of the lock waits before checking whether work is still pending.
LOCK_RETRY_S = 0.5
#: A steady stream of events still gets a run after this long (a bulk burst of 1,000
#: webhooks takes ~10 s to arrive on 2 cores; annotators pause far longer than one spell).
MAX_SETTLE_S = 10.0
#: A sync that fails on Label Studio being away (restart, 5xx) is retried this many times,
#: waiting SYNC_RETRY_S, 2 * SYNC_RETRY_S, ... : together longer than a Label Studio restart.
SYNC_RETRIES = 3
SYNC_RETRY_S = 15.0
#: Threads per lane, shared by every project: the bound on what background work holds
#: however many projects there are. LoRA rounds (minutes, a child process each) go one at a time.
LANE_THREADS = {"head": 2, "lora": 1, "sync": 2}
#: Something outside a run (a full disk, a database error) is retried after this, doubling.
TROUBLE_RETRY_S = 1.0
TROUBLE_RETRY_MAX_S = 60.0
#: LoRA runs in a child process at this niceness: requests get the CPU first.
CHILD_NICENESS = 10
T = TypeVar("T")


@dataclass
class JobStatus:
    project: str
    lane: str
    state: str = "idle"  # idle | queued | running | done | failed
    progress: float = 0.0
    stage: str = ""
    runs: int = 0
    failures: int = 0  # consecutive failed runs
    retries: int = 0  # transient failures of the sync request now being retried
    last_error: str | None = None
    last_result: dict[str, Any] | None = None
    started: float | None = None
    finished: float | None = None
    pid: int = field(default_factory=os.getpid)


@dataclass
class ProgressFile:
    """Writes a run's progress into its status file; picklable, so a child process reports too."""

    path: Path
    status: JobStatus

    def __call__(self, fraction: float, stage: str) -> None:
        self.status.progress, self.status.stage = round(fraction, 3), stage
        write_json_atomic(self.path, asdict(self.status))


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
    registry_root: Path,
    space: LabelSpace,
    data: LabeledData,
    config: RoundConfig,
    device: str,
    progress: ProgressFile,
) -> RoundResult:
    """A LoRA round as run in a child process: it loads the serving model itself."""
    os.nice(CHILD_NICENESS)
    follow_parent()
    registry = Registry(registry_root)

    def current() -> ModelVersion | None:
        version = registry.current()
        return ModelVersion.load(registry.path(version), version, device) if version else None

    return run_round("lora", registry, space, data, current, config, progress)


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a fresh process; a killed child raises BrokenProcessPool here."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


@contextmanager
def try_lock(path: os.PathLike[str]) -> Iterator[bool]:
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def status_path(project: Project, lane: str) -> Path:
    return project.dir / f"status-{lane}.json"


def read_status(project: Project, lane: str) -> JobStatus:
    try:
        with open(status_path(project, lane)) as f:
            return JobStatus(**json.load(f))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return JobStatus(project.key, lane)


class Worker:
    """Runs lanes on a few threads per lane, shared by every project: an idle project holds
    no thread. A request marks (project, lane) due after a quiet spell; a dispatcher hands due
    work to the lane's threads. Anything that goes wrong outside a run's own body (a full
    disk writing a status file, a database error checking what is pending) is kept for
    /status and retried with a growing pause, so a lane never stops for good."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.settings = backend.settings
        self._cond = threading.Condition()
        self._due: dict[tuple[str, str], float] = {}  # when to look at it (monotonic)
        self._burst: dict[tuple[str, str], float] = {}  # first request of the burst
        self._active: set[tuple[str, str]] = set()  # handed to a thread in this process
        self._known: set[tuple[str, str]] = set()
        self._trouble: dict[tuple[str, str], tuple[int, str]] = {}  # failures, last error
        self._pools = {
            lane: ThreadPoolExecutor(n, thread_name_prefix=f"lane-{lane}")
            for lane, n in LANE_THREADS.items()
        }
        self._dispatcher: threading.Thread | None = None
        self._reread_lock = threading.Lock()
        self._stopping = threading.Event()
        self._running = 0
        self.sync_job: SyncJob | None = None
        self.reread: Callable[[Project], int] | None = None
        backend.worker = self

    def attach_label_studio(self, sync_job: SyncJob, reread: Callable[[Project], int]) -> None:
        """With LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY: queue ranking and re-reads."""
        self.sync_job, self.reread = sync_job, reread

    # --- triggers (called from request threads: cheap, never block) --------------------------

    def on_event(self, project: Project, action: str) -> None:
        if action in LABEL_ACTIONS or action == "START_TRAINING":
            self.request(project.key, "head")
            self.request(project.key, "lora")
        elif action == "TASKS_CREATED":
            self.request_sync(project)

    def on_setup(self, project: Project) -> None:
        """A project connects: rank its queue once, even before any label (diversity alone);
        with basic auth on, (re)connecting also gives its new webhook the credentials."""
        if self.sync_job is None:
            return
        if project.store.meta("sync_forced") is None:
            self.request_sync(project)
        elif self.settings.auth_enabled and webhook_check_due(project.store):
            self.request_sync(project, forced=False)

    def request(self, key: str, lane: str) -> None:
        """Look at (key, lane) once no request came for TRAIN_DEBOUNCE_S (MAX_SETTLE_S at most
        after the first of a burst), so a burst becomes one run."""
        now = time.monotonic()
        with self._cond:
            first = self._burst.setdefault((key, lane), now)
            self._due[(key, lane)] = min(now + self.settings.train_debounce_s, first + MAX_SETTLE_S)
            self._known.add((key, lane))
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="lane-dispatcher", daemon=True
                )
                self._dispatcher.start()
            self._cond.notify()

    def _later(self, key: str, lane: str, delay: float) -> None:
        with self._cond:
            due = time.monotonic() + delay
            self._due[(key, lane)] = min(self._due.get((key, lane), due), due)
            self._burst.setdefault((key, lane), due)
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)

    def resume(self) -> None:
        """At start: run what a killed or stopped process left pending (its events are stored)."""
        for key in self.backend.known_projects():
            project = self.backend.project(key)
            for lane in LANES:
                if self._pending(project, lane):
                    self.request(key, lane)

    def request_sync(self, project: Project, forced: bool = True) -> None:
        """Wake the sync lane. ``forced`` pushes a new ranking (POST /sync, new tasks); else
        the lane re-ranks and pushes only when the queue needs it (``core.requeue``)."""
        now = str(time.time_ns())
        if forced:
            project.store.set_meta("sync_forced", now)
        project.store.set_meta("sync_wanted", now)
        self.request(project.key, "sync")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """For tests and the CLI: True once no lane has pending work or a run in flight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                busy = self._running > 0 or bool(self._due) or bool(self._active)
                known = list(self._known)
            if not busy and not any(
                self._pending(self.backend.project(key), lane) for key, lane in known
            ):
                return True
            time.sleep(0.05)
        return False

    # --- the dispatcher and the runs --------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                now = time.monotonic()
                waiting = {k: t for k, t in self._due.items() if k not in self._active}
                ready = [k for k, t in waiting.items() if t <= now]
                for item in ready:
                    del self._due[item]
                    self._burst.pop(item, None)
                    self._active.add(item)
                if not ready:
                    pause = min(waiting.values(), default=now + 60.0) - now
                    self._cond.wait(max(pause, 0.01))
                    continue
            for key, lane in ready:
                try:
                    self._pools[lane].submit(self._drain, key, lane)
                except RuntimeError as exc:  # shutting down, or no thread could start
                    with self._cond:
                        self._active.discard((key, lane))
                    if not self._stopping.is_set():
                        self._trouble[(key, lane)] = (1, f"{type(exc).__name__}: {exc}")
                        self._later(key, lane, TROUBLE_RETRY_S)

    def _drain(self, key: str, lane: str) -> None:
        """Run (key, lane) while work is pending; never raises, never stops the lane."""
        try:
            project = self.backend.project(key)
            while not self._stopping.is_set() and self._pending(project, lane):
                with try_lock(project.dir / f"{lane}.lock") as mine:
                    if not mine:  # another process runs it; look again when it is done
                        self._later(key, lane, LOCK_RETRY_S)
                        return
                    with self._in_flight():  # until its status is written (wait_idle)
                        failures = self._run(project, lane)
                if failures:  # only a sync left pending after a failure: back off
                    self._later(key, lane, SYNC_RETRY_S * failures)
                    return
                with self._cond:
                    if (key, lane) in self._due:  # events came in during the run: let the
                        return  # burst land first, the dispatcher comes back for it
            self._trouble.pop((key, lane), None)
        except Exception as exc:  # outside a run's body: a full disk, a database error
            failures = self._trouble.get((key, lane), (0, ""))[0] + 1
            self._trouble[(key, lane)] = (failures, f"{type(exc).__name__}: {exc}")
            pause = min(TROUBLE_RETRY_S * 2 ** (failures - 1), TROUBLE_RETRY_MAX_S)
            log.error(
                "%s lane, project %s: %s; trying again in %.0f s:\n%s",
                lane, key, exc, pause, traceback.format_exc(),
            )  # fmt: skip
            self._later(key, lane, pause)
        finally:
            with self._cond:
                self._active.discard((key, lane))
                self._cond.notify()

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1

    def status(self, project: Project, lane: str) -> dict[str, Any]:
        """The lane's last run, with ``queued`` when work waits and no run is in flight, and
        ``failed`` with the error while something outside the runs keeps it from working."""
        status = read_status(project, lane)
        trouble = self._trouble.get((project.key, lane))
        if trouble is not None:
            status.state, status.last_error = "failed", trouble[1]
        elif status.state != "running" and self._pending(project, lane):
            status.state = "queued"
        return asdict(status)

    def _marker(self, project: Project, lane: str) -> int:
        """What a run of this lane covers: the last event seen, or the last sync request."""
        if lane == "sync":
            return int(project.store.meta("sync_wanted") or 0)
        return project.store.last_seq(LABEL_ACTIONS | {"START_TRAINING"})

    @staticmethod
    def _done(project: Project, lane: str) -> int:
        return int(project.store.meta(f"{lane}_done") or 0)

    def _pending(self, project: Project, lane: str) -> bool:
        done = self._done(project, lane)
        if lane == "head":
            return self._marker(project, lane) > done
        if lane == "sync":
            return self.sync_job is not None and self._marker(project, lane) > done
        if not self.settings.lora_enabled:
            return False
        store = project.store
        forced = int(store.meta("train_requested") or 0) > done
        due = store.count_events(LABEL_ACTIONS, after=done) >= self.settings.lora_every
        return forced or (due and len(store.labeled()) >= self.settings.lora_min_labels)

    def _run(self, project: Project, lane: str) -> int:
        """One run; returns how often a sync to be retried has failed so far, else 0."""
        seen = self._marker(project, lane)
        status = read_status(project, lane)
        status.state, status.progress, status.stage = "running", 0.0, "starting"
        status.started, status.finished, status.pid = time.time(), None, os.getpid()
        write_json_atomic(status_path(project, lane), asdict(status))

        progress = ProgressFile(status_path(project, lane), status)
        started = time.monotonic()
        outcome, transient = "done", False
        try:
            status.last_result = self._job(project, lane, progress)
            status.last_error = None
        except NotEnoughLabels as exc:
            status.last_result = {"skipped": str(exc)}
        except Exception as exc:  # a failed run must never take serving down
            outcome = "failed"
            transient = isinstance(exc, LabelStudioError) and not isinstance(
                exc, LabelStudioAuthError
            )
            status.last_error = f"{type(exc).__name__}: {exc}"
            log.error("%s run, project %s, failed:\n%s", lane, project.key, traceback.format_exc())
        status.failures = status.failures + 1 if outcome == "failed" else 0
        # Failed runs count as handled: the next event retries, a bad input does not loop.
        # Except a sync that Label Studio's absence broke: that one comes back by itself.
        retry = transient and status.retries < SYNC_RETRIES
        status.retries = status.retries + 1 if retry else 0  # each new request: a fresh budget
        if not retry:
            project.store.set_meta(f"{lane}_done", str(seen))
        status.state, status.runs, status.finished = outcome, status.runs + 1, time.time()
        status.progress = 1.0
        write_json_atomic(status_path(project, lane), asdict(status))
        metrics.record_run(lane, outcome, time.monotonic() - started)
        return status.retries

    def _reread_once(self, project: Project, progress: Progress) -> None:
        """START_TRAINING: re-read the labels from Label Studio once per request (the head and
        lora lanes both wake for it), and best effort: a Label Studio that fails to answer
        must not stop training on the labels already stored."""
        assert self.reread is not None
        store = project.store
        with self._reread_lock:
            requested = int(store.meta("train_requested") or 0)
            if requested <= int(store.meta("reread_done") or 0):
                return
            progress(0.0, "re-reading labeled tasks from Label Studio")
            try:
                log.info("project %s: re-read %d labeled tasks", project.key, self.reread(project))
            except Exception:
                log.warning(
                    "project %s: re-reading labels from Label Studio failed; training on the"
                    " stored ones:\n%s", project.key, traceback.format_exc(),
                )  # fmt: skip
            store.set_meta("reread_done", str(requested))

    def _job(self, project: Project, lane: str, progress: Progress) -> dict[str, Any]:
        if lane == "sync":
            assert self.sync_job is not None
            return self.sync_job(project, progress)
        if self.reread is not None:
            self._reread_once(project, progress)
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
        config = self.round_config(lane)
        if lane == "lora":
            # Minutes of training, possibly out of memory: in a child process, niced, so a
            # crash or an OOM kill fails the run instead of the server, and serving keeps the CPU.
            device = self.settings.resolved_device()
            registry = project.registry.root
            result = run_isolated(isolated_round, registry, space, data, config, device, progress)
        else:
            result = run_round(
                lane, project.registry, space, data, project.current_model, config, progress
            )
        log.info(
            "project %s: %s round -> %s (%s: %s)",
            project.key,
            lane,
            result.version,
            "promoted" if result.promoted else "kept",
            result.reason,
        )
        if self.sync_job is not None:  # new labels or a new model: the sync decides to push
            self.request_sync(project, forced=False)
        return {**asdict(result), "labels": len(data), "skipped_annotations": skipped}

    def round_config(self, lane: str) -> RoundConfig:
        s = self.settings
        lora = None
        if lane == "lora":
            from ls_backend.core.lora import LoraTrainConfig

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
        return RoundConfig(
            head_c=s.head_c,
            eval_fraction=s.eval_fraction,
            eval_min_labels=s.eval_min_labels,
            star_lambda_decay=s.star_lambda_decay,
            lora=lora,
            extra={
                "embedding_model": s.embedding_model,
                "embedding_backend": s.resolved_embedding_backend(),
            },
        )
