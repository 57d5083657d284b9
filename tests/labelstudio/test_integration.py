"""End to end against a real Label Studio 1.23 and `ls-backend serve` on loopback."""

from __future__ import annotations

import json

import httpx
import pytest
from backend_server import BackendServer
from fakes import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    # k-fold below 100 labels: a burst of 30 is not judged on a 6-item held-out part.
    env = {"LORA_ENABLED": "false", "EVAL_MIN_LABELS": "100"}
    server = BackendServer(tmp_path_factory.mktemp("backend") / "models", env=env).start()
    yield server
    server.stop()


def api(label_studio) -> httpx.Client:
    return httpx.Client(
        base_url=label_studio.url,
        headers={"Authorization": f"Token {label_studio.token}"},
        timeout=120,
    )


def connect(label_studio, project_id: int, backend: BackendServer) -> dict:
    ml = label_studio.client.ml.create(project=project_id, url=backend.url, title="ls-backend")
    assert ml.state == "CO", ml  # Connected: /health and /setup answered
    return {"id": ml.id}


def predictions_of(client: httpx.Client, task_id: int) -> list[dict]:
    return client.get(f"/api/tasks/{task_id}").json()["predictions"]


def setup_version(backend: BackendServer, project_id: int, config: str) -> str:
    # The bare id: "<id>.<created>" with another creation time than Label Studio's own would
    # be another Label Studio's project (a reinstall), which gets fresh state.
    reply = httpx.post(f"{backend.url}/setup", json={"project": str(project_id), "schema": config})
    return reply.json()["model_version"]


def test_predictions_round_trip_through_next_and_retrieve(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    rows = trec_test_rows[:100]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    connect(label_studio, project["id"], backend)
    client = api(label_studio)

    served = client.get(f"/api/projects/{project['id']}/next").json()
    (prediction,) = predictions_of(client, served["id"])
    version = prediction["model_version"]
    assert version.endswith("-prototype")

    others = [t for t in project["task_ids"] if t != served["id"]]
    reply = client.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project["id"]},
        json={"selectedItems": {"all": False, "included": others}},
    )
    assert reply.status_code == 200, reply.text
    tasks = client.get(
        "/api/tasks", params={"project": project["id"], "fields": "all", "page_size": 200}
    ).json()["tasks"]
    assert len(tasks) == 100
    for task in tasks:
        (stored,) = task["predictions"]
        assert stored["model_version"] == version
        (result,) = stored["result"]
        assert result["from_name"] == "label" and result["to_name"] == "text"
        assert result["value"]["choices"][0] in trec_labels
        assert 0 < stored["score"] <= 1
        # Our figures survive inside the result item (where Label Studio keeps extra keys).
        assert set(result["uncertainty"]) >= {"least_confidence", "margin", "entropy"}
        assert set(result["probabilities"]) == set(trec_labels)


def test_annotations_train_a_new_version_that_serves(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    rows = trec_test_rows[100:180]
    # The 30th label is the only one of its class: k-fold cannot estimate, so the head is
    # promoted however it scores (this test is about the plumbing, not which model wins).
    rare = next(r for r in trec_test_rows if r["label"] == "abbreviation")
    rows = [*rows[:29], rare, *rows[30:]]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    connect(label_studio, project["id"], backend)
    client = api(label_studio)
    config = client.get(f"/api/projects/{project['id']}").json()["label_config"]
    first = setup_version(backend, project["id"], config)

    annotation_ids = []
    for task_id, row in zip(project["task_ids"][:30], rows[:30], strict=True):
        result = [
            {
                "from_name": "label",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": [row["label"]]},
            }
        ]
        created = client.post(f"/api/tasks/{task_id}/annotations", json={"result": result})
        assert created.status_code == 201, created.text
        annotation_ids.append(created.json()["id"])
    # A skip (was_cancelled) arrives as an annotation too, and must not become a label.
    skipped_task = project["task_ids"][30]
    client.post(
        f"/api/tasks/{skipped_task}/annotations", json={"result": [], "was_cancelled": True}
    )

    # Every round from here on may promote: read the version once the lanes are idle.
    wait_for(lambda: setup_version(backend, project["id"], config) != first)
    wait_for(lambda: lanes_idle(backend, project["id"]))
    version = setup_version(backend, project["id"], config)
    assert version.endswith("-head")
    status = httpx.get(f"{backend.url}/status").json()["projects"][str(project["id"])]
    assert status["annotations"] == 31  # 30 labels and the skip, all stored

    # Label Studio skips tasks already predicted with the current version: a new one asks again.
    served = client.get(f"/api/projects/{project['id']}/next").json()
    assert version in {p["model_version"] for p in predictions_of(client, served["id"])}

    # A deleted annotation is not in the next run.
    deleted = annotation_ids[0]
    before = set(versions_seen(backend, project["id"]))
    assert client.delete(f"/api/annotations/{deleted}").status_code == 204
    # (A run that started before the delete may still save a 30-label version meanwhile.)
    newer = wait_for(
        lambda: [
            seen
            for version, seen in versions_seen(backend, project["id"]).items()
            if version not in before and len(seen) == 29
        ]
    )
    assert all(deleted not in seen for seen in newer)


def versions_seen(backend: BackendServer, project_id: int) -> dict[str, list[int]]:
    """Every saved version of the project -> the annotation ids it trained and evaluated on."""
    seen = {}
    for folder in (backend.model_dir / str(project_id) / "models").glob("v*"):
        if (folder / "annotations.json").is_file():
            record = json.loads((folder / "annotations.json").read_text())
            seen[folder.name] = sorted(set(record["trained_on"]) | set(record["held_out"]))
    return seen


def lanes_idle(backend: BackendServer, project_id: int) -> bool:
    jobs = httpx.get(f"{backend.url}/status").json()["projects"][str(project_id)]["jobs"]
    return all(job["state"] not in {"queued", "running"} for job in jobs.values())


def test_label_studio_connects_with_basic_auth_credentials(
    label_studio, make_ls_project, tmp_path, trec_labels, trec_test_rows
):
    env = {
        "LORA_ENABLED": "false",
        "BASIC_AUTH_USER": "annotation-bot",
        "BASIC_AUTH_PASS": "s3cret-pass",
    }
    server = BackendServer(tmp_path / "models", env=env).start()
    try:
        assert httpx.post(f"{server.url}/setup", json={"project": "1.1"}).status_code == 401
        project = make_ls_project(
            trec_labels, tasks=[{"text": r["text"]} for r in trec_test_rows[400:405]]
        )
        ml = label_studio.client.ml.create(
            project=project["id"],
            url=server.url,
            title="ls-backend",
            auth_method="BASIC_AUTH",
            basic_auth_user="annotation-bot",
            basic_auth_pass="s3cret-pass",
        )
        assert ml.state == "CO", ml
        client = api(label_studio)
        served = client.get(f"/api/projects/{project['id']}/next").json()
        assert predictions_of(client, served["id"]), (
            "Label Studio got predictions through basic auth"
        )
    finally:
        server.stop()
    assert "s3cret-pass" not in server.log_tail(100_000)


def test_a_reinstalled_label_studio_gets_fresh_state(
    fresh_label_studio, ls_template, tmp_path, trec_labels, trec_test_rows
):
    """Label Studio reinstalled with a fresh database reuses the project id and the annotation
    ids; the backend used to drop the reused ids it had seen deleted, without a word."""
    from fakes import text_classification_config
    from labelstudio_server import running_server

    backend = BackendServer(tmp_path / "models", env={"LORA_ENABLED": "false"}).start()
    rows = trec_test_rows[300:306]

    def label(ls, deleted: int = 0) -> tuple[int, list[int]]:
        """A project on ``ls`` with 6 tasks, connected; 4 labeled, the last ``deleted`` of
        those labels deleted again. Its id and the annotation ids."""
        project = ls.client.projects.create(
            title="reinstalled", label_config=text_classification_config(trec_labels)
        )
        tasks = [{"text": r["text"]} for r in rows]
        task_ids = ls.client.projects.import_tasks(
            id=project.id, request=tasks, return_task_ids=True
        ).task_ids
        connect(ls, project.id, backend)
        client, ids = api(ls), []
        for task_id, row in zip(task_ids[:4], rows, strict=False):
            result = [{"from_name": "label", "to_name": "text", "type": "choices",
                       "value": {"choices": [row["label"]]}}]  # fmt: skip
            created = client.post(f"/api/tasks/{task_id}/annotations", json={"result": result})
            ids.append(created.json()["id"])
        for annotation_id in ids[len(ids) - deleted :]:
            assert client.delete(f"/api/annotations/{annotation_id}").status_code == 204
        return project.id, ids

    def stored(project_id: int) -> int:
        return httpx.get(f"{backend.url}/status").json()["projects"][str(project_id)]["annotations"]

    try:
        first, first_ids = label(fresh_label_studio, deleted=2)
        wait_for(lambda: stored(first) == 2, what="the first installation's labels")
        fresh_label_studio.stop()
        with running_server(ls_template, tmp_path / "reinstalled") as again:
            second, second_ids = label(again)
            assert (second, second_ids) == (first, first_ids)  # the same ids, reused
            wait_for(lambda: stored(second) == 4, what="the reinstalled one's labels")
            report = httpx.get(f"{backend.url}/projects/{second}/report").json()
            assert report["labels"] == 4
    finally:
        backend.stop()
