"""The in-process scheduler: the registered lanes (``ls_backend.lanes``) run on a few
threads per lane, shared by every project; bursts of events coalesce into one run.

It never names a lane: it asks each which events wake it and whether work is pending. What
is pending lives in the project's durable store, and one run per project and lane holds the
store's lock of the lane, so several gunicorn workers cooperate: whoever gets the lock trains
on everything stored so far, and the others re-check once it is free.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from ls_backend.lanes import Lane, lane_lock, run_once, shown_status
from ls_backend.service import Backend, Project

log = logging.getLogger(__name__)

#: How long a loser of the lock waits before checking whether work is still pending.
LOCK_RETRY_S = 0.5
#: A steady stream of events still gets a run after this long (a bulk burst of 1,000
#: webhooks takes ~10 s to arrive on 2 cores; annotators pause far longer than one spell).
MAX_SETTLE_S = 10.0
#: Something outside a run (a full disk, a database error) is retried after this, doubling.
TROUBLE_RETRY_S = 1.0
TROUBLE_RETRY_MAX_S = 60.0


class Worker:
    """Runs the backend's lanes on a few threads per lane, shared by every project: an idle
    project holds no thread. An event wakes the lanes it concerns; each is looked at after a
    quiet spell, and a dispatcher hands due work to the lane's threads. Anything that goes
    wrong outside a run's own body (a full disk writing a status file, a database error
    checking what is pending) is kept for /status and retried with a growing pause, so a
    lane never stops for good."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.lanes = backend.lanes
        self._cond = threading.Condition()
        self._due: dict[tuple[str, str], float] = {}  # when to look at it (monotonic)
        self._burst: dict[tuple[str, str], float] = {}  # first request of the burst
        self._active: set[tuple[str, str]] = set()  # handed to a thread in this process
        self._known: set[tuple[str, str]] = set()
        self._trouble: dict[tuple[str, str], tuple[int, str]] = {}  # failures, last error
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._dispatcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running = 0
        backend.worker = self

    # --- triggers (called from request threads: cheap, never block) --------------------------

    def notify(self, project: Project, event: str) -> None:
        """``event`` happened to ``project`` (a webhook action, ``lanes.CONNECTED``, ...):
        wake the lanes it gives work."""
        for lane in self.lanes.woken_by(project, event):
            self.request(project.key, lane)

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
        for pool in list(self._pools.values()):
            pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)

    def resume(self) -> None:
        """At start: run what a killed or stopped process left pending (its events are stored)."""
        for key in self.backend.known_projects():
            project = self.backend.project(key)
            for lane in self.lanes:
                if lane.pending(project):
                    self.request(key, lane.name)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """For tests and the CLI: True once no lane has pending work or a run in flight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                busy = self._running > 0 or bool(self._due) or bool(self._active)
                known = list(self._known)
            if not busy and not any(
                self.lanes[lane].pending(self.backend.project(key)) for key, lane in known
            ):
                return True
            time.sleep(0.05)
        return False

    # --- the dispatcher and the runs --------------------------------------------------------------

    def _pool(self, lane: Lane) -> ThreadPoolExecutor:
        if lane.name not in self._pools:
            self._pools[lane.name] = ThreadPoolExecutor(
                lane.threads, thread_name_prefix=f"lane-{lane.name}"
            )
        return self._pools[lane.name]

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
                    self._pool(self.lanes[lane]).submit(self._drain, key, lane)
                except RuntimeError as exc:  # shutting down, or no thread could start
                    with self._cond:
                        self._active.discard((key, lane))
                    if not self._stopping.is_set():
                        self._trouble[(key, lane)] = (1, f"{type(exc).__name__}: {exc}")
                        self._later(key, lane, TROUBLE_RETRY_S)

    def _drain(self, key: str, name: str) -> None:
        """Run (key, lane) while work is pending; never raises, never stops the lane."""
        try:
            project, lane = self.backend.project(key), self.lanes[name]
            while not self._stopping.is_set() and lane.pending(project):
                with lane_lock(project, lane) as mine:
                    if not mine:  # another process runs it; look again when it is done
                        self._later(key, name, LOCK_RETRY_S)
                        return
                    with self._in_flight():  # until its status is written (wait_idle)
                        status = run_once(project, lane)
                if status.produced and lane.emits:
                    self.notify(project, lane.emits)
                if status.retries:  # a transient failure: back off, then retry
                    self._later(key, name, lane.retry_s * status.retries)
                    return
                with self._cond:
                    if (key, name) in self._due:  # events came in during the run: let the
                        return  # burst land first, the dispatcher comes back for it
            self._trouble.pop((key, name), None)
        except Exception as exc:  # outside a run's body: a full disk, a database error
            failures = self._trouble.get((key, name), (0, ""))[0] + 1
            self._trouble[(key, name)] = (failures, f"{type(exc).__name__}: {exc}")
            pause = min(TROUBLE_RETRY_S * 2 ** (failures - 1), TROUBLE_RETRY_MAX_S)
            log.error(
                "%s lane, project %s: %s; trying again in %.0f s:\n%s",
                name, key, exc, pause, traceback.format_exc(),
            )  # fmt: skip
            self._later(key, name, pause)
        finally:
            with self._cond:
                self._active.discard((key, name))
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
        status = shown_status(project, self.lanes[lane])
        trouble = self._trouble.get((project.key, lane))
        if trouble is not None:
            status.state, status.last_error = "failed", trouble[1]
        return asdict(status)


def start_scheduler(backend: Backend) -> Any:
    """The scheduler the settings ask for: RQ with REDIS_URL (serving never trains), else
    this process's threads."""
    if backend.settings.redis_url:
        from redis import Redis

        from ls_backend.rq_jobs import RqScheduler

        return RqScheduler(backend, Redis.from_url(backend.settings.redis_url))
    return Worker(backend)
