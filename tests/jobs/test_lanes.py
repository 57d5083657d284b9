"""The lanes as an operator sees them: a full disk shows on /status and heals by itself, and a
thousand projects cost no more threads or open files than a handful."""

import gc
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fakes import BackendProcess, annotation_event

from ls_backend.projects import OPEN_PROJECTS
from ls_backend.settings import Settings

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
        gc.collect()  # what a reference cycle still holds goes at the next collection anyway
        extra_threads = threading.active_count() - threads
        extra_files = open_files() - files
    finally:
        backend.scheduler.stop()
    assert (
        extra_threads <= sum(lane.threads for lane in backend.lanes) + 1
    )  # the lanes' threads, a dispatcher
    # Open projects keep a connection (3 files: db, wal, shm) per thread that used them.
    assert extra_files <= OPEN_PROJECTS * 3 * (sum(lane.threads for lane in backend.lanes) + 1)
    print(f"1,000 projects: +{extra_threads} threads, +{extra_files} open files")
