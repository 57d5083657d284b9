"""Background work on Redis + RQ (``REDIS_URL``): serving replicas enqueue, ``ls-backend
worker`` processes run the lanes. Each lane has its own queue (``ls-backend:<lane>``), so a
GPU box can listen to LoRA only.

Redis holds no work of its own, only "look at (project, lane) at time t" (a *look*): what is
pending comes from the durable store, as in-process. Nothing waits on a lock or a timer that a
dead process held, so a worker killed at any moment is covered within seconds:

- a burst's job is enqueued at once and waits out the rest of its quiet spell itself (at most
  MAX_SETTLE_S): no RQ scheduler, whose lock a killed worker keeps for minutes;
- a job holds a lease that its worker renews every LEASE_RENEW_S; every worker's keeper looks
  every KEEP_S for leases that lapsed (their worker died) and makes their looks again;
- longer delays (a retry) wait as looks without a job, which a keeper enqueues when due;
- a look whose job is neither queued nor running STALE_S after it was due counts as lost;
- a replica announces an event before it stores it, so one killed between storing it and
  asking for the look is covered (a keeper checks that project INCOMING_GRACE_S later);
- every SWEEP_S each worker also derives what is pending from the store (a Redis restart).

While Redis is away, a process keeps its looks in memory and retries them in the background:
a webhook is answered once the event is stored.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from ls_backend.jobs.lanes import Lanes
from ls_backend.jobs.scheduler import MAX_SETTLE_S, Scheduler
from ls_backend.projects import EVENT_RECEIVED, Project, Projects

log = logging.getLogger(__name__)

PREFIX = "ls-backend"
#: Jobs carry only strings (project, lane, job id): JSON, so no job's data is ever unpickled.
SERIALIZER = JSONSerializer
#: How often every worker looks at the whole store for pending work no look stands for (what
#: a Redis restart dropped). Crashes are the keeper's, every KEEP_S.
SWEEP_S = 30.0
#: How often a worker's keeper looks for lapsed leases, looks due or lost, and new events.
KEEP_S = 1.0
#: A running job's lease: renewed every LEASE_RENEW_S, lapsed LEASE_S after its worker died.
LEASE_S = 5.0
LEASE_RENEW_S = 1.0
#: A look with a job counts as lost once due this long ago and its job neither queued nor
#: running (a job dequeued by a worker killed before its lease began, a failed enqueue).
STALE_S = 10.0
#: A project with a new event is checked for work no look stands for this long after (a
#: replica killed between storing an event and asking for its look).
INCOMING_GRACE_S = 5.0
#: A look left behind expires after this (a keeper re-makes it if work is pending).
DUE_TTL_S = 3600
FAILURE_TTL_S = 7 * 24 * 3600
#: Serving replicas never block: a Redis that does not answer within this is away.
REDIS_TIMEOUT_S = 2.0
#: While Redis is away, looks kept in memory are retried after 1, 2, 4 ... this many seconds.
RETRY_MAX_S = 10.0
#: At most this many entries of each kind per keeper pass.
KEEP_BATCH = 100

# A look, atomically, so that a request and a job starting never both miss the other.
# KEYS: the look's hash, the looks' index. ARGV: now, debounce, settle, after, ttl, "1" for a
# sweep (never postpones a look), a new job id, the longest wait a job spends in itself,
# STALE_S, the index's member. Returns {enqueue?, wait, job}.
_REQUEST = """
local now = tonumber(ARGV[1])
local first = tonumber(redis.call('HGET', KEYS[1], 'first'))
local job = redis.call('HGET', KEYS[1], 'job') or ''
local due
if not first then
  first = now
  redis.call('HSET', KEYS[1], 'first', ARGV[1])
end
if ARGV[6] == '1' and redis.call('HEXISTS', KEYS[1], 'due') == 1 then
  due = tonumber(redis.call('HGET', KEYS[1], 'due'))
  if job ~= '' then return {0, tostring(due - now), job} end
else
  due = math.min(now + tonumber(ARGV[2]), first + tonumber(ARGV[3]))
  due = math.max(due, now + tonumber(ARGV[4]))
end
redis.call('HSET', KEYS[1], 'due', tostring(due))
redis.call('EXPIRE', KEYS[1], ARGV[5])
local enqueue = 0
if job == '' and due - now <= tonumber(ARGV[8]) then
  job = ARGV[7]; enqueue = 1
  redis.call('HSET', KEYS[1], 'job', job)
end
if job == '' then
  redis.call('ZADD', KEYS[2], due, ARGV[10])
else
  redis.call('ZADD', KEYS[2], due + tonumber(ARGV[9]), ARGV[10])
end
return {enqueue, tostring(due - now), job}
"""
# A job takes its look once the spell is over: '0' (then it drains), else how long is left,
# or '-1' when the wait is longer than a job spends in itself (a keeper enqueues it when
# due). KEYS: the look, the index. ARGV: now, job id, longest in-job wait, STALE_S, member.
_TAKE = """
local due = tonumber(redis.call('HGET', KEYS[1], 'due'))
if not due then return '0' end
local now = tonumber(ARGV[1])
if due > now then
  if due - now > tonumber(ARGV[3]) then
    if redis.call('HGET', KEYS[1], 'job') == ARGV[2] then
      redis.call('HSET', KEYS[1], 'job', '')
      redis.call('ZADD', KEYS[2], due, ARGV[5])
    end
    return '-1'
  end
  redis.call('HSET', KEYS[1], 'job', ARGV[2])
  redis.call('ZADD', KEYS[2], due + tonumber(ARGV[4]), ARGV[5])
  return tostring(due - now)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[5])
return '0'
"""
# The job of a look is gone (its lease lapsed, or it is neither queued nor running): the look
# is left without a job, due now, unless another job took it since. KEYS: the look, the
# index. ARGV: the gone job's id, now, member.
_ORPHAN = """
if redis.call('HGET', KEYS[1], 'job') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'job', '')
  redis.call('HSET', KEYS[1], 'due', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
"""
# Members of a sorted set scored at or before ARGV[1], removed (at most ARGV[2]).
_POP_DUE = """
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(found) do redis.call('ZREM', KEYS[1], member) end
return found
"""


def queue_name(lane: str) -> str:
    return f"{PREFIX}:{lane}"


def connect(url: str) -> Redis:
    """A connection for looks and leases: it never blocks a request for long."""
    return Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


class RqScheduler(Scheduler):
    """The scheduler with ``REDIS_URL``: a request makes a look, and at most one job per
    (project, lane) and spell; the jobs run wherever ``ls-backend worker`` listens to the
    lane's queue."""

    def __init__(self, projects: Projects, lanes: Lanes, redis: Redis) -> None:
        super().__init__(projects, lanes)
        self.redis = redis
        self._request = redis.register_script(_REQUEST)
        self._take = redis.register_script(_TAKE)
        self._orphan = redis.register_script(_ORPHAN)
        self._pop_due = redis.register_script(_POP_DUE)
        self._looks = f"{PREFIX}:looks"  # look -> when a keeper checks it
        self._leases = f"{PREFIX}:leases"  # "lane:project:job" -> when the lease lapses
        self._incoming = f"{PREFIX}:incoming"  # project -> when a keeper checks it
        self._held: set[str] = set()  # leases of the jobs this process runs
        self._unsent: set[tuple[str, str]] = set()  # looks Redis refused, retried
        self._unsent_lock = threading.Lock()
        self._retrying = False

    def _look_key(self, key: str, lane: str) -> str:
        return f"{PREFIX}:due:{lane}:{key}"

    def queue(self, lane: str) -> Queue:
        return Queue(queue_name(lane), connection=self.redis, serializer=SERIALIZER)

    # --- looks ------------------------------------------------------------------------------

    def notify(self, project: Project, event: str) -> None:
        if event == EVENT_RECEIVED:  # about to be stored: check the project if no look comes
            self._expect(project.key)
            return
        super().notify(project, event)

    def _expect(self, key: str) -> None:
        if self._unsent:  # Redis is away: the looks retried cover the events stored meanwhile
            return
        try:
            self.redis.zadd(self._incoming, {key: time.time() + INCOMING_GRACE_S})
        except RedisError as exc:
            log.warning("Redis is unreachable (%s); storing events on", exc)

    def request(self, key: str, lane: str, after: float = 0.0, sweep: bool = False) -> None:
        """Look at (key, lane) after a quiet spell; a burst of requests enqueues one job. While
        Redis is away, the look waits in memory and is retried in the background."""
        if self._unsent:  # Redis was away a moment ago: do not make a request wait for it
            self._keep_unsent(key, lane)
            return
        try:
            self._send(key, lane, after, sweep)
        except RedisError as exc:
            log.warning("Redis is unreachable (%s): %s lane, project %s waits", exc, lane, key)
            self._keep_unsent(key, lane)

    def _send(self, key: str, lane: str, after: float, sweep: bool) -> None:
        member = f"{lane}:{key}"
        enqueue, _wait, job = self._request(  # {enqueue?, wait, job}
            keys=[self._look_key(key, lane), self._looks],
            args=[
                time.time(),
                self.settings.train_debounce_s,
                MAX_SETTLE_S,
                after,
                DUE_TTL_S,
                int(sweep),
                uuid.uuid4().hex,
                MAX_SETTLE_S,
                STALE_S,
                member,
            ],
        )
        if enqueue:  # a failed enqueue leaves a look whose job is lost: a keeper redoes it
            self._enqueue(key, lane, _text(job))

    def _enqueue(self, key: str, name: str, job: str) -> None:
        self.queue(name).enqueue_call(
            run_job,
            args=(key, name, job),
            job_id=job,
            timeout=self.lanes[name].timeout_s,
            failure_ttl=FAILURE_TTL_S,
            description=f"{name} lane, project {key}",
        )

    def _keep_unsent(self, key: str, lane: str) -> None:
        with self._unsent_lock:
            self._unsent.add((key, lane))
            if self._retrying:
                return
            self._retrying = True
        threading.Thread(target=self._retry_unsent, name="redis-retry", daemon=True).start()

    def _retry_unsent(self) -> None:
        pause = 1.0
        while True:
            time.sleep(pause)
            with self._unsent_lock:
                waiting = sorted(self._unsent)
            try:
                for key, lane in waiting:
                    self._send(key, lane, 0.0, sweep=True)
                    with self._unsent_lock:
                        self._unsent.discard((key, lane))
            except RedisError:
                pause = min(pause * 2, RETRY_MAX_S)
                continue
            with self._unsent_lock:
                if not self._unsent:
                    self._retrying = False
                    log.info("Redis is back: every look that waited is made")
                    return

    def lock_busy(self, key: str, lane: str) -> None:
        """The holder drains what came meanwhile: its loop looks at what is pending after each
        run, and a look left for later has a job of its own. Nothing to keep here, so a
        worker never waits out another's minutes-long LoRA run."""

    def requested_again(self, key: str, lane: str) -> bool:
        return bool(self.redis.exists(self._look_key(key, lane)))  # its job drains them

    # --- a job ----------------------------------------------------------------------------

    def run(self, key: str, name: str, job: str) -> None:
        """A job: wait out the look's spell, then drain (key, lane), under a lease its worker
        renews. Errors outside a run fail the job (RQ keeps it in its failed registry); the
        next sweep retries."""
        lease = f"{name}:{key}:{job}"
        self._held.add(lease)
        self.redis.zadd(self._leases, {lease: time.time() + LEASE_S})
        try:
            member = f"{name}:{key}"
            while True:
                left = float(
                    self._take(
                        keys=[self._look_key(key, name), self._looks],
                        args=[time.time(), job, MAX_SETTLE_S, STALE_S, member],
                    )
                )
                if left < 0:  # a retry's long pause: a keeper enqueues it when due
                    return
                if left == 0:
                    break
                time.sleep(left)  # more events came: the burst lands first
            self.drain(key, name)
        finally:
            self._held.discard(lease)
            self.redis.zrem(self._leases, lease)

    def renew(self) -> None:
        """Keep the leases of this process's running jobs from lapsing."""
        held = list(self._held)
        if held:
            self.redis.zadd(self._leases, dict.fromkeys(held, time.time() + LEASE_S), xx=True)

    # --- the keeper: what a dead process left ------------------------------------------

    def keep(self) -> None:
        """One pass of a worker's keeper: the looks of lapsed leases made again; looks due
        without a job enqueued, lost ones made again; projects with new events checked."""
        now = time.time()
        for lease in self._pop_due(keys=[self._leases], args=[now, KEEP_BATCH]):
            name, key, job = _text(lease).split(":", 2)
            log.warning("%s lane, project %s: its worker went away; looking again", name, key)
            self._lost(key, name, job)
        for member in self.redis.zrangebyscore(self._looks, "-inf", now, 0, KEEP_BATCH):
            name, key = _text(member).split(":", 1)
            self._check_look(key, name, _text(member))
        for key in self._pop_due(keys=[self._incoming], args=[now, KEEP_BATCH]):
            project = self.projects.project(_text(key))
            for lane in self.lanes:
                if lane.pending(project):
                    self.request(project.key, lane.name, sweep=True)

    def _check_look(self, key: str, name: str, member: str) -> None:
        stored = self.redis.hgetall(self._look_key(key, name))
        look = {_text(k): _text(v) for k, v in stored.items()}
        if "due" not in look:  # expired, or taken just now: the store says what is pending
            self.redis.zrem(self._looks, member)
            if self.lanes[name].pending(self.projects.project(key)):
                self.request(key, name, sweep=True)
        elif not look.get("job"):  # a retry's pause is over
            self.request(key, name, sweep=True)
        elif self._job_stands(key, name, look["job"]):  # waiting behind others, or running
            self.redis.zadd(self._looks, {member: time.time() + STALE_S}, xx=True)
        else:
            log.warning("%s lane, project %s: its job was lost; looking again", name, key)
            self._lost(key, name, look["job"])

    def _job_stands(self, key: str, name: str, job_id: str) -> bool:
        """The look's job waits in its queue, or runs under a lease (lapsed ones are gone by
        now). A job that RQ says runs but that holds no lease died before it took one."""
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=SERIALIZER)
        except NoSuchJobError:
            return False
        status = job.get_status(refresh=False)
        if status == "started":
            return self.redis.zscore(self._leases, f"{name}:{key}:{job_id}") is not None
        return status == "queued" and self.queue(name).get_job_position(job_id) is not None

    def _lost(self, key: str, name: str, job: str) -> None:
        self._orphan(
            keys=[self._look_key(key, name), self._looks], args=[job, time.time(), f"{name}:{key}"]
        )
        self.request(key, name, sweep=True)

    # --- what /status and the tests see --------------------------------------------------

    def busy(self) -> bool:
        """Jobs queued or running, or looks waiting, in any lane. (A killed worker's job shows
        as running until its lease lapses.)"""
        if self.redis.zcard(self._looks) or self.redis.zcard(self._leases):
            return True
        return any(self.queue(name).count for name in self.lanes.names())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


#: The scheduler of this worker process (``work``), which its jobs run on.
_WORKER: list[RqScheduler] = []


def run_job(key: str, lane: str, job: str) -> None:
    """What an RQ job runs: one (project, lane) drained in this worker process."""
    _WORKER[0].run(key, lane, job)


class LaneWorker(SimpleWorker):
    """RQ's worker without a fork per job (the encoder and the open projects stay loaded; a
    LoRA round still trains in a child process), which says whether it was asked to stop."""

    stop_asked = False

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_asked = True
        super().request_stop(signum, frame)


def _every(period: float, stop: threading.Event, step: Any, what: str) -> None:
    """Run ``step`` every ``period`` seconds until ``stop``; a failure is logged (once until
    the next success) and tried again, so an outage never ends the loop."""
    failing = False
    while not stop.is_set():
        try:
            step()
            failing = False
        except Exception as exc:  # Redis or the database away: wait, never die
            if not failing:
                kind = type(exc).__name__
                log.warning("%s failed (%s: %s); retrying every %.0f s", what, kind, exc, period)
            failing = True
        stop.wait(period)


def _wait_for_redis(redis: Redis, stop: threading.Event) -> None:
    pause, told = 1.0, False
    while not stop.is_set():
        try:
            redis.ping()
            return
        except RedisError as exc:
            if not told:
                log.warning("Redis is unreachable (%s); waiting for it", exc)
                told = True
        stop.wait(pause)
        pause = min(pause * 2, RETRY_MAX_S)


def work(
    projects: Projects,
    lanes: Lanes,
    url: str,
    names: list[str] | None = None,
    burst: bool = False,
) -> None:
    """Run an RQ worker for the lanes ``names`` (all of ``lanes`` by default) in this process,
    with its keeper, sweep and lease threads; it waits for Redis while Redis is away."""
    scheduler = RqScheduler(projects, lanes, connect(url))
    _WORKER[:] = [scheduler]
    names = names or lanes.names()
    unknown = set(names) - set(lanes.names())
    if unknown:
        raise ValueError(f"unknown queue(s) {sorted(unknown)}; lanes here: {lanes.names()}")
    stop = threading.Event()
    # At start too: what is pending was stored before this worker came.
    loops = [
        (SWEEP_S, scheduler.resume, "the sweep for pending work"),
        (KEEP_S, scheduler.keep, "the keeper"),
        (LEASE_RENEW_S, scheduler.renew, "renewing the running job's lease"),
    ]
    for period, step, what in loops:
        args = (period, stop, step, what)
        threading.Thread(target=_every, args=args, name=what, daemon=True).start()
    connection = Redis.from_url(url)  # RQ blocks on it for minutes: no socket timeout
    try:
        while not stop.is_set():
            _wait_for_redis(connection, stop)
            queues = [
                Queue(queue_name(name), connection=connection, serializer=SERIALIZER)
                for name in names
            ]
            worker = LaneWorker(queues, connection=connection, serializer=SERIALIZER)
            try:
                worker.work(burst=burst)
            except RedisError as exc:  # away between the ping and RQ's start, or at its end
                log.warning("Redis is unreachable (%s)", exc)
            if burst or worker.stop_asked:
                return
            log.warning("the RQ worker stopped (Redis away?); starting it again")
    finally:
        stop.set()
