"""The lanes as an operator sees them: a full disk shows on /status and heals by itself, and a
thousand projects cost no more threads or open files than a handful."""

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fakes import BackendProcess, annotation_event
from fastapi.testclient import TestClient

from ls_backend.server.app import create_app
from ls_backend.settings import Settings
from ls_backend.store.databases import Databases

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""


def make_backend(model_dir: Path) -> BackendProcess:
    return BackendProcess(Settings(model_dir=model_dir, lora_enabled=False, train_debounce_s=0.05))


def label(backend: BackendProcess, key: int, n: int) -> None:
    project = backend.project(key)
    for i in range(n):
        body = annotation_event(i + 1, 100 + i, ["AB"[i % 2]], config=CONFIG, project=key)
        project.store.apply(body)
        backend.scheduler.notify(project, body["action"])


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_shows_on_status_and_the_lane_recovers_when_space_comes_back(small_disk):
    backend = make_backend(small_disk / "models")
    project = backend.project(1)
    project.setup(CONFIG)
    for i in range(4):  # stored while there is room; the lane is woken once the disk is full
        project.store.apply(annotation_event(i + 1, 100 + i, ["AB"[i % 2]], config=CONFIG))
    filler = fill(small_disk)
    try:
        backend.scheduler.request(project.key, "head")
        head = wait_for_state(backend, project, "failed")
        # The status write itself fails first: SQLite's words for it, or the OS's.
        error = head["last_error"]
        assert "disk is full" in error or "No space left" in error, head
        filler.unlink()  # the cause goes away; nobody restarts anything
        wait_for_state(backend, project, "done")
        assert any(v.endswith("-head") for v in project.registry.versions())
    finally:
        backend.scheduler.stop()


def wait_for_state(backend: BackendProcess, project, state: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        head = backend.scheduler.status(project, "head")
        if head["state"] == state:
            return head
        time.sleep(0.1)
    raise AssertionError(f"the head lane never became {state}: {head}")


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_projects_hold_a_bounded_number_of_threads_and_open_files(tmp_path):
    backend = make_backend(tmp_path / "models")
    threads, files = threading.active_count(), open_files()
    try:
        for key in range(1, 1001):
            backend.project(key).setup(CONFIG)
            label(backend, key, 1)  # one label: each head lane runs, finds too few, stops
        assert backend.scheduler.wait_idle(120)
        extra_threads = threading.active_count() - threads
        app = create_app(backend.settings, backend.projects, backend.scheduler)
        client = TestClient(app, base_url="http://localhost")  # no lifespan: no read-ahead
        assert len(client.get("/status").json()["projects"]) == 1000
        assert client.get("/metrics").status_code == 200
        extra_files = open_files() - files  # no garbage collection first: 900 held 2,688
    finally:
        backend.scheduler.stop()
    # The lanes' threads, a dispatcher, and on PostgreSQL the connection pool's workers.
    pool_workers = 3 if backend.settings.database_url_value else 0
    assert extra_threads <= sum(lane.threads for lane in backend.lanes) + 1 + pool_workers
    # Idle SQLite connections are shared by every project (3 files each: db, wal, shm).
    assert extra_files <= Databases.IDLE_CONNECTIONS * 3 + 20 < 400
    print(f"1,000 projects: +{extra_threads} threads, +{extra_files} open files")


def test_rounds_prune_old_versions_and_the_events_every_lane_has_read(tmp_path, monkeypatch):
    """A version per label and every event, for ever: after each round, versions that neither
    serve, nor are among the newest KEEP_VERSIONS, nor were promoted go, and so do events every
    lane that reads events has read; no annotation goes, and a lane that still needs events
    (LoRA, enabled, not run yet) keeps them all."""
    monkeypatch.setattr("ls_backend.jobs.lanes.EVENTS_KEPT_S", 0.0)  # no age floor here
    settings = Settings(
        model_dir=tmp_path / "models", lora_enabled=False, train_debounce_s=0.05, keep_versions=4
    )
    backend = BackendProcess(settings)
    project = backend.project(1)
    project.setup(CONFIG)

    def label_one(i: int) -> None:
        body = annotation_event(
            i + 1, 100 + i, ["AB"[i % 2]], config=CONFIG, project=int(project.key)
        )
        project.store.apply(body)
        backend.scheduler.notify(project, body["action"])
        assert backend.scheduler.wait_idle(60)

    try:
        for i in range(3):
            label_one(i)
        registry = project.registry
        promoted = registry.versions()  # few labels: every round so far was promoted
        assert all(registry.info(v)["promoted"] for v in promoted)
        with registry.lock():
            serving = registry.rollback(promoted[0])  # pinned: later rounds are not promoted
        for i in range(3, 10):
            label_one(i)
    finally:
        backend.scheduler.stop()
    versions = registry.versions()
    unpromoted = [v for v in versions if not registry.info(v).get("promoted")]
    assert set(promoted) <= set(versions) and registry.current() == serving
    assert len(unpromoted) == 4 and unpromoted == versions[-4:]  # the newest 4
    saved = [r["version"] for r in registry.history()]
    assert len(saved) == len(promoted) + 7 and len(versions) == len(promoted) + 4
    assert project.store.count("annotations") == 10  # every label stays
    assert project.store.count("events") == 1  # the newest label event only
    assert project.store.last_seq({"ANNOTATION_CREATED"}) == 10

    lora = Settings(model_dir=tmp_path / "lora", train_debounce_s=0.05, lora_min_labels=1000)
    backend = BackendProcess(lora)
    project = backend.project(2)  # another store: on PostgreSQL both backends share a database
    project.setup(CONFIG)
    try:
        for i in range(3):
            label_one(i)
    finally:
        backend.scheduler.stop()
    assert project.store.count("events") == 3  # LoRA has read none of them yet


def test_the_span_stopping_signal_keeps_a_spread_of_versions_that_stays_chosen():
    from ls_backend.jobs.stopping import _spread

    versions = [({"labels": n}, f"v{n}") for n in range(1, 301)]
    chosen = [model for _, model in _spread(versions, 48)]
    assert len(chosen) <= 48 and chosen[-1] == "v300"
    later = [model for _, model in _spread([*versions, ({"labels": 301}, "v301")], 48)]
    assert set(chosen[:-1]) <= set(later)  # chosen versions stay (their spans are kept)
    assert [m for _, m in _spread(versions[:5], 48)] == ["v1", "v2", "v3", "v4", "v5"]
