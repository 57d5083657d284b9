"""Background work on a real Redis with RQ: replicas enqueue, worker processes run the lanes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from fakes import BackendProcess, alive, annotation_event, wait_for
from redis import Redis
from redis_server import RedisServer
from rq import Worker

from ls_backend.jobs import rq as rq_jobs
from ls_backend.jobs.lanes import read_status
from ls_backend.jobs.rq import RqScheduler
from ls_backend.jobs.training import run_isolated, training_lanes
from ls_backend.settings import Settings

TESTS = Path(__file__).resolve().parents[1]
CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def settings_for(model_dir: Path, redis_url: str, **extra) -> Settings:
    return Settings(
        **{"lora_enabled": False, "train_debounce_s": 0.2, **extra},
        model_dir=model_dir,
        redis_url=redis_url,
    )


@pytest.fixture
def replicas(tmp_path, redis):
    """Two serving replicas: separate backends sharing only MODEL_DIR and Redis."""
    backends = []
    for _ in range(2):
        backends.append(rq_backend(settings_for(tmp_path / "models", redis.url), redis.url))
    backends[0].project(1).setup(CONFIG)
    backends[0].project(1).connect()
    return backends


def rq_backend(settings: Settings, url: str) -> BackendProcess:
    """A serving replica: it enqueues, ``ls-backend worker`` processes run the lanes."""

    def scheduler(projects):
        return RqScheduler(projects, training_lanes(settings), Redis.from_url(url))

    return BackendProcess(settings, scheduler=scheduler)


class Workers:
    """`ls-backend worker` processes (tests/rq_worker.py), killed at the end."""

    def __init__(self, tmp_path: Path, redis_url: str, env: dict[str, str]) -> None:
        self.tmp_path, self.procs = tmp_path, []
        self.env = {
            **os.environ,
            "MODEL_DIR": str(tmp_path / "models"),
            "REDIS_URL": redis_url,
            "TRAIN_DEBOUNCE_S": "0.2",
            "LORA_ENABLED": "false",
            "SWEEP_S": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
            **env,
        }

    def start(self, lanes: str | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "ab")  # noqa: SIM115
        args = [sys.executable, str(TESTS / "rq_worker.py"), *([lanes] if lanes else [])]
        proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """kill -9 of a worker with whatever it started (a LoRA child, RQ's helpers)."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for proc in self.procs:
            self.kill(proc)


@pytest.fixture
def workers(tmp_path, redis):
    started = Workers(tmp_path, redis.url, {})
    yield started
    started.stop()


def send(backend: BackendProcess, i: int, label: str) -> None:
    """What /webhook does: store the event, then notify the scheduler."""
    body = annotation_event(i, 1000 + i, [label], config=CONFIG)
    project = backend.project(1)
    project.store.apply(body)
    backend.scheduler.notify(project, body["action"])


def test_a_burst_across_two_replicas_is_stored_once_and_becomes_at_most_two_runs(replicas, workers):
    workers.start()
    for i in range(300):
        send(replicas[i % 2], i, "AB"[i % 2])
    assert replicas[0].scheduler.wait_idle(120)
    project = replicas[1].project(1)
    assert project.store.count("annotations") == 300
    head = read_status(project, "head")
    assert head.state == "done" and head.runs <= 2
    assert project.registry.info(project.registry.current())["labels"] == 300
    # Either replica reports the same thing: the state is in the store and MODEL_DIR.
    assert replicas[0].scheduler.status(replicas[0].project(1), "head") == replicas[
        1
    ].scheduler.status(project, "head")


def test_serving_replicas_never_train_the_work_waits_for_a_worker(replicas, workers):
    for i in range(10):
        send(replicas[0], i, "AB"[i % 2])
    time.sleep(1.0)
    project = replicas[0].project(1)
    assert replicas[0].scheduler.status(project, "head")["state"] == "queued"
    assert project.registry.current().endswith("-prototype")
    workers.start("head")
    assert replicas[0].scheduler.wait_idle(60)
    assert project.registry.current().endswith("-head")


def test_a_redis_restart_loses_no_pending_work(tmp_path, replicas, workers, redis):
    for i in range(10):
        send(replicas[0], i, "AB"[i % 2])
    redis.stop()  # the queued job goes with it (no persistence in this restart)
    redis.start(persist=False)
    Redis.from_url(redis.url).flushall()
    workers.start()  # its start-up sweep finds the stored events
    assert replicas[0].scheduler.wait_idle(60)
    project = replicas[0].project(1)
    assert project.registry.info(project.registry.current())["labels"] == 10


def test_a_worker_killed_during_a_lora_run_leaves_serving_alone_and_another_redoes_it(
    tmp_path, redis
):
    from core.test_lora import save_tiny_bert

    lora = {
        "lora_enabled": True,
        "lora_backbone": save_tiny_bert(tmp_path / "tiny"),
        "lora_min_labels": 30,
        "lora_every": 30,
        "lora_epochs": 1,
        "lora_min_steps": 0,
        "max_length": 16,
        "mc_samples": 2,
        "device": "cpu",
    }
    env = {key.upper(): str(value) for key, value in lora.items()}
    workers = Workers(tmp_path, redis.url, env)
    backend = rq_backend(settings_for(tmp_path / "models", redis.url, **lora), redis.url)
    project = backend.project(1)
    project.setup(CONFIG)
    try:
        workers.start("head")
        for i in range(40):
            send(backend, i, "AB"[i % 2])
        # A head serves before the adapter's run starts (its job waits for a LoRA worker).
        wait_for(lambda: (project.registry.current() or "").endswith("-head"), 60, "a head")
        first = workers.start("lora")
        assert wait_for(lambda: read_status(project, "lora").state == "running", 60)
        workers.kill(first)
        time.sleep(1.0)
        # Nothing half-written serves, or is even listed: versions appear only complete.
        assert not any(v.endswith("-lora") for v in project.registry.versions())
        assert project.registry.current().endswith("-head")
        workers.start("lora")  # the other GPU box: its sweep finds the lane still pending
        assert backend.scheduler.wait_idle(180)
        status = read_status(project, "lora")
        assert status.state == "done", status.last_error
        assert status.last_result["version"].endswith("-lora")
    finally:
        workers.stop()


def test_status_and_metrics_agree_whichever_replica_answers(replicas, workers):
    from fastapi.testclient import TestClient

    from ls_backend.server.app import create_app

    workers.start()
    for i in range(30):
        send(replicas[i % 2], i, "AB"[i % 2])
    assert replicas[0].scheduler.wait_idle(60)
    shared = ("ls_backend_project_", "ls_backend_lane_")
    answers = []
    for backend in replicas:
        app = create_app(backend.settings, backend.projects, backend.scheduler)
        with TestClient(app, base_url="http://localhost") as client:
            text = client.get("/metrics").text
            lines = sorted(line for line in text.splitlines() if line.startswith(shared))
            answers.append((client.get("/status").json()["projects"], lines))
    assert answers[0] == answers[1]
    assert 'ls_backend_project_annotations{project="1"} 30.0' in answers[0][1]
    assert any(
        line.startswith('ls_backend_lane_runs{lane="head",project="1"} ') for line in answers[0][1]
    )


# --- a process killed at the worst moment: the work is done within 15 s (issue 24, item 3) ---

#: What recovery may take here: a new worker from when it listens, a surviving one from the
#: kill. The goal is 15 s (benchmarks/scale.py --part crash measures it); this bound leaves
#: room for a loaded test machine and still fails a recovery that waits for the 30 s sweep.
RECOVERY_S = 25.0


def served_labels(project) -> int:
    version = project.registry.current()
    return int(project.registry.info(version).get("labels", 0)) if version else 0


def job_holder(redis_url: str, procs) -> subprocess.Popen[bytes] | None:
    """The worker process (of ``procs``) running a job now, per RQ's worker registry."""
    pids = {proc.pid: proc for proc in procs if proc.poll() is None}
    for worker in Worker.all(connection=Redis.from_url(redis_url)):
        if worker.get_current_job_id() and worker.pid in pids:
            return pids[worker.pid]
    return None


def workers_up(redis_url: str, procs) -> bool:
    registered = {worker.pid for worker in Worker.all(connection=Redis.from_url(redis_url))}
    return all(proc.pid in registered for proc in procs)


@pytest.fixture
def on_postgres(tmp_path, redis, database_url):
    """A serving replica (in this process) and ``Workers`` sharing PostgreSQL and Redis, the
    sweep at its production period (what must come back sooner is the keeper's)."""

    def make(**settings):
        backend = rq_backend(
            settings_for(tmp_path / "models", redis.url, database_url=database_url, **settings),
            redis.url,
        )
        backend.project(1).setup(CONFIG)
        backend.project(1).connect()
        env = {"DATABASE_URL": database_url, "SWEEP_S": str(rq_jobs.SWEEP_S)}
        started.append(Workers(tmp_path, redis.url, env))
        return backend, started[-1]

    started: list[Workers] = []
    yield make
    for workers in started:
        workers.stop()


@pytest.mark.parametrize("replacement", ["a new worker", "the surviving worker"])
@pytest.mark.parametrize("moment", ["queued", "running"])
def test_a_worker_killed_with_a_job_queued_or_running_is_replaced_within_15_s(
    on_postgres, redis, moment, replacement
):
    """Queued: the job waits out a 4 s quiet spell in its worker. Running: the head round
    takes 60 s in its worker. Either way, kill -9 that worker: a new worker, or the one that
    survives, trains the waiting labels within 15 s, and nothing else serves meanwhile."""
    backend, workers = on_postgres(train_debounce_s=4.0 if moment == "queued" else 0.2)
    project = backend.project(1)
    for i in range(4):
        send(backend, i, "AB"[i % 2])
    first = workers.start("head")  # its start-up sweep finds the 4 labels
    assert wait_for(lambda: served_labels(project) == 4, 60, "a head on 4 labels")
    candidates = [first]
    if moment == "running":  # the worker to kill trains slowly; a survivor comes later
        workers.stop()
        workers.env["SLOW_HEAD_S"] = "60"
        candidates = [workers.start("head")]
        workers.env.pop("SLOW_HEAD_S")
    elif replacement == "the surviving worker":  # either may take the job: kill the one that does
        candidates.append(workers.start("head"))
    assert wait_for(lambda: workers_up(redis.url, candidates), 60, "the workers")
    for i in range(4, 8):
        send(backend, i, "AB"[i % 2])
    victim = wait_for(lambda: job_holder(redis.url, candidates), 30, "a worker with the job")
    if moment == "running":
        assert wait_for(lambda: read_status(project, "head").state == "running", 30)
        if replacement == "the surviving worker":
            candidates.append(workers.start("head"))
            assert wait_for(lambda: workers_up(redis.url, candidates), 60, "the survivor")
    serving = project.registry.current()
    workers.kill(victim)
    started = time.monotonic()
    time.sleep(0.5)
    assert project.registry.current() == serving  # untouched until the labels are trained
    if replacement == "a new worker":
        # Timed from when it listens: its start-up (imports: 10 s and more on this busy 2-core
        # box) comes first; benchmarks/scale.py times it from the process start.
        new = workers.start("head")
        wait_for(lambda: workers_up(redis.url, [new]), 60, "the new worker")
        started = time.monotonic()
    wait_for(lambda: served_labels(project) == 8, 60, "a head on all 8 labels")
    took = time.monotonic() - started
    moment_ = "it listened" if replacement == "a new worker" else "the kill"
    assert took <= RECOVERY_S, f"{took:.1f} s after {moment_}"


def _replica_killed_mid_webhook(model_dir: str, redis_url: str, database_url: str) -> None:
    """A serving replica that stores 6 webhooks (through the route's code) and hangs, as if
    killed, between storing the 6th and asking for its look."""
    from ls_backend.server import routes

    settings = settings_for(Path(model_dir), redis_url, database_url=database_url)
    backend = rq_backend(settings, redis_url)
    for i in range(6):
        if i == 5:  # the first 5 are trained; the kill lands after the store, before the request
            wait_for(lambda: served_labels(backend.project(1)) == 5, 60, "5 labels trained")
            RqScheduler.request = lambda *args, **kwargs: time.sleep(3600)  # type: ignore
        body = annotation_event(i, 1000 + i, ["AB"[i % 2]], config=CONFIG)
        routes._webhook(backend.projects, json.dumps(body).encode())


def test_a_replica_killed_mid_webhook_loses_nothing_stored(tmp_path, on_postgres, redis):
    backend, workers = on_postgres()
    project = backend.project(1)
    workers.start("head")
    args = (str(tmp_path / "models"), redis.url, backend.settings.database_url_value)
    context = multiprocessing.get_context("spawn")  # this process holds threads
    replica = context.Process(target=_replica_killed_mid_webhook, args=args)
    replica.start()
    try:
        wait_for(lambda: project.store.count("annotations") == 6, 120, "6 events stored")
        time.sleep(0.5)  # the replica hangs before asking for the 6th event's look
        assert served_labels(project) == 5
    finally:
        os.kill(replica.pid, signal.SIGKILL)
        replica.join()
    killed = time.monotonic()
    wait_for(lambda: served_labels(project) == 6, 60, "the 6th label trained")
    assert time.monotonic() - killed <= RECOVERY_S


def test_a_worker_and_a_replica_started_while_redis_is_down_wait_for_it(tmp_path, redis):
    redis.stop()
    workers = Workers(tmp_path, redis.url, {})
    try:
        worker = workers.start("head")
        time.sleep(3.0)
        assert worker.poll() is None, "the worker gave up on Redis"
        backend = rq_backend(settings_for(tmp_path / "models", redis.url), redis.url)
        project = backend.project(1)
        project.setup(CONFIG)
        project.connect()
        for i in range(6):  # stored, and their look kept until Redis is back
            send(backend, i, "AB"[i % 2])
        assert project.store.count("annotations") == 6
        redis.start(persist=False)
        wait_for(lambda: served_labels(project) == 6, 60, "the labels trained")
    finally:
        workers.stop()


# --- RQ's side: what its jobs carry, and a job stopped by its timeout ------------------------


def test_jobs_are_json_never_pickles(replicas, redis):
    send(replicas[0], 1, "A")
    connection = Redis.from_url(redis.url)
    jobs = connection.lrange("rq:queue:ls-backend:head", 0, -1)
    jobs += connection.zrange("rq:scheduled:ls-backend:head", 0, -1)  # RQ's delayed ones
    assert jobs
    for job_id in jobs:
        data = zlib.decompress(connection.hget(f"rq:job:{job_id.decode()}", "data"))
        function, _instance, args, _kwargs = json.loads(data)
        assert function == "ls_backend.jobs.rq.run_job" and args[:2] == ["1", "head"]


def _sleep_in_child(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)


def test_a_job_timeout_stops_the_lora_child(tmp_path):
    """RQ stops a job at its timeout by raising in the worker's thread (SIGALRM): the LoRA
    round's child must stop with it, not train on to the end of its round."""
    from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    # The child's start (spawn, imports) takes seconds on a busy machine: 20 s to be in it.
    with pytest.raises(JobTimeoutException), UnixSignalDeathPenalty(20, JobTimeoutException):
        run_isolated(_sleep_in_child, str(pid_file))
    assert time.monotonic() - started < 60, "the job waited for its child"
    child = int(pid_file.read_text())
    assert wait_for(lambda: not alive(child), 10, "the child to stop")
