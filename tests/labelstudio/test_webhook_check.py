"""A connected project whose Label Studio has no webhook for the backend's URL receives no
annotation and trains nothing while predictions look fine: the backend says so on /status, on
the dashboard and in its log, with what to do (real Label Studio)."""

from __future__ import annotations

import html
import socket

import httpx
import pytest
from backend_server import BackendServer
from fakes import wait_for
from test_sync import api, wait_for_sync

pytestmark = pytest.mark.integration


def warnings_of(backend: BackendServer, pid: int) -> list[str]:
    return (
        httpx.get(f"{backend.url}/status").json()["projects"].get(str(pid), {}).get("warnings", [])
    )


def dotless_loopback_name() -> str | None:
    """A host name without a dot that resolves to 127.0.0.1 here (the machine's own name
    often does), as a compose service name resolves to the backend."""
    for name in (socket.gethostname(), "vm", "runsc"):
        try:
            if "." not in name and socket.gethostbyname(name) == "127.0.0.1":
                return name
        except OSError:
            continue
    return None


@pytest.fixture
def backend(label_studio, tmp_path):
    env = {
        "LORA_ENABLED": "false",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "SYNC_MIN_INTERVAL_S": "0.5",
        # Connected by the machine's own dotless name below, as a compose service name is.
        "ALLOWED_HOSTS": dotless_loopback_name() or "",
    }
    server = BackendServer(tmp_path / "models", env=env).start()
    yield server
    server.stop()


def test_a_deleted_webhook_is_reported_with_the_fix_and_cleared_once_it_is_back(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in trec_test_rows[:8]])
    pid = project["id"]
    client = api(label_studio)
    label_studio.client.ml.create(project=pid, url=backend.url, title="ls-backend")
    wait_for_sync(backend, pid, 0)
    assert warnings_of(backend, pid) == []

    ours = f"{backend.url}/webhook"
    (hook,) = [h for h in client.get("/api/webhooks/", params={"project": pid}).json()
               if h["url"] == ours]  # fmt: skip
    assert client.delete(f"/api/webhooks/{hook['id']}/").status_code == 204
    assert httpx.post(f"{backend.url}/sync/{pid}", json={}).status_code == 202  # an admin looks
    (warning,) = wait_for(lambda: warnings_of(backend, pid), what="the missing webhook reported")
    assert f"no webhook for {ours}" in warning and "Settings -> Webhooks" in warning
    assert html.escape(warning) in httpx.get(f"{backend.url}/ui").text
    assert f"no webhook for {ours}" in backend.log_tail(10_000)

    created = client.post(
        "/api/webhooks/",
        json={"project": pid, "url": ours, "send_payload": True, "send_for_all_actions": True},
    )
    assert created.status_code == 201, created.text
    assert httpx.post(f"{backend.url}/sync/{pid}", json={}).status_code == 202
    wait_for(lambda: warnings_of(backend, pid) == [], what="the warning to clear")


def test_a_model_connected_by_a_host_without_a_dot_gets_no_webhook_and_a_warning(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    """What the compose stack did with http://ls-backend:9090: Label Studio connects the
    model, creates no webhook and says nothing; the first sync says it."""
    name = dotless_loopback_name()
    if name is None:
        pytest.skip("no host name without a dot resolves to 127.0.0.1 on this machine")
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in trec_test_rows[:8]])
    pid = project["id"]
    url = f"http://{name}:{backend.port}"
    label_studio.client.ml.create(project=pid, url=url, title="ls-backend")
    client = api(label_studio)
    assert client.get("/api/webhooks/", params={"project": pid}).json() == []  # none, silently
    (warning,) = wait_for(lambda: warnings_of(backend, pid), what="the missing webhook reported")
    assert f"no webhook for {url}/webhook" in warning
    assert "no dot" in warning and "ls-backend.internal" in warning
