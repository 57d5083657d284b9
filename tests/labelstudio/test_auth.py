"""Basic auth on, connected as the README says: Label Studio's webhooks still reach the backend
(it gives them the credentials itself), and annotations train a new version (real Label Studio)."""

from __future__ import annotations

import httpx
import pytest
from backend_server import BackendServer
from fakes import wait_for
from test_sync import api, label

from ls_backend.labelstudio.client import LabelStudioClient

pytestmark = pytest.mark.integration

AUTH = ("admin", "a-long-backend-password")


def test_with_basic_auth_annotations_in_label_studio_train_a_new_version(
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
        rows = trec_test_rows[450:480]
        project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
        pid = project["id"]
        ls = LabelStudioClient(label_studio.url, label_studio.token)
        ls.ensure_ml_backend(pid, backend.url, "ls-backend", basic_auth=AUTH)
        ls.close()
        client = api(label_studio)

        def webhook_has_credentials() -> bool:
            hooks = client.get("/api/webhooks/", params={"project": pid}).json()
            return any("Authorization" in (h.get("headers") or {}) for h in hooks)

        wait_for(webhook_has_credentials, what="the backend to give the webhook its credentials")
        assert httpx.get(f"{backend.url}/status").status_code == 401  # auth is on

        for task_id, row in zip(project["task_ids"][:10], rows, strict=False):
            label(client, task_id, row["label"])

        def head_serves() -> str | None:
            status = httpx.get(f"{backend.url}/status", auth=AUTH).json()["projects"][str(pid)]
            version = status["model_version"] or ""
            return version if status["annotations"] == 10 and version.endswith("-head") else None

        wait_for(head_serves, what="10 annotations stored and a head version serving")
    finally:
        backend.stop()
