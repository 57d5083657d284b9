"""Sync against a real Label Studio: the annotator's queue follows the backend's ranking."""

from __future__ import annotations

import json

import httpx
import pytest
from backend_server import BackendServer
from fakes import wait_for

pytestmark = pytest.mark.integration

MULTI = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text" choice="multiple">
<Choice value="question"/><Choice value="about a person"/><Choice value="about a place"/><Choice value="about a number"/>
</Choices></View>"""


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    env = {
        "LORA_ENABLED": "false",
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "SYNC_EVERY": "2",
        "SYNC_TOP_K": "100",  # every task of these small projects is in the front
        "SYNC_MIN_INTERVAL_S": "0.5",
        "SYNC_QUIET_S": "1",
        "LOG_LEVEL": "DEBUG",  # the strictest check that the API key never reaches a log
    }
    server = BackendServer(tmp_path_factory.mktemp("synced") / "models", env=env).start()
    yield server
    server.stop()


def api(label_studio) -> httpx.Client:
    headers = {"Authorization": f"Token {label_studio.token}"}
    return httpx.Client(base_url=label_studio.url, headers=headers, timeout=120)


def sync_runs(backend, project_id) -> int:
    projects = httpx.get(f"{backend.url}/status").json()["projects"]
    job = projects.get(str(project_id), {}).get("jobs", {}).get("sync", {})
    return job.get("runs", 0) if job.get("state") == "done" else -1


def idle(backend, project_id) -> bool:
    jobs = httpx.get(f"{backend.url}/status").json()["projects"][str(project_id)]["jobs"]
    return all(job["state"] not in {"queued", "running"} for job in jobs.values())


def wait_for_sync(backend, project_id, after: int) -> None:
    """Until a sync newer than run ``after`` is done and nothing else is queued or running."""
    wait_for(
        lambda: sync_runs(backend, project_id) > after and idle(backend, project_id),
        what="a sync to finish",
    )


def ranking(client, project_id) -> list[int]:
    """Unlabeled task ids in Label Studio's serving order: the current version's scores, lowest first."""
    version = client.get(f"/api/projects/{project_id}").json()["model_version"]
    tasks = client.get(
        "/api/tasks", params={"project": project_id, "fields": "all", "page_size": 1000}
    ).json()["tasks"]
    scored = []
    for task in tasks:
        if task["annotations"]:
            continue
        for prediction in task["predictions"]:
            if prediction["model_version"] == version:
                scored.append((prediction["score"], task["id"]))
    return [task_id for _, task_id in sorted(scored)]


def label(client, task_id, choice, from_name="label"):
    result = [
        {
            "from_name": from_name,
            "to_name": "text",
            "type": "choices",
            "value": {"choices": [choice]},
        }
    ]
    reply = client.post(f"/api/tasks/{task_id}/annotations", json={"result": result})
    assert reply.status_code == 201, reply.text


def skip(client, task_id):
    reply = client.post(
        f"/api/tasks/{task_id}/annotations", json={"result": [], "was_cancelled": True}
    )
    assert reply.status_code == 201, reply.text


def test_queue_follows_the_ranking_new_tasks_are_served_and_labels_rerank(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    rows = trec_test_rows[200:260]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    pid = project["id"]
    client = api(label_studio)
    label_studio.client.ml.create(project=pid, url=backend.url, title="ls-backend")
    assert httpx.post(f"{backend.url}/sync/{pid}", json={}).status_code == 202
    wait_for_sync(backend, pid, 0)

    # The annotator's stream serves the backend's order exactly.
    expected = ranking(client, pid)
    assert sorted(expected) == sorted(project["task_ids"])
    served = []
    for _ in range(4):
        task = client.get(f"/api/projects/{pid}/next").json()
        served.append(task["id"])
        skip(client, task["id"])  # a skip is not a label: no re-rank in between
    assert served == expected[:4]

    # Newly imported tasks get a prediction of the current ranking (else never served).
    runs = sync_runs(backend, pid)
    new_ids = client.post(
        f"/api/projects/{pid}/import",
        params={"return_task_ids": "true"},
        json=[{"text": r["text"]} for r in trec_test_rows[260:265]],
    ).json()["task_ids"]
    wait_for_sync(backend, pid, runs)
    assert set(new_ids) <= set(ranking(client, pid))

    # Labels re-rank: a new ranking version, and the order of the rest changes.
    before = ranking(client, pid)
    version = client.get(f"/api/projects/{pid}").json()["model_version"]
    runs = sync_runs(backend, pid)
    by_text = {r["text"]: r["label"] for r in trec_test_rows}
    for task_id in before[:4]:
        label(client, task_id, by_text[client.get(f"/api/tasks/{task_id}").json()["data"]["text"]])
    wait_for_sync(backend, pid, runs)
    assert client.get(f"/api/projects/{pid}").json()["model_version"] != version
    after = ranking(client, pid)
    assert not set(after) & set(before[:4])  # labeled tasks leave the queue
    remaining = [t for t in before if t in set(after)]
    assert after != remaining


def test_multi_label_project_end_to_end(label_studio, backend, trec_test_rows):
    client = api(label_studio)
    project = label_studio.client.projects.create(title="multi-label", label_config=MULTI)
    texts = [r["text"] for r in trec_test_rows[300:330]]
    task_ids = client.post(
        f"/api/projects/{project.id}/import",
        params={"return_task_ids": "true"},
        json=[{"text": t} for t in texts],
    ).json()["task_ids"]
    label_studio.client.ml.create(project=project.id, url=backend.url, title="ls-backend")
    runs = max(sync_runs(backend, project.id), 0)
    for i, task_id in enumerate(task_ids[:6]):
        choices = ["question", ["about a person", "about a place", "about a number"][i % 3]]
        result = [
            {
                "from_name": "label",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": choices},
            }
        ]
        assert (
            client.post(f"/api/tasks/{task_id}/annotations", json={"result": result}).status_code
            == 201
        )
    wait_for_sync(backend, project.id, runs)
    order = ranking(client, project.id)
    assert sorted(order) == sorted(task_ids[6:])
    task = client.get(f"/api/projects/{project.id}/next").json()
    assert task["id"] == order[0]
    version = client.get(f"/api/projects/{project.id}").json()["model_version"]
    (prediction,) = [p for p in task["predictions"] if p["model_version"] == version]
    for item in prediction["result"]:
        assert set(item["value"]["choices"]) <= {
            "question",
            "about a person",
            "about a place",
            "about a number",
        }
        assert set(item["uncertainty"]["entropy_per_label"]) == {
            "question",
            "about a person",
            "about a place",
            "about a number",
        }


def test_start_training_rereads_every_label_from_label_studio(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    rows = trec_test_rows[340:352]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    client = api(label_studio)
    # Labels made before the backend was connected: no webhook ever told it about them.
    for task_id, row in zip(project["task_ids"][:8], rows, strict=False):
        label(client, task_id, row["label"])
    skip(client, project["task_ids"][8])
    ml = label_studio.client.ml.create(project=project["id"], url=backend.url, title="ls-backend")
    assert (
        httpx.get(f"{backend.url}/status")
        .json()["projects"]
        .get(str(project["id"]), {})
        .get("annotations", 0)
        == 0
    )
    label_studio.client.ml.train(id=ml.id)  # the "Start Training" button
    status = wait_for(
        lambda: (
            (p := httpx.get(f"{backend.url}/status").json()["projects"].get(str(project["id"])))
            and p["annotations"] == 8
            and p["jobs"]["head"]["state"] == "done"
            and p
        ),
        what="the re-read and a head run",
    )
    # The head trained on all 8 re-read labels (the skip is not one).
    version = status["jobs"]["head"]["last_result"]["version"]
    info = json.loads(
        (backend.model_dir / str(project["id"]) / "models" / version / "info.json").read_text()
    )
    assert version.endswith("-head") and info["labels"] == 8


def test_the_api_key_never_appears_in_the_logs(
    label_studio, make_ls_project, backend, trec_labels, trec_test_rows
):
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in trec_test_rows[:5]])
    label_studio.client.ml.create(project=project["id"], url=backend.url, title="ls-backend")
    assert httpx.post(f"{backend.url}/sync/{project['id']}", json={}).status_code == 202
    wait_for_sync(backend, project["id"], 0)
    log = backend.log_tail(1_000_000)
    assert "rank-" in log  # the sync did run and log what it sent
    assert label_studio.token not in log


def test_sync_command_ranks_a_project_on_demand(
    label_studio, make_ls_project, tmp_path, trec_labels, trec_test_rows
):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    project = make_ls_project(
        trec_labels, tasks=[{"text": r["text"]} for r in trec_test_rows[420:440]]
    )
    env = {
        **os.environ,
        "MODEL_DIR": str(tmp_path),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
    }
    command = [
        str(Path(sys.executable).with_name("ls-backend")),
        "sync",
        "--project",
        str(project["id"]),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout[done.stdout.index("{") :])
    assert result["tasks"] == 20 and result["pushed"] == 20
    client = api(label_studio)
    assert (
        client.get(f"/api/projects/{project['id']}").json()["model_version"]
        == result["ranking_version"]
    )
    assert sorted(ranking(client, project["id"])) == sorted(project["task_ids"])
