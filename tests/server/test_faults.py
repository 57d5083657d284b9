"""kill -9 at random moments while webhooks arrive and head rounds train and save.

Twenty kills, each followed by a restart that must serve a complete model version (its
folder has info.json, it loads, /predict answers) from an intact annotation store (every
acknowledged event is there). Eighteen kills hit a forked process running the real projects
and scheduler over the HashEncoder: it starts in milliseconds, so the kills are many and land
inside training and saving. Two kill the real server (`ls-backend serve`, gunicorn master
and workers, the embedded model) as the README starts it: each start loads the model, too
slow to repeat twenty times in the default suite.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from backend_server import BackendServer
from fakes import BackendProcess, alive, annotation_event, wait_for

from ls_backend.core.registry import Registry
from ls_backend.jobs import training
from ls_backend.jobs.lanes import read_status
from ls_backend.settings import Settings
from ls_backend.store.annotations import LABEL_ACTIONS
from ls_backend.store.databases import Databases

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/><Choice value="C"/></Choices></View>"""
FORKED_KILLS = 18
REAL_KILLS = 2
MAX_EVENTS_PER_LIFE = 5000  # bounds each victim even if a kill never comes
TASKS = [{"id": 1, "data": {"text": "is this A?"}}, {"id": 2, "data": {"text": "or C"}}]


def event(annotation_id: int) -> dict:
    task_id = 100_000 + annotation_id
    choice = "ABC"[annotation_id % 3]
    return annotation_event(
        annotation_id, task_id, [choice], text=f"text number {annotation_id}", config=CONFIG
    )


def settings(model_dir: Path) -> Settings:
    return Settings(model_dir=model_dir, lora_enabled=False, train_debounce_s=0, device="cpu")


def victim(model_dir: str, first_id: int, acks_path: str) -> None:
    """Store events as /webhook does, noting each one acknowledged; head rounds train meanwhile
    (back to back: the kills are to land inside runs, not in the spacing between them)."""
    training.HEAD_DUTY = 1.0
    backend = BackendProcess(settings(Path(model_dir)).model_copy(update={"background_duty": 1.0}))
    project = backend.project(1)
    project.setup(CONFIG)
    fd = os.open(acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    deadline = time.monotonic() + 30
    for annotation_id in range(first_id, first_id + MAX_EVENTS_PER_LIFE):
        body = event(annotation_id)
        project.store.apply(body)
        backend.scheduler.notify(project, body["action"])
        os.write(fd, b"%d\n" % annotation_id)  # the answer /webhook would send now
        time.sleep(0.002)
        if time.monotonic() > deadline:
            break


def read_acks(path: Path) -> set[int]:
    """Complete lines only: a kill may cut the last one short."""
    text = path.read_text() if path.exists() else ""
    return {int(line) for line in text.split("\n")[:-1]}


def stored_ids(model_dir: Path) -> set[int]:
    """Project 1's stored annotations (in PostgreSQL on scripts/test's second pass)."""
    databases = Databases(model_dir, os.environ.get("DATABASE_URL"))
    try:
        with databases.project("1").session() as db:
            return {row[0] for row in db.execute("SELECT annotation_id FROM annotations")}
    finally:
        databases.close()


def assert_restart_serves(model_dir: Path, acked: set[int], what: str) -> None:
    """A restarted process: a complete version serves, nothing acknowledged is missing, and
    what the killed process left untrained trains now, with no event to wake it."""
    backend = BackendProcess(settings(model_dir))
    worker = backend.scheduler
    try:
        project = backend.project(1)
        version = project.setup(CONFIG)
        assert (project.registry.root / version / "info.json").is_file(), what
        worker.resume()  # what the app's start-up does
        assert worker.wait_idle(60), what
        trained = project.store.lane_done("head")
        assert trained == project.store.last_seq(LABEL_ACTIONS), f"{what}: left untrained"
        assert worker.status(project, "head")["state"] == "done", what
        assert not list(project.registry.root.glob(".tmp-*")), f"{what}: half-written versions"
        version = project.setup(CONFIG)
        assert (project.registry.root / version / "info.json").is_file(), what
        for folder in project.registry.root.glob("v*"):
            assert (folder / "info.json").is_file(), f"{what}: {folder.name} has no info.json"
        batch = project.predict(TASKS)
        assert batch.model_version == version and len(batch.results) == len(TASKS), what
        missing = acked - stored_ids(model_dir)
        assert not missing, f"{what}: acknowledged annotations lost: {sorted(missing)[:10]}"
    finally:
        worker.stop()


def test_kill_9_during_training_and_saving_loses_nothing(tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    model_dir, acks = tmp_path / "models", tmp_path / "acks"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ls_backend.projects", "ls_backend.jobs.threads", "fakes"])
    during_run = during_save = 0
    next_id = 1
    for kill in range(FORKED_KILLS):
        what = f"kill {kill + 1} (seed {seed})"
        proc = context.Process(target=victim, args=(str(model_dir), next_id, str(acks)))
        proc.start()
        # Head rounds start once events flow; kill anywhere in the next second or so.
        deadline = time.monotonic() + 60
        while len(read_acks(acks)) < next_id and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 1.2))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        status = read_status(BackendProcess(settings(model_dir)).project(1), "head")
        during_run += status.state == "running"
        during_save += status.state == "running" and status.stage == "save"
        acked = read_acks(acks)
        assert acked, what
        next_id = max(acked) + 1
        assert_restart_serves(model_dir, acked, what)
    print(f"\nforked kills: {FORKED_KILLS}: {during_run} inside a head run, {during_save} saving")
    assert during_run >= FORKED_KILLS // 2, f"kills missed the runs (seed {seed})"


def wait_for_head(url: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        head = httpx.get(f"{url}/status").json()["projects"]["1"]["jobs"]["head"]
        if head["state"] not in {"queued", "running"} or time.monotonic() > deadline:
            return head
        time.sleep(0.2)


def test_kill_9_of_the_real_server_while_it_trains(tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    model_dir = tmp_path / "models"
    server = BackendServer(model_dir, {"LORA_ENABLED": "false", "TRAIN_DEBOUNCE_S": "0"})
    acked: set[int] = set()
    next_id = iter(range(1, 100_000))
    try:
        server.start()
        for kill in range(REAL_KILLS):
            what = f"real kill {kill + 1} (seed {seed})"
            setup = httpx.post(f"{server.url}/setup", json={"project": "1.1", "schema": CONFIG})
            assert setup.status_code == 200, what
            stop = threading.Event()

            def send(url: str = server.url, stop: threading.Event = stop) -> None:
                with httpx.Client(base_url=url, timeout=10) as http:
                    for _ in range(MAX_EVENTS_PER_LIFE):
                        annotation_id = next(next_id)
                        try:
                            reply = http.post("/webhook", json=event(annotation_id))
                        except httpx.HTTPError:
                            return  # killed
                        if reply.status_code == 200:
                            acked.add(annotation_id)
                        if stop.is_set():
                            return

            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(rng.uniform(0.5, 3.0))
            assert server.proc is not None
            os.killpg(server.proc.pid, signal.SIGKILL)  # the master and every worker
            server.proc.wait(10)
            stop.set()
            sender.join(30)
            server.start()  # the restart: loads the model again
            setup = httpx.post(f"{server.url}/setup", json={"project": "1.1", "schema": CONFIG})
            version = setup.json()["model_version"]
            assert (model_dir / "1" / "models" / version / "info.json").is_file(), what
            reply = httpx.post(
                f"{server.url}/predict", json={"tasks": TASKS, "project": "1.1"}, timeout=60
            )
            assert reply.status_code == 200, f"{what}: {reply.text}"
            assert len(reply.json()["results"]) == len(TASKS), what
            missing = acked - stored_ids(model_dir)
            assert not missing, f"{what}: acknowledged annotations lost: {sorted(missing)[:10]}"
            head = wait_for_head(server.url)  # the start-up resumes what the kill left
            assert head["state"] == "done", f"{what}: {head}"
    finally:
        server.stop(signal.SIGKILL)
    assert len(acked) > 0


def test_a_half_written_version_left_by_a_kill_is_removed_by_the_next_save(tmp_path):
    registry = Registry(tmp_path)
    dead = tmp_path / ".tmp-killed-writer"
    dead.mkdir()
    (dead / "head.npz").write_bytes(b"partial")
    assert registry.save("head", lambda path: None, {}) == "v0001-head"
    assert not dead.exists()


def test_a_steady_stream_of_events_settles_between_runs(tmp_path, monkeypatch):
    """Events arriving faster than TRAIN_DEBOUNCE_S for longer than its cap: after each run the
    lane waits for a quiet spell again instead of re-running at once (soak: 23 runs for one
    1,000-event burst before)."""
    monkeypatch.setattr(
        "ls_backend.jobs.threads.MAX_SETTLE_S", 0.5
    )  # the cap, shorter than the stream
    backend = BackendProcess(
        Settings(model_dir=tmp_path, lora_enabled=False, train_debounce_s=0.2, device="cpu")
    )
    worker = backend.scheduler
    try:
        project = backend.project(1)
        project.setup(CONFIG)
        started = time.monotonic()
        for annotation_id in range(1, 2000):  # ~2.5 s of events, about 100 per second
            project.store.apply(event(annotation_id))
            worker.notify(project, "ANNOTATION_CREATED")
            time.sleep(0.01)
            if time.monotonic() - started > 2.5:
                break
        assert worker.wait_idle(60)
        # A run per 0.5 s settle of the 2.5 s stream, plus the last one (without settling
        # again after each run: dozens).
        assert worker.status(project, "head")["runs"] <= 7
    finally:
        worker.stop()


def test_a_training_child_does_not_outlive_its_server(tmp_path):
    """A server killed mid-run: its LoRA child exits instead of training on as an orphan."""
    script = tmp_path / "server.py"
    script.write_text(
        "import sys\n"
        "from fakes import orphan_probe\n"
        "from ls_backend.jobs.training import run_isolated\n"
        "if __name__ == '__main__':\n"
        "    run_isolated(orphan_probe, sys.argv[1])\n"
    )
    pid_file = tmp_path / "child.pid"
    tests = str(Path(__file__).parents[1])  # where fakes.py is
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    server = subprocess.Popen([sys.executable, str(script), str(pid_file)], env=env)
    child = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the child"))
    server.kill()
    server.wait()
    wait_for(lambda: not alive(child), 10, "the orphan to exit")
