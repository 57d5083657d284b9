"""What background work beside Label Studio does to a save: save -> next task through the API,
with the box idle and with one kind of load at a time (why ``core.pacing`` exists).

    .venv/bin/python benchmarks/contention.py [--tasks 10000] [--saves 30]
        [--loads idle,burn,encode,hook,idle]

A real Label Studio 1.23 (SQLite) with one project of long texts (as benchmarks/annotator.py
builds them). Each load runs while the loop saves ``--saves`` annotations (0.2 s apart,
each followed by the next-task request the UI makes):
- ``idle``: nothing else;
- ``burn``: two threads multiplying matrices in a process at nice 10 (any CPU-bound work);
- ``encode``: the backend's encoder embedding 16 long texts at a time, a quarter of the time
  (more than ``BACKGROUND_DUTY``'s default gives all background work);
- ``hook``: a webhook to a server that answers at once (what Label Studio itself spends
  on sending one per save);
- ``ranked``: 200 tasks with a prediction each and the project served by *Uncertainty
  sampling* on them, as a push leaves it (what Label Studio spends on a ranked queue);
- ``connected``: ``ranked`` and ``hook`` together: Label Studio's own cost of a connected
  backend that does nothing else.
"""

from __future__ import annotations

import argparse
import http.server
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from labelstudio_server import ensure_template, running_server  # noqa: E402

# The texts of benchmarks/annotator.py (whose name the tests' browser annotator also has).
_spec = importlib.util.spec_from_file_location("annotator_bench", ROOT / "benchmarks/annotator.py")
assert _spec is not None and _spec.loader is not None
annotator_bench = sys.modules["annotator_bench"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(annotator_bench)

BURN = """
import os, torch
os.nice(10)
torch.set_num_threads(2)
a = torch.randn(800, 800)
while True:
    a @ a
"""
ENCODE = """
import sys, time
from pathlib import Path
from ls_backend.core.embeddings import Encoder
from ls_backend.core.priority import lower_thread_priority
from ls_backend.settings import Settings

settings = Settings(model_dir=Path(sys.argv[1]))
encoder = Encoder(settings.embedding_model, max_length=settings.max_length,
                  runtime=settings.resolved_embedding_backend(),
                  export_dir=settings.model_dir / "onnx")
lower_thread_priority()
texts = [("news " * 200) + str(i) for i in range(1_000_000)]
encoder.encode(texts[:16])
print("ready", flush=True)
for start in range(16, len(texts), 16):
    began = time.monotonic()
    encoder.encode(texts[start:start + 16], background=True)
    time.sleep((time.monotonic() - began) * 3)  # a quarter of the time
"""


class Answer(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def saves(client: httpx.Client, project: int, label: str, n: int) -> list[tuple[float, float]]:
    timings = []
    for _ in range(n):
        task = client.post(f"/api/dm/actions?id=next_task&project={project}", json={}).json()
        result = [{"from_name": "label", "to_name": "text", "type": "choices",
                   "value": {"choices": [label]}}]  # fmt: skip
        began = time.perf_counter()
        client.post(f"/api/tasks/{task['id']}/annotations?project={project}",
                    json={"result": result})  # fmt: skip
        saved = time.perf_counter()
        client.post(f"/api/dm/actions?id=next_task&project={project}", json={})
        timings.append((saved - began, time.perf_counter() - saved))
        time.sleep(0.2)
    return timings


def rank(client: httpx.Client, project: int, label: str, version: str) -> None:
    """A ranking as a push leaves it: 200 unlabeled tasks predicted, the queue on their scores."""
    page = {"project": project, "page_size": 400, "fields": "task_only"}
    tasks = client.get("/api/tasks/", params=page).json()["tasks"]
    todo = [task["id"] for task in tasks if not task.get("is_labeled")][:200]
    result = [{"from_name": "label", "to_name": "text", "type": "choices",
               "value": {"choices": [label]}}]  # fmt: skip
    items = [{"task": task, "result": result, "score": i / 1000, "model_version": version}
             for i, task in enumerate(todo)]  # fmt: skip
    client.post(f"/api/projects/{project}/import/predictions", json=items).raise_for_status()
    queue = {"sampling": "Uncertainty sampling", "model_version": version}
    client.patch(f"/api/projects/{project}/", json=queue).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--saves", type=int, default=30)
    parser.add_argument("--loads", default="idle,burn,encode,hook,ranked,connected,idle")
    args = parser.parse_args()
    data = annotator_bench.dataset("long", args.tasks)
    template, _ = ensure_template()
    with tempfile.TemporaryDirectory() as tmp, running_server(template, Path(tmp)) as studio:
        project = studio.client.projects.create(title="contention", label_config=data.config)
        tasks = [{"text": text} for text in data.texts]
        studio.client.projects.import_tasks(id=project.id, request=tasks)
        client = httpx.Client(
            base_url=studio.url, headers={"Authorization": f"Token {studio.token}"}, timeout=60
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"{args.tasks:,} long texts, {args.saves} saves per load\n")
        print("| load | save median s | next median s | save + next median s (x idle) | max s |")
        print("|---|---|---|---|---|")
        idle = None
        for load in args.loads.split(","):
            helper, hook = None, None
            if load == "burn":
                helper = subprocess.Popen([sys.executable, "-c", BURN])
            elif load == "encode":
                helper = subprocess.Popen(
                    [sys.executable, "-c", ENCODE, str(Path(tmp) / "models")],
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                )
                assert helper.stdout is not None
                helper.stdout.readline()
            if load in ("ranked", "connected"):
                rank(client, project.id, data.labels[0], f"rank-{load}")
            if load in ("hook", "connected"):
                url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
                body = {"project": project.id, "url": url, "send_payload": True,
                        "send_for_all_actions": True}  # fmt: skip
                hook = client.post("/api/webhooks/", json=body).json()["id"]
            time.sleep(1)
            try:
                timings = saves(client, project.id, data.labels[0], args.saves)
            finally:
                if helper is not None:
                    helper.kill()
                if hook is not None:
                    client.delete(f"/api/webhooks/{hook}/")
                if load in ("ranked", "connected"):
                    sequential = {"sampling": "Sequential sampling", "model_version": ""}
                    client.patch(f"/api/projects/{project.id}/", json=sequential)
            total = statistics.median(s + n for s, n in timings)
            idle = idle or total
            print(
                f"| {load} | {statistics.median(s for s, _ in timings):.3f} "
                f"| {statistics.median(n for _, n in timings):.3f} "
                f"| {total:.3f} ({total / idle:.2f}x) | {max(s + n for s, n in timings):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
