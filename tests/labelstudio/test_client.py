"""LabelStudioClient against a real Label Studio, and its retries against tiny stand-ins."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from labelstudio_server import LabelStudioServer, free_port

from ls_backend.labelstudio.client import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
    PredictionItem,
    RetryPolicy,
)

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.001, max_backoff_s=0.01)


def choice(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}
    ]


@pytest.fixture
def client(label_studio: LabelStudioServer) -> Iterator[LabelStudioClient]:
    c = LabelStudioClient(label_studio.url, label_studio.token, retry=FAST_RETRY)
    yield c
    c.close()


@pytest.fixture
def trec_project(
    make_ls_project: Callable[..., dict[str, Any]],
    trec_labels: list[str],
    trec_test_rows: list[dict[str, str]],
) -> dict[str, Any]:
    """A project with the first 50 TREC test questions; `gold` maps task id -> label."""
    rows = trec_test_rows[:50]
    project = make_ls_project(trec_labels, tasks=[{"text": r["text"]} for r in rows])
    assert len(project["task_ids"]) == 50
    project["gold"] = {tid: r["label"] for tid, r in zip(project["task_ids"], rows, strict=True)}
    return project


def annotate(server: LabelStudioServer, task_id: int, label: str | None) -> dict[str, Any]:
    """What an annotator's Submit (label) or Skip (None) sends."""
    body = (
        {"result": choice(label), "was_cancelled": False}
        if label
        else {"result": [], "was_cancelled": True}
    )
    r = httpx.post(
        f"{server.url}/api/tasks/{task_id}/annotations",
        json=body,
        headers={"Authorization": f"Token {server.token}"},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def next_task(server: LabelStudioServer, project_id: int) -> dict[str, Any]:
    r = httpx.get(
        f"{server.url}/api/projects/{project_id}/next",
        headers={"Authorization": f"Token {server.token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.integration
def test_iter_tasks_reads_every_page(
    client: LabelStudioClient, trec_project: dict[str, Any]
) -> None:
    tasks = list(client.iter_tasks(trec_project["id"], page_size=7))  # 8 pages, the last short

    assert [t["id"] for t in tasks] == trec_project["task_ids"]
    assert all(t["data"]["text"] and t["annotations"] == [] for t in tasks)
    assert "predictions" not in tasks[0]
    assert client.get_project(trec_project["id"])["task_number"] == 50


@pytest.mark.integration
def test_queue_serves_lowest_score_first(
    client: LabelStudioClient, label_studio: LabelStudioServer, trec_project: dict[str, Any]
) -> None:
    pid, ids = trec_project["id"], trec_project["task_ids"]
    scores = dict(zip(ids, random.Random(7).sample(range(len(ids)), len(ids)), strict=True))
    decoy: list[PredictionItem] = [  # an older ranking, reversed: must be ignored
        {"task": t, "result": [], "score": 1 - s / 100, "model_version": "rank-1"}
        for t, s in scores.items()
    ]
    ranked: list[PredictionItem] = [
        {"task": t, "result": choice("human"), "score": s / 100, "model_version": "rank-2"}
        for t, s in scores.items()
    ]
    assert client.import_predictions(pid, decoy) == 50
    assert client.import_predictions(pid, ranked, chunk_size=20) == 50  # 3 POSTs

    client.set_queue(pid, "rank-2")

    project = client.get_project(pid)
    assert (project["sampling"], project["model_version"]) == ("Uncertainty sampling", "rank-2")
    expected = sorted(ids, key=scores.__getitem__)
    served = []
    for i in range(6):  # an annotator alternating Submit and Skip
        task = next_task(label_studio, pid)
        served.append(task["id"])
        annotate(label_studio, task["id"], trec_project["gold"][task["id"]] if i % 2 == 0 else None)
    assert served == expected[:6]

    with_predictions = {t["id"]: t for t in client.iter_tasks(pid, include_predictions=True)}
    versions = sorted(p["model_version"] for p in with_predictions[ids[0]]["predictions"])
    assert versions == ["rank-1", "rank-2"]


@pytest.mark.integration
def test_predictions_created_one_by_one_order_the_queue(
    client: LabelStudioClient, label_studio: LabelStudioServer, trec_project: dict[str, Any]
) -> None:
    pid = trec_project["id"]
    waiting = [t["id"] for t in client.iter_tasks(pid) if not t["annotations"]][:5]
    for position, task in enumerate(reversed(waiting)):  # created back to front
        client.create_prediction(
            {
                "task": task,
                "result": choice("human"),
                "score": 0.1 + position / 10,
                "model_version": "rank-single",
            }
        )
    client.set_queue(pid, "rank-single")
    assert next_task(label_studio, pid)["id"] == waiting[-1]  # the lowest score


@pytest.mark.integration
def test_labeled_tasks_leave_out_skips(
    client: LabelStudioClient, label_studio: LabelStudioServer, trec_project: dict[str, Any]
) -> None:
    ids, gold = trec_project["task_ids"], trec_project["gold"]
    for tid in ids[:3]:
        annotate(label_studio, tid, gold[tid])
    annotate(label_studio, ids[3], None)  # skipped only: not labeled
    annotate(label_studio, ids[4], None)  # skipped, then labeled: labeled, one annotation
    second = annotate(label_studio, ids[4], gold[ids[4]])

    labeled = list(client.labeled_tasks(trec_project["id"], page_size=2))

    assert [t["id"] for t in labeled] == [*ids[:3], ids[4]]
    assert all(len(t["annotations"]) == 1 for t in labeled)
    assert labeled[-1]["annotations"][0]["id"] == second["id"]
    for task in labeled:
        (annotation,) = task["annotations"]
        assert annotation["result"] == choice(gold[task["id"]])
    everything = {t["id"]: t for t in client.iter_tasks(trec_project["id"])}
    assert everything[ids[3]]["annotations"] == []


@pytest.mark.integration
def test_predictions_are_read_for_chosen_tasks_and_deleted_one_by_one(
    client: LabelStudioClient, trec_project: dict[str, Any]
) -> None:
    pid, ids = trec_project["id"], trec_project["task_ids"]
    for version in ("old", "new"):
        items: list[PredictionItem] = [
            {"task": t, "result": [], "score": 0.5, "model_version": version} for t in ids[:10]
        ]
        client.import_predictions(pid, items)
    assert client.counts(pid).total_predictions_number == 20

    chosen = list(client.iter_tasks(pid, task_ids=ids[2:5], include_predictions=True))
    assert [t["id"] for t in chosen] == ids[2:5]
    old = [p["id"] for t in chosen for p in t["predictions"] if p["model_version"] == "old"]
    for prediction_id in old:
        client.delete_prediction(prediction_id)
    client.delete_prediction(old[0])  # already gone: nothing to do

    counts = client.counts(pid)
    assert counts.total_predictions_number == 17
    assert counts.task_number == 50 and counts.num_tasks_with_annotations == 0
    assert list(client.iter_tasks(pid, task_ids=[])) == []


@pytest.mark.integration
def test_a_save_naming_a_deleted_prediction_fails(
    label_studio: LabelStudioServer, client: LabelStudioClient, trec_project: dict[str, Any]
) -> None:
    """Why a sync keeps the predictions an annotator may have open: the editor's save names the
    prediction it started from (parent_prediction), and Label Studio refuses it once it is gone."""
    pid, task = trec_project["id"], trec_project["task_ids"][0]
    client.import_predictions(
        pid, [{"task": task, "result": [], "score": 0.5, "model_version": "r"}]
    )
    (shown,) = next(client.iter_tasks(pid, task_ids=[task], include_predictions=True))[
        "predictions"
    ]
    client.delete_prediction(shown["id"])
    r = httpx.post(
        f"{label_studio.url}/api/tasks/{task}/annotations",
        json={"result": choice(trec_project["gold"][task]), "parent_prediction": shown["id"]},
        headers={"Authorization": f"Token {label_studio.token}"},
    )
    assert r.status_code == 400 and "parent_prediction" in r.text


@pytest.mark.integration
def test_import_predictions_reports_what_label_studio_drops(
    client: LabelStudioClient, trec_project: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    pid, (t1, t2) = trec_project["id"], trec_project["task_ids"][:2]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        client.import_predictions(
            pid, [{"task": t1, "result": [], "score": 1.5, "model_version": "v"}]
        )

    items: list[PredictionItem] = [
        {"task": t1, "result": choice("human"), "score": 0.2, "model_version": "v"},
        {"task": t2, "result": choice("no such label"), "score": 0.3, "model_version": "v"},
    ]
    with caplog.at_level(logging.WARNING):
        assert client.import_predictions(pid, items) == 1

    assert "stored 1 of 2" in caplog.text


@pytest.mark.integration
def test_ensure_ml_backend_connects_once(
    client: LabelStudioClient, make_ls_project: Callable[..., dict[str, Any]]
) -> None:
    project = make_ls_project(["a", "b"])
    with fake_server(ml_backend_reply) as url:
        first = client.ensure_ml_backend(project["id"], url, "al-backend")
        again = client.ensure_ml_backend(project["id"], url + "/", "al-backend")

    assert first["id"] == again["id"]
    assert first["state"] == "CO"  # LS reached /health and /setup
    assert first["model_version"] == "fake-1"


@pytest.mark.integration
def test_personal_access_token_works(
    label_studio: LabelStudioServer, trec_project: dict[str, Any]
) -> None:
    pat = label_studio.personal_access_token()

    client = LabelStudioClient(label_studio.url, pat, retry=FAST_RETRY)

    assert client.get_project(trec_project["id"])["id"] == trec_project["id"]


@pytest.mark.integration
def test_wrong_key_is_an_auth_error_without_retries(
    label_studio: LabelStudioServer, caplog: pytest.LogCaptureFixture
) -> None:
    bad_key = "f" * 40
    client = LabelStudioClient(label_studio.url, bad_key, retry=FAST_RETRY)

    with caplog.at_level(logging.DEBUG), pytest.raises(LabelStudioAuthError) as err:
        client.get_project(1)

    assert "LABEL_STUDIO_API_KEY" in str(err.value)
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    assert bad_key not in caplog.text and bad_key not in str(err.value)


@pytest.mark.integration
def test_client_rides_out_a_restart(fresh_label_studio: LabelStudioServer) -> None:
    sdk = fresh_label_studio.client
    pid = sdk.projects.create(title="survives restarts", label_config="<View></View>").id
    fresh_label_studio.stop()
    restarter = threading.Timer(0.5, fresh_label_studio.start)
    restarter.start()
    # Backoff long enough for a slow start (~10 s; 40 s+ at worst on a loaded machine).
    client = LabelStudioClient(
        fresh_label_studio.url,
        fresh_label_studio.token,
        retry=RetryPolicy(attempts=12, backoff_s=0.5, max_backoff_s=8.0),
    )
    try:
        assert client.get_project(pid)["title"] == "survives restarts"
    finally:
        restarter.join()


# --- without Label Studio: retries against a closed port and a flaky server ------------------


def test_closed_port_is_retried_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    key = "a" * 40
    client = LabelStudioClient(f"http://127.0.0.1:{free_port()}", key, retry=FAST_RETRY)

    with caplog.at_level(logging.DEBUG), pytest.raises(LabelStudioError) as err:
        client.get_project(1)

    assert "after 3 tries" in str(err.value)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and all(r.levelno == logging.WARNING for r in retries)
    assert key not in caplog.text and key not in str(err.value) and key not in repr(client)


def test_5xx_is_retried_4xx_is_not(caplog: pytest.LogCaptureFixture) -> None:
    replies = iter([(503, {}), (502, {}), (200, {"id": 3, "title": "ok"}), (404, {"detail": "no"})])

    def reply(method: str, path: str, body: Any) -> tuple[int, Any]:
        return next(replies)

    key = "b" * 40
    with fake_server(reply) as url, caplog.at_level(logging.DEBUG):
        client = LabelStudioClient(url, key, retry=FAST_RETRY)
        assert client.get_project(3)["title"] == "ok"
        with pytest.raises(LabelStudioError) as err:
            client.get_project(4)

    assert err.value.status_code == 404
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2
    assert key not in caplog.text


# --- stand-in HTTP servers -------------------------------------------------------------------


def ml_backend_reply(method: str, path: str, body: Any) -> tuple[int, Any]:
    if path.startswith("/setup"):
        return 200, {"model_version": "fake-1"}
    if path.startswith("/predict"):
        return 200, {"results": []}
    return 200, {"status": "UP"}


class fake_server:  # noqa: N801 - used like a function: `with fake_server(reply) as url`
    """A threaded HTTP server on 127.0.0.1 answering `reply(method, path, json_body)`."""

    def __init__(self, reply: Callable[[str, str, Any], tuple[int, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, payload = reply(self.command, self.path, json.loads(raw) if raw else None)
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
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
