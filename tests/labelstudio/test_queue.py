"""The queue as Label Studio holds it: only the front is pushed, replaced predictions are deleted
a few at a time, an exhausted front falls back, and a missed webhook heals (real Label Studio)."""

from __future__ import annotations

import httpx
import pytest
from backend_server import BackendServer
from fakes import wait_for
from labelstudio_server import ENGINES, label_studio_on
from test_sync import api, label, sync_runs, wait_for_sync

pytestmark = pytest.mark.integration

TOP_K = 10


@pytest.fixture(params=ENGINES)
def label_studio(request):
    """Label Studio on SQLite, and on PostgreSQL as the compose stack runs it."""
    return label_studio_on(request)


@pytest.fixture
def backend(label_studio, tmp_path):
    env = {
        "LORA_ENABLED": "false",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "SYNC_TOP_K": str(TOP_K),
        "SYNC_EVERY": "3",
        "SYNC_MIN_INTERVAL_S": "0.5",
        "SYNC_QUIET_S": "1",
        # These streams label as fast as the API answers: the queue's rules are tested here,
        # not the pacing that spaces background work out for people (tests/core/test_pacing).
        "BACKGROUND_DUTY": "1",
    }
    server = BackendServer(tmp_path / "models", env=env).start()
    yield server
    server.stop()


def queue_version(client, project_id) -> str:
    return client.get(f"/api/projects/{project_id}").json()["model_version"]


def predictions_by_version(client, project_id) -> dict[str, list[tuple[float, int]]]:
    tasks = client.get(
        "/api/tasks",
        params={
            "project": project_id,
            "fields": "all",
            "page_size": 1000,
            "include": "id,predictions",
            "expand": "predictions",
        },
    ).json()["tasks"]
    found: dict[str, list[tuple[float, int]]] = {}
    for task in tasks:
        for prediction in task["predictions"]:
            found.setdefault(prediction["model_version"], []).append(
                (prediction["score"], task["id"])
            )
    return found


def connect(label_studio, backend, project_id) -> None:
    label_studio.client.ml.create(project=project_id, url=backend.url, title="ls-backend")
    client = api(label_studio)
    wait_for(lambda: queue_version(client, project_id).startswith("rank-"), what="a first push")
    wait_for_sync(backend, project_id, 0)


def test_connecting_pushes_only_the_front_and_labels_replace_it_a_few_rows_at_a_time(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    rows = trec_test_rows[:80]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    pid = project["id"]
    client = api(label_studio)
    connect(label_studio, backend, pid)  # no label yet: the first order is diversity alone
    first = queue_version(client, pid)
    assert len(predictions_by_version(client, pid)[first]) == TOP_K

    by_text = {r["text"]: r["label"] for r in trec_test_rows}
    versions = {first}
    for _ in range(12):  # through the queue, as the labeling stream serves it
        task = client.get(f"/api/projects/{pid}/next").json()
        label(client, task["id"], by_text[task["data"]["text"]])
        versions.add(queue_version(client, pid))
    runs = sync_runs(backend, pid)
    assert httpx.post(f"{backend.url}/sync/{pid}", json={}).status_code == 202
    wait_for_sync(backend, pid, runs)

    stored = predictions_by_version(client, pid)
    current = queue_version(client, pid)
    assert len(versions | {current}) >= 4  # every 3 labels a new front
    assert len(stored[current]) == TOP_K
    # Replaced rankings keep only what an annotator may still have open (one annotator here:
    # unlabeled tasks up to two past the last one labeled from it), never their whole front.
    stale = {v: rows for v, rows in stored.items() if v.startswith("rank-") and v != current}
    labeled = {
        t["id"]
        for t in client.get(
            "/api/tasks", params={"project": pid, "fields": "all", "page_size": 200}
        ).json()["tasks"]
        if t["annotations"]
    }
    assert not {task for rows in stale.values() for _, task in rows} & labeled
    assert sum(len(rows) for rows in stale.values()) <= 0.3 * TOP_K * len(stale)


def test_an_exhausted_front_falls_back_and_a_missed_webhook_heals(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    rows = trec_test_rows[100:140]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    pid = project["id"]
    client = api(label_studio)
    connect(label_studio, backend, pid)
    front = [
        task for _, task in sorted(predictions_by_version(client, pid)[queue_version(client, pid)])
    ]

    # The backend is away: Label Studio keeps serving, the front first, then random order.
    backend.stop()
    by_text = {r["text"]: r["label"] for r in trec_test_rows}
    served = []
    for _ in range(TOP_K + 2):
        reply = client.get(f"/api/projects/{pid}/next")
        assert reply.status_code == 200, reply.text
        served.append(reply.json()["id"])
        label(client, served[-1], by_text[reply.json()["data"]["text"]])
    assert served[:TOP_K] == front
    assert not set(served[TOP_K:]) & set(front)

    # Back again: the webhooks it missed show in Label Studio's counters; the mirror is re-read
    # and the new front leaves out every task labeled meanwhile.
    backend.start()
    assert httpx.post(f"{backend.url}/sync/{pid}", json={}).status_code == 202

    def healed_front():
        current = predictions_by_version(client, pid).get(queue_version(client, pid), [])
        fresh = {task for _, task in current}
        return len(fresh) == TOP_K and not fresh & set(served) and fresh

    wait_for(healed_front, what="a front without the tasks labeled while the backend was away")
    assert "out of step with Label Studio" in backend.log_tail(10_000)
    wait_for_sync(backend, pid, 0)
    status = httpx.get(f"{backend.url}/status").json()["projects"][str(pid)]
    assert status["jobs"]["sync"]["last_result"]["unlabeled"] == len(rows) - len(served)
