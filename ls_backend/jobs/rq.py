"""Background work on Redis + RQ (``REDIS_URL``): serving replicas enqueue, ``ls-backend
worker`` processes run the lanes. Each lane has its own queue (``ls-backend:<lane>``), so a
GPU box can listen to LoRA only.

Redis holds no work of its own, only "look at (project, lane) at time t": what is pending
comes from the durable store, as in-process. So a Redis restart or a worker killed mid-run
loses nothing: every worker sweeps the known projects every ``SWEEP_S`` and enqueues what is
pending, and whoever runs it takes the lane's lock and trains on everything stored.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker

from ls_backend.jobs.lanes import Lanes
from ls_backend.jobs.scheduler import MAX_SETTLE_S, Scheduler
from ls_backend.projects import Projects

log = logging.getLogger(__name__)

PREFIX = "ls-backend"
#: How often every worker looks for pending work that no job stands for (a Redis restart,
#: a killed worker's job).
SWEEP_S = 30.0
#: A job that finds the lane's lock taken looks again this much later.
LOCK_BUSY_S = 5.0
#: A "look at it then" left behind by a lost job expires after this, so a sweep re-enqueues.
DUE_TTL_S = 3600
FAILURE_TTL_S = 7 * 24 * 3600

# Atomic, so that a request and a job starting never both miss the other.
# KEYS[1]: the (project, lane) due hash; ARGV: now, debounce, settle, after, ttl, and "1"
# for a sweep, which never postpones a due look.
_REQUEST = """
local first = tonumber(redis.call('HGET', KEYS[1], 'first'))
local created = 0
if not first then
  first = tonumber(ARGV[1]); created = 1
  redis.call('HSET', KEYS[1], 'first', ARGV[1])
elseif ARGV[6] == '1' then
  return {0, '0'}
end
local now = tonumber(ARGV[1])
local due = math.min(now + tonumber(ARGV[2]), first + tonumber(ARGV[3]))
due = math.max(due, now + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'due', tostring(due))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {created, tostring(due - now)}
"""
# A job takes its due hash once the spell is over; else it says how long is left.
_TAKE = """
local due = tonumber(redis.call('HGET', KEYS[1], 'due'))
if due and due > tonumber(ARGV[1]) then return tostring(due - tonumber(ARGV[1])) end
redis.call('DEL', KEYS[1])
return '0'
"""


def queue_name(lane: str) -> str:
    return f"{PREFIX}:{lane}"


class RqScheduler(Scheduler):
    """The scheduler with ``REDIS_URL``: a request enqueues at most one job per (project,
    lane) and spell; the jobs run wherever ``ls-backend worker`` listens to the lane's queue."""

    lock_busy_s = LOCK_BUSY_S

    def __init__(self, projects: Projects, lanes: Lanes, redis: Redis) -> None:
        super().__init__(projects, lanes)
        self.redis = redis
        self._request = redis.register_script(_REQUEST)
        self._take = redis.register_script(_TAKE)

    def _due_key(self, key: str, lane: str) -> str:
        return f"{PREFIX}:due:{lane}:{key}"

    def queue(self, lane: str) -> Queue:
        return Queue(queue_name(lane), connection=self.redis)

    # --- looks ------------------------------------------------------------------------------

    def request(self, key: str, lane: str, after: float = 0.0, sweep: bool = False) -> None:
        """Look at (key, lane) after a quiet spell; a burst of requests enqueues one job."""
        created, wait = self._request(
            keys=[self._due_key(key, lane)],
            args=[
                time.time(),
                self.settings.train_debounce_s,
                MAX_SETTLE_S,
                after,
                DUE_TTL_S,
                int(sweep),
            ],
        )
        if created:
            self._enqueue(key, lane, float(wait))

    def _enqueue(self, key: str, name: str, delay: float) -> None:
        lane = self.lanes[name]
        options: dict[str, Any] = {
            "job_timeout": lane.timeout_s,
            "failure_ttl": FAILURE_TTL_S,
            "description": f"{name} lane, project {key}",
        }
        if delay > 0:
            self.queue(name).enqueue_in(timedelta(seconds=delay), run_job, key, name, **options)
        else:
            self.queue(name).enqueue(run_job, key, name, **options)

    # --- a job ----------------------------------------------------------------------------

    def run(self, key: str, name: str) -> None:
        """A job: drain (key, lane) once its spell is over. Errors outside a run fail the job
        (RQ keeps it in its failed registry); the next sweep retries."""
        left = float(self._take(keys=[self._due_key(key, name)], args=[time.time()]))
        if left > 0:  # more events came since this job was enqueued: wait for the quiet
            self._enqueue(key, name, left)
            return
        self.drain(key, name)

    def requested_again(self, key: str, lane: str) -> bool:
        return bool(self.redis.exists(self._due_key(key, lane)))  # its job drains them

    # --- what /status and the tests see --------------------------------------------------

    def busy(self) -> bool:
        """Jobs queued or scheduled in any lane's queue. (Running ones show as pending work:
        a run marks its work done only at its end, and RQ keeps a killed worker's job among
        the started ones until its maintenance finds it abandoned.)"""
        for name in self.lanes.names():
            queue = self.queue(name)
            if queue.count or queue.scheduled_job_registry.count:
                return True
        return False


#: The scheduler of this worker process (``work``), which its jobs run on.
_WORKER: list[RqScheduler] = []


def run_job(key: str, lane: str) -> None:
    """What an RQ job runs: one (project, lane) drained in this worker process."""
    _WORKER[0].run(key, lane)


def work(
    projects: Projects,
    lanes: Lanes,
    redis: Redis,
    names: list[str] | None = None,
    burst: bool = False,
) -> None:
    """Run an RQ worker for the lanes ``names`` (all of ``lanes`` by default) in this process,
    with a sweep thread. Jobs run in this process (no fork per job): the encoder and the
    open projects stay loaded; a LoRA round still trains in a child process."""
    scheduler = RqScheduler(projects, lanes, redis)
    _WORKER[:] = [scheduler]
    names = names or lanes.names()
    unknown = set(names) - set(lanes.names())
    if unknown:
        raise ValueError(f"unknown queue(s) {sorted(unknown)}; lanes here: {lanes.names()}")
    stop = threading.Event()

    def sweep() -> None:
        while True:  # at start too: what is pending was stored before this worker came
            try:
                scheduler.resume()
            except Exception:  # the database away, say: the worker waits, it does not die
                log.exception("sweep for pending work failed; trying again in %.0f s", SWEEP_S)
            if stop.wait(SWEEP_S):
                return

    threading.Thread(target=sweep, name="sweep", daemon=True).start()
    worker = SimpleWorker([scheduler.queue(name) for name in names], connection=redis)
    try:
        worker.work(with_scheduler=True, burst=burst)
    finally:
        stop.set()
