"""Background work on a real Redis with RQ: replicas enqueue, worker processes run the lanes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import BackendProcess, annotation_event, wait_for
from redis import Redis
from redis_server import RedisServer

from ls_backend.jobs.lanes import read_status
from ls_backend.jobs.rq import RqScheduler
from ls_backend.jobs.training import training_lanes
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
        **{"lora_enabled": False, **extra},
        model_dir=model_dir,
        redis_url=redis_url,
        train_debounce_s=0.2,
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
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


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
    assert replicas[0].scheduler.status(replicas[0].project(1), "head") == replicas[1].scheduler.status(
        project, "head"
    )


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
        first.send_signal(signal.SIGKILL)
        first.wait()
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
