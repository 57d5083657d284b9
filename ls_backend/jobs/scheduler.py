"""What every scheduler of lanes shares: it listens to what happens to projects, wakes the
lanes an event concerns, and drains a (project, lane) while work is pending, one run at a
time per project and lane (the store's lock). Where the runs happen is the subclass's:
this process's threads (``jobs.threads``) or RQ workers (``jobs.rq``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from ls_backend.jobs.lanes import Lanes, lane_lock, retain, run_once, shown_status
from ls_backend.projects import Project, Projects, ProjectView
from ls_backend.store.base import StoreMissing

log = logging.getLogger(__name__)

#: A burst's spell: a request is looked at TRAIN_DEBOUNCE_S after the last one of a burst, and
#: at most this long after its first (a bulk burst of 1,000 webhooks takes ~10 s to arrive on
#: 2 cores; annotators pause far longer than one spell).
MAX_SETTLE_S = 10.0
#: How often ``wait_idle`` looks.
IDLE_POLL_S = 0.05
#: While the store (or the queue) is away at start, the look for pending work is retried this
#: often, in the background: the process serves meanwhile.
RESUME_RETRY_S = 5.0


class Scheduler:
    """Runs ``lanes`` for ``projects``. Subclasses say when a (project, lane) is looked at
    (``request``, ``later``), whether more was asked for while it ran (``requested_again``)
    and whether anything waits or runs (``busy``)."""

    #: How long a loser of the lane's lock waits before looking again.
    lock_busy_s = 0.5

    def __init__(self, projects: Projects, lanes: Lanes) -> None:
        self.projects, self.lanes, self.settings = projects, lanes, projects.settings
        projects.subscribe(self.notify)

    # --- what subclasses provide -----------------------------------------------------------

    def request(self, key: str, lane: str, after: float = 0.0, sweep: bool = False) -> None:
        """Look at (key, lane) once the burst's spell is over (and ``after`` seconds at least);
        ``sweep``: from a look for forgotten work, which never postpones a look already due."""
        raise NotImplementedError

    def later(self, key: str, lane: str, delay: float) -> None:
        """Look at (key, lane) again ``delay`` seconds from now (a lock held elsewhere, a
        retry)."""
        self.request(key, lane, after=delay)

    def lock_busy(self, key: str, lane: str) -> None:
        """Another process runs (key, lane): see that what is pending gets looked at."""
        self.later(key, lane, self.lock_busy_s)

    def requested_again(self, key: str, lane: str) -> bool:
        """Events came in for (key, lane) during its run: the burst lands first, a later look
        runs it again."""
        raise NotImplementedError

    def busy(self) -> bool:
        """A look is due or a run in flight."""
        raise NotImplementedError

    def stopping(self) -> bool:
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop what this process runs."""

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around a run, until its status is written."""
        yield

    # --- shared --------------------------------------------------------------------------------

    def notify(self, project: Project, event: str) -> None:
        """``event`` happened to ``project``: wake the lanes it gives work. Called from request
        threads: cheap, never blocks on a run."""
        for lane in self.lanes.woken_by(project, event):
            self.request(project.key, lane)

    def pending(self) -> Iterator[tuple[str, str]]:
        """Every (project, lane) with work pending, read from the stores only (``view``)."""
        for key in self.projects.known_projects():
            view = self.projects.view(key)
            try:
                with view.store.snapshot():
                    names = [lane.name for lane in self.lanes if lane.pending(view)]
            except StoreMissing:
                continue
            yield from ((key, name) for name in names)

    def resume(self) -> None:
        """Look at every lane with work pending: at start (what a killed or stopped process left
        is stored) and in a worker's sweeps."""
        for key, name in self.pending():
            self.request(key, name, sweep=True)

    def resume_soon(self) -> None:
        """``resume`` at start; while the store is away (PostgreSQL not up yet), again every
        RESUME_RETRY_S in the background, so the process starts and serves meanwhile."""
        try:
            self.resume()
            return
        except Exception as exc:
            log.warning(
                "pending work not looked at yet (%s: %s); trying again every %.0f s",
                type(exc).__name__, exc, RESUME_RETRY_S,
            )  # fmt: skip

        def retry() -> None:
            while not self.stopping():
                time.sleep(RESUME_RETRY_S)
                try:
                    self.resume()
                except Exception:  # still away
                    continue
                log.info("pending work looked at: the store is back")
                return

        threading.Thread(target=retry, name="resume", daemon=True).start()

    def drain(self, key: str, name: str) -> None:
        """One run of (key, lane) if work is pending, holding the lane's lock; never raises for
        a run's own failure (``run_once``). Work still pending after the run goes to the back
        of the line (``later``): a long job of one project (a large import is embedded a block
        per run) takes turns with the other projects' runs instead of holding a thread."""
        project, lane = self.projects.project(key), self.lanes[name]
        if self.stopping() or not lane.pending(project):
            return
        wait = lane.hold(project)
        if wait > 0:  # paced (a head round under a stream of labels): look then
            self.later(key, name, wait)
            return
        with lane_lock(project, lane) as mine:
            if not mine:  # another process runs it
                self.lock_busy(key, name)
                return
            with self.running():
                status = run_once(project, lane)
        if status.produced and lane.retains:
            try:
                retain(project, self.lanes, self.settings.keep_versions)
            except Exception:  # the next round tries again; what serves is untouched
                log.exception("project %s: retention failed", key)
        if status.produced and lane.emits:
            self.projects.emit(project, lane.emits)
        if status.retries:  # a transient failure: back off, then retry
            self.later(key, name, lane.retry_s * status.retries)
        elif not self.requested_again(key, name) and not self.stopping() and lane.pending(project):
            self.later(key, name, 0.0)

    def live(self, key: str, lane: str, status: dict[str, Any]) -> dict[str, Any]:
        """``status`` (as the store says) with what only this process knows; a copy if changed."""
        return status

    def status(self, project: ProjectView, lane: str) -> dict[str, Any]:
        """The lane's last run as /status shows it."""
        return self.live(project.key, lane, asdict(shown_status(project, self.lanes[lane])))

    def overview(
        self, more: Callable[[ProjectView], dict[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Every project's serving version, counts and lanes (and ``more``, always the same
        function), as /status shows them: read from the stores only (no migration, no write, no
        model load), and again only from those written since the last look."""

        def summary(view: ProjectView) -> dict[str, Any]:
            return {
                "model_version": view.registry.current(),
                "annotations": view.store.count("annotations"),
                "tasks": view.store.count("tasks"),
                "jobs": {lane.name: asdict(shown_status(view, lane)) for lane in self.lanes},
                **(more(view) if more else {}),
            }

        def live(key: str, shown: dict[str, Any]) -> dict[str, Any]:
            jobs = {n: self.live(key, n, job) for n, job in shown["jobs"].items()}
            same = all(jobs[n] is job for n, job in shown["jobs"].items())
            return shown if same else {**shown, "jobs": jobs}  # the same object when unchanged

        return {key: live(key, s) for key, s in self.projects.summaries("status", summary).items()}

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """For tests, benchmarks and the CLI: True once nothing waits or runs and no lane of a
        known project has work pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.busy() and next(self.pending(), None) is None:
                return True
            time.sleep(IDLE_POLL_S)
        return False
