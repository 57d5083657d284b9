"""Basic auth on, connected as the README says: Label Studio's webhooks still reach the backend
(it gives its own webhook the credentials itself, and no other backend's), and annotations
train a new version (real Label Studio)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from backend_server import BackendServer
from fakes import wait_for
from test_sync import api, label

from ls_backend.labelstudio.client import LabelStudioClient

pytestmark = pytest.mark.integration

AUTH = ("admin", "a-long-backend-password")
TOKEN = "a-long-random-webhook-token-0123456789"


class OtherBackend:
    """Another ML backend connected to the same project: answers Label Studio and records
    the Authorization header of every webhook it gets."""

    def __init__(self) -> None:
        self.webhooks: list[str | None] = []
        seen = self.webhooks

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path.startswith("/webhook"):
                    seen.append(self.headers.get("Authorization"))
                reply: dict[str, Any] = {"status": "UP"}
                if self.path.startswith("/setup"):
                    reply = {"model_version": "other-1"}
                elif self.path.startswith("/predict"):
                    reply = {"results": []}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def hooks_by_url(client: httpx.Client, pid: int) -> dict[str, dict[str, Any]]:
    return {h["url"]: h for h in client.get("/api/webhooks/", params={"project": pid}).json()}


def labels_train(label_studio, backend, make_ls_project, trec_labels, trec_test_rows, auth):
    """Connect ``backend`` (with basic auth) and another backend to a new project; wait for
    our webhook to get its header; label 10 tasks and wait for a head version to serve.
    Returns the project id, Label Studio's API client and the other backend."""
    other = OtherBackend()
    rows = trec_test_rows[450:480]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    pid = project["id"]
    ls = LabelStudioClient(label_studio.url, label_studio.token)
    ls.ensure_ml_backend(pid, other.url, "another backend")
    ls.ensure_ml_backend(pid, backend.url, "ls-backend", basic_auth=AUTH)
    ls.close()
    client = api(label_studio)
    ours = f"{backend.url}/webhook"

    def webhook_has_credentials() -> bool:
        return "Authorization" in (hooks_by_url(client, pid)[ours].get("headers") or {})

    wait_for(webhook_has_credentials, what="the backend to give its webhook the credentials")
    assert httpx.get(f"{backend.url}/status").status_code == 401  # auth is on

    for task_id, row in zip(project["task_ids"][:10], rows, strict=False):
        label(client, task_id, row["label"])

    def head_serves() -> str | None:
        status = httpx.get(f"{backend.url}/status", auth=auth).json()["projects"][str(pid)]
        version = status["model_version"] or ""
        return version if status["annotations"] == 10 and version.endswith("-head") else None

    wait_for(head_serves, what="10 annotations stored and a head version serving")
    return pid, client, other


def test_with_basic_auth_annotations_train_and_no_other_backend_gets_our_credentials(
    label_studio, make_ls_project, tmp_path, trec_labels, trec_test_rows
):
    env = {
        "LORA_ENABLED": "false",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "BASIC_AUTH_USER": AUTH[0],
        "BASIC_AUTH_PASS": AUTH[1],
    }
    backend = BackendServer(tmp_path / "models", env=env).start()
    try:
        pid, client, other = labels_train(
            label_studio, backend, make_ls_project, trec_labels, trec_test_rows, AUTH
        )
        try:
            hooks = hooks_by_url(client, pid)
            pair = base64.b64encode(":".join(AUTH).encode()).decode()
            assert hooks[f"{backend.url}/webhook"]["headers"]["Authorization"] == f"Basic {pair}"
            assert not hooks[f"{other.url}/webhook"].get("headers")
            assert len(other.webhooks) >= 10 and set(other.webhooks) == {None}
        finally:
            other.close()
    finally:
        backend.stop()


def test_a_webhook_token_keeps_the_password_out_of_label_studio(
    label_studio, make_ls_project, tmp_path, trec_labels, trec_test_rows
):
    env = {
        "LORA_ENABLED": "false",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "BASIC_AUTH_USER": AUTH[0],
        "BASIC_AUTH_PASS": AUTH[1],
        "WEBHOOK_TOKEN": TOKEN,
    }
    backend = BackendServer(tmp_path / "models", env=env).start()
    try:
        pid, client, other = labels_train(
            label_studio, backend, make_ls_project, trec_labels, trec_test_rows, AUTH
        )
        other.close()
        hooks = hooks_by_url(client, pid)
        assert hooks[f"{backend.url}/webhook"]["headers"] == {"Authorization": f"Bearer {TOKEN}"}
        # What any Label Studio user can read of this project:
        shown = client.get("/api/webhooks/", params={"project": pid}).text
        assert AUTH[1] not in shown
        assert base64.b64encode(":".join(AUTH).encode()).decode() not in shown
        assert set(other.webhooks) == {None}
    finally:
        backend.stop()
