"""A stand-in Label Studio for tests of what a real one cannot be made to do on demand: hold a
page of tasks for seconds, return an empty page, ignore ``page``. It answers the calls the
backend's client makes (projects, tasks, predictions, ML backends, webhooks) from memory."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "f" * 40


@dataclass
class FakeProject:
    label_config: str
    tasks: list[dict[str, Any]] = field(default_factory=list)  # {"id", "data", "annotations"}
    ml: list[dict[str, Any]] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Hold:
    """Hold a request for page ``page`` of project ``project``'s tasks until ``release`` is set
    (at most ``timeout_s``); ``reached`` is set when the request arrives."""

    project: int
    page: int
    timeout_s: float = 60.0
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FakeLabelStudio:
    def __init__(self) -> None:
        self.projects: dict[int, FakeProject] = {}
        self.holds: list[Hold] = []
        self.ignores_page = False  # every page is page 1
        self.empty_pages = False  # every page is empty, total as it should be
        self.requests: list[tuple[str, str]] = []
        self._ids = iter(range(1, 10**9))
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, payload = fake.reply(self.command, self.path, json.loads(raw or "null"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeLabelStudio:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for hold in self.holds:
            hold.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_project(self, pid: int, label_config: str, texts: list[str]) -> FakeProject:
        project = FakeProject(label_config)
        project.tasks = [
            {"id": pid * 10_000 + i, "data": {"text": text}, "annotations": []}
            for i, text in enumerate(texts, start=1)
        ]
        self.projects[pid] = project
        return project

    # --- the API -----------------------------------------------------------------------------

    def reply(self, method: str, raw_path: str, body: Any) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path, query = parts.path.rstrip("/"), {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append((method, path))
        if method == "GET" and path == "/api/tasks":
            return 200, self._tasks(query)
        if match := re.fullmatch(r"/api/projects/(\d+)", path):
            project = self.projects[int(match[1])]
            if method == "PATCH":
                return 200, {}
            labeled = sum(bool(t["annotations"]) for t in project.tasks)
            return 200, {
                "id": int(match[1]),
                "label_config": project.label_config,
                "task_number": len(project.tasks),
                "num_tasks_with_annotations": labeled,
                "total_predictions_number": 0,
            }
        if re.fullmatch(r"/api/projects/\d+/import/predictions", path):
            return 201, {"created": len(body)}
        if path == "/api/predictions" and method == "POST":
            return 201, {"id": next(self._ids)}
        if path.startswith("/api/predictions/"):
            return 204, None
        if path == "/api/ml":
            return 200, self.projects[int(query["project"])].ml
        if path == "/api/webhooks":
            return 200, self.projects[int(query["project"])].webhooks
        if match := re.fullmatch(r"/api/webhooks/(\d+)", path):
            for project in self.projects.values():
                for hook in project.webhooks:
                    if hook["id"] == int(match[1]):
                        hook.update(body)
                        return 200, hook
        return 404, {"detail": f"no fake for {method} {path}"}

    def _tasks(self, query: dict[str, str]) -> dict[str, Any]:
        pid, page = int(query["project"]), int(query.get("page", 1))
        size = int(query.get("page_size", 100))
        tasks = self.projects[pid].tasks
        selection = json.loads(query.get("query", "{}"))
        if "selectedItems" in selection:
            chosen = set(selection["selectedItems"]["included"])
            tasks = [t for t in tasks if t["id"] in chosen]
        elif "filters" in selection:  # tasks with annotations
            tasks = [t for t in tasks if t["annotations"]]
        for hold in self.holds:
            if (hold.project, hold.page) == (pid, page):
                hold.reached.set()
                hold.release.wait(hold.timeout_s)
        at = 0 if self.ignores_page else (page - 1) * size
        shown = [] if self.empty_pages else tasks[at : at + size]
        return {"tasks": shown, "total": len(tasks)}
