"""Many projects in one serving process: open files, threads, the time of /status and
/metrics, and whether reading them writes anything.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/projects.py [--projects 1000] [--calls 5]

Each project is connected (/setup's path), gets one label (its head lane runs, finds too few
labels and stops), as in ``tests/jobs/test_lanes.py``. Then, without a forced garbage
collection: the process's open files and threads; /status and /metrics, the first call (cold)
and the median of ``--calls`` more (warm); how many store files the first /status changed.
Embeddings are pseudo-random (``tests/fakes.HashEncoder``): no model is loaded.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fakes import HashEncoder, annotation_event  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ls_backend.jobs import start_scheduler  # noqa: E402
from ls_backend.projects import Projects  # noqa: E402
from ls_backend.server.app import create_app  # noqa: E402
from ls_backend.settings import Settings  # noqa: E402

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def stamps(model_dir: Path) -> dict[Path, tuple[int, int]]:
    """Every store's database file: (mtime, size)."""
    found = {}
    for path in model_dir.glob("*/annotations.sqlite"):
        stat = path.stat()
        found[path] = (stat.st_mtime_ns, stat.st_size)
    return found


def timed(client: TestClient, path: str, calls: int) -> tuple[float, float]:
    """The first call's seconds, and the median of ``calls`` more."""
    started = time.perf_counter()
    assert client.get(path).status_code == 200
    cold = time.perf_counter() - started
    warm = []
    for _ in range(calls):
        started = time.perf_counter()
        assert client.get(path).status_code == 200
        warm.append(time.perf_counter() - started)
    return cold, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        settings = Settings(model_dir=model_dir, lora_enabled=False, train_debounce_s=0.05)
        projects = Projects(settings, encoder=HashEncoder())
        scheduler = start_scheduler(projects)
        threads, files = threading.active_count(), open_files()
        started = time.perf_counter()
        for key in range(1, args.projects + 1):
            project = projects.project(key)
            project.setup(CONFIG)
            project.connect()
            body = annotation_event(1, 100, ["A"], config=CONFIG, project=key)
            project.store.apply(body)
            projects.emit(project, body["action"])
        assert scheduler.wait_idle(600)
        made = time.perf_counter() - started
        figures: dict[str, object] = {
            "projects": args.projects,
            "made_s": round(made, 1),
            "extra_threads": threading.active_count() - threads,
            "extra_open_files": open_files() - files,
        }
        app = create_app(settings, projects, scheduler)
        with TestClient(app, base_url="http://localhost") as client:
            before = stamps(model_dir)
            started = time.perf_counter()
            body = client.get("/status").json()
            figures["status_cold_s"] = round(time.perf_counter() - started, 4)
            after = stamps(model_dir)
            assert len(body["projects"]) == args.projects
            changed = [p for p, s in after.items() if before.get(p) != s]
            figures["store_files"] = len(before)
            figures["store_files_changed_by_one_status"] = len(changed)
            _, figures["status_warm_s"] = timed(client, "/status", args.calls)
            figures["metrics_cold_s"], figures["metrics_warm_s"] = timed(
                client, "/metrics", args.calls
            )
            figures["extra_open_files_after_status"] = open_files() - files
            gc.collect()
            figures["extra_open_files_after_gc"] = open_files() - files
        scheduler.stop()
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
