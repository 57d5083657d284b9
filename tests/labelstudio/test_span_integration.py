"""A span project (Label Studio's NER template) end to end against a real Label Studio 1.23
and `ls-backend serve` on loopback: span annotations through its API train a new version,
and the pre-annotated regions come back from its API with their offsets intact."""

from __future__ import annotations

import httpx
import pytest
from backend_server import BackendServer
from fakes import wait_for
from span_tasks import NER, NER_AND_TOPIC, annotate, annotate_both, sentence

pytestmark = pytest.mark.integration


def api(label_studio) -> httpx.Client:
    return httpx.Client(
        base_url=label_studio.url,
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=120,
    )


def connect(label_studio, project_id: int, backend: BackendServer) -> None:
    ml = label_studio.client.ml.create(project=project_id, url=backend.url, title="ls-backend")
    assert ml.state == "CO", ml  # Connected: /health and /setup answered


def predictions_of(client: httpx.Client, task_id: int) -> list[dict]:
    return client.get(f"/api/tasks/{task_id}").json()["predictions"]


def setup_version(backend: BackendServer, project_id: int, config: str) -> str:
    reply = httpx.post(f"{backend.url}/setup", json={"project": str(project_id), "schema": config})
    return reply.json()["model_version"]


def lanes_idle(backend: BackendServer, project_id: int) -> bool:
    jobs = httpx.get(f"{backend.url}/status").json()["projects"][str(project_id)]["jobs"]
    return all(job["state"] not in {"queued", "running"} for job in jobs.values())


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    env = {"LORA_ENABLED": "false", "EVAL_MIN_LABELS": "100"}
    server = BackendServer(tmp_path_factory.mktemp("backend") / "models", env=env).start()
    yield server
    server.stop()


def test_span_annotations_train_and_regions_come_back_with_their_offsets(label_studio, backend):
    sdk = label_studio.client
    project = sdk.projects.create(title="spans end to end", label_config=NER)
    texts = [sentence(i)[0] for i in range(40)]
    imported = sdk.projects.import_tasks(
        id=project.id, request=[{"text": t} for t in texts], return_task_ids=True
    )
    task_ids = list(imported.task_ids or [])
    connect(label_studio, project.id, backend)
    client = api(label_studio)
    config = client.get(f"/api/projects/{project.id}").json()["label_config"]
    first = setup_version(backend, project.id, config)
    assert first.endswith("-prototype")

    for n, task_id in enumerate(task_ids[:12]):
        created = annotate(client, task_id, n)
        assert created.status_code == 201, created.text
    # "No entity here" is a label too.
    empty = client.post(f"/api/tasks/{task_ids[12]}/annotations", json={"result": []})
    assert empty.status_code == 201, empty.text

    wait_for(lambda: setup_version(backend, project.id, config).endswith("-head"))
    wait_for(lambda: lanes_idle(backend, project.id))
    version = setup_version(backend, project.id, config)
    status = httpx.get(f"{backend.url}/status").json()["projects"][str(project.id)]
    assert status["annotations"] == 13 and status["label_problems"] == {}
    head = status["jobs"]["head"]["last_result"]
    assert head["labels"] == 13 and "entity_f1" in head["metrics"]

    # Label Studio asks for the next task's prediction with the new version: the regions it
    # stores are ours, offsets and text intact.
    served = client.get(f"/api/projects/{project.id}/next").json()
    predictions = [p for p in predictions_of(client, served["id"]) if p["model_version"] == version]
    assert predictions, predictions_of(client, served["id"])
    text = texts[task_ids.index(served["id"])]
    regions = predictions[0]["result"]
    assert regions, "the head finds the entities of a sentence like those it learned"
    for region in regions:
        assert region["type"] == "labels" and region["from_name"] == "label"
        value = region["value"]
        assert text[value["start"] : value["end"]] == value["text"]
        assert value["labels"][0] in {"PER", "LOC"} and 0 < region["score"] <= 1
    assert 0 <= predictions[0]["score"] <= 1


def test_choices_and_labels_on_one_text_train_through_webhooks_and_both_come_back(
    label_studio, backend
):
    sdk = label_studio.client
    project = sdk.projects.create(title="spans and a choice", label_config=NER_AND_TOPIC)
    texts = [sentence(i)[0] for i in range(20)] + [f"It rained on day {i} ." for i in range(8)]
    imported = sdk.projects.import_tasks(
        id=project.id, request=[{"text": t} for t in texts], return_task_ids=True
    )
    task_ids = list(imported.task_ids or [])
    connect(label_studio, project.id, backend)
    client = api(label_studio)
    config = client.get(f"/api/projects/{project.id}").json()["label_config"]
    assert setup_version(backend, project.id, config).endswith("-prototype")
    for n, task_id in enumerate(task_ids[:10]):  # regions and a choice in one annotation
        created = annotate_both(client, task_id, n, "trip")
        assert created.status_code == 201, created.text
    for task_id in task_ids[20:25]:  # a choice alone: trains the classifier only
        choice = {"from_name": "topic", "to_name": "text", "type": "choices",
                  "value": {"choices": ["other"]}}  # fmt: skip
        created = client.post(f"/api/tasks/{task_id}/annotations", json={"result": [choice]})
        assert created.status_code == 201, created.text

    wait_for(lambda: setup_version(backend, project.id, config).endswith("-head"))
    wait_for(lambda: lanes_idle(backend, project.id))
    version = setup_version(backend, project.id, config)
    status = httpx.get(f"{backend.url}/status").json()["projects"][str(project.id)]
    head = status["jobs"]["head"]["last_result"]
    assert head["labels"] == 15 and status["label_problems"] == {}
    parts = head["metrics"]["parts"]
    assert parts["topic"]["n"] == 15 and parts["label"]["n"] == 10

    # Label Studio asks for a sentence's prediction: one prediction with both controls.
    task_id = task_ids[15]
    reply = client.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project.id},
        json={"selectedItems": {"all": False, "included": [task_id]}},
    )
    assert reply.status_code == 200, reply.text
    wait_for(lambda: any(p["model_version"] == version for p in predictions_of(client, task_id)))
    (prediction,) = [p for p in predictions_of(client, task_id) if p["model_version"] == version]
    by_type = {}
    for item in prediction["result"]:
        by_type.setdefault(item["type"], []).append(item)
    assert by_type["choices"][0]["value"]["choices"] == ["trip"]
    text = texts[15]
    assert by_type["labels"], prediction
    for region in by_type["labels"]:
        value = region["value"]
        assert text[value["start"] : value["end"]] == value["text"]


@pytest.fixture(scope="module")
def synced(label_studio, tmp_path_factory):
    env = {
        "LORA_ENABLED": "false",
        "EVAL_MIN_LABELS": "100",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "SYNC_EVERY": "2",
        "SYNC_TOP_K": "100",
        "SYNC_MIN_INTERVAL_S": "0.5",
        "SYNC_QUIET_S": "1",
    }
    server = BackendServer(tmp_path_factory.mktemp("synced") / "models", env=env).start()
    yield server
    server.stop()


def sync_runs(backend: BackendServer, project_id: int) -> int:
    projects = httpx.get(f"{backend.url}/status").json()["projects"]
    job = projects.get(str(project_id), {}).get("jobs", {}).get("sync", {})
    return job.get("runs", 0) if job.get("state") == "done" else -1


def test_next_follows_the_span_uncertainty_ranking_pushed_with_regions(label_studio, synced):
    sdk = label_studio.client
    project = sdk.projects.create(title="spans synced", label_config=NER)
    texts = [sentence(i)[0] for i in range(30)] + [
        f"Qzx{i} wrote from Vrrk about Plon{i} ." for i in range(6)
    ]
    imported = sdk.projects.import_tasks(
        id=project.id, request=[{"text": t} for t in texts], return_task_ids=True
    )
    task_ids = list(imported.task_ids or [])
    sdk.ml.create(project=project.id, url=synced.url, title="ls-backend")
    client = api(label_studio)
    for n, task_id in enumerate(task_ids[:10]):
        created = annotate(client, task_id, n)
        assert created.status_code == 201, created.text
    config = client.get(f"/api/projects/{project.id}").json()["label_config"]
    wait_for(lambda: setup_version(synced, project.id, config).endswith("-head"))
    runs = max(sync_runs(synced, project.id), 0)
    assert httpx.post(f"{synced.url}/sync/{project.id}", json={}).status_code == 202
    wait_for(
        lambda: sync_runs(synced, project.id) > runs and lanes_idle(synced, project.id),
        what="a sync to finish",
    )

    # Label Studio serves the unlabeled tasks in the pushed order (its scores, lowest first).
    version = client.get(f"/api/projects/{project.id}").json()["model_version"]
    tasks = client.get(
        "/api/tasks", params={"project": project.id, "fields": "all", "page_size": 1000}
    ).json()["tasks"]
    ranked = sorted(
        (p["score"], t["id"])
        for t in tasks
        if not t["annotations"]
        for p in t["predictions"]
        if p["model_version"] == version
    )
    expected = [task_id for _, task_id in ranked]
    assert sorted(expected) == sorted(task_ids[10:])
    served = []
    for _ in range(3):
        task = client.get(f"/api/projects/{project.id}/next").json()
        served.append(task["id"])
        skipped = client.post(
            f"/api/tasks/{task['id']}/annotations", json={"result": [], "was_cancelled": True}
        )
        assert skipped.status_code == 201
    assert served == expected[:3]
    # The pushed pre-annotations are regions whose offsets point at their text.
    by_id = {t["id"]: t for t in tasks}
    for task_id in expected:
        text = by_id[task_id]["data"]["text"]
        for p in by_id[task_id]["predictions"]:
            for region in p["result"] if p["model_version"] == version else []:
                value = region["value"]
                assert region["type"] == "labels"
                assert text[value["start"] : value["end"]] == value["text"]
