"""The in-process scheduler (the default, without ``REDIS_URL``): the registered lanes run on
a few threads per lane, shared by every project; bursts of events coalesce into one run.

Several gunicorn workers cooperate through the store: whoever gets a lane's lock trains on
everything stored so far, and the others look again once it is free.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ls_backend.core.priority import lower_thread_priority
from ls_backend.jobs.lanes import Lane, Lanes
from ls_backend.jobs.scheduler import MAX_SETTLE_S, Scheduler
from ls_backend.projects import Projects

log = logging.getLogger(__name__)

#: Something outside a run (a full disk, a database error) is retried after this, doubling.
TROUBLE_RETRY_S = 1.0
TROUBLE_RETRY_MAX_S = 60.0


class ThreadScheduler(Scheduler):
    """An event wakes the lanes it concerns; each is looked at after a quiet spell, and a
    dispatcher hands due work to the lane's threads: an idle project holds no thread.
    Anything that goes wrong outside a run's own body (a full disk writing a status, a
    database error checking what is pending) is kept for /status and retried with a growing
    pause, so a lane never stops for good."""

    def __init__(self, projects: Projects, lanes: Lanes) -> None:
        super().__init__(projects, lanes)
        self._cond = threading.Condition()
        self._due: dict[tuple[str, str], float] = {}  # when to look at it (monotonic)
        self._burst: dict[tuple[str, str], float] = {}  # first request of the burst
        self._active: set[tuple[str, str]] = set()  # handed to a thread in this process
        self._trouble: dict[tuple[str, str], tuple[int, str]] = {}  # failures, last error
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._dispatcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running = 0

    # --- looks (called from request threads: cheap, never block) ---------------------------

    def request(self, key: str, lane: str, after: float = 0.0, sweep: bool = False) -> None:
        now = time.monotonic()
        with self._cond:
            first = self._burst.setdefault((key, lane), now)
            due = min(now + self.settings.train_debounce_s, first + MAX_SETTLE_S)
            if sweep and (key, lane) in self._due:
                due = self._due[(key, lane)]
            self._due[(key, lane)] = max(due, now + after)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="lane-dispatcher", daemon=True
                )
                self._dispatcher.start()
            self._cond.notify()

    def later(self, key: str, lane: str, delay: float) -> None:
        with self._cond:
            due = time.monotonic() + delay
            self._due[(key, lane)] = min(self._due.get((key, lane), due), due)
            self._burst.setdefault((key, lane), due)
            self._cond.notify()

    def requested_again(self, key: str, lane: str) -> bool:
        with self._cond:
            return (key, lane) in self._due

    def busy(self) -> bool:
        with self._cond:
            return self._running > 0 or bool(self._due) or bool(self._active)

    def stopping(self) -> bool:
        return self._stopping.is_set()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1

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

    # --- the dispatcher and the runs ----------------------------------------------------------

    def _pool(self, lane: Lane) -> ThreadPoolExecutor:
        if lane.name not in self._pools:
            self._pools[lane.name] = ThreadPoolExecutor(
                lane.threads,
                thread_name_prefix=f"lane-{lane.name}",
                initializer=lower_thread_priority,
                initargs=(lane.niceness,),
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
                        self.later(key, lane, TROUBLE_RETRY_S)

    def _drain(self, key: str, name: str) -> None:
        """``drain``, never raising: trouble outside a run is kept and retried later."""
        try:
            self.drain(key, name)
            self._trouble.pop((key, name), None)
        except Exception as exc:  # outside a run's body: a full disk, a database error
            failures = self._trouble.get((key, name), (0, ""))[0] + 1
            self._trouble[(key, name)] = (failures, f"{type(exc).__name__}: {exc}")
            pause = min(TROUBLE_RETRY_S * 2 ** (failures - 1), TROUBLE_RETRY_MAX_S)
            log.error(
                "%s lane, project %s: %s; trying again in %.0f s:\n%s",
                name, key, exc, pause, traceback.format_exc(),
            )  # fmt: skip
            self.later(key, name, pause)
        finally:
            with self._cond:
                self._active.discard((key, name))
                self._cond.notify()

    def live(self, key: str, lane: str, status: dict[str, Any]) -> dict[str, Any]:
        """Also ``failed`` with the error while something outside the runs keeps the lane
        from working."""
        trouble = self._trouble.get((key, lane))
        if trouble is None:
            return status
        return {**status, "state": "failed", "last_error": trouble[1]}
