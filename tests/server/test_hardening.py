"""What real deployments throw at the backend: odd ids, huge or deep bodies, bad items, a busy
prediction queue, projects nobody connected. Each answer is a clear 4xx/503, never a 500 or a hang."""

import json
import threading
import time

import pytest
from test_api import CONFIG, annotate, predict

from ls_backend.projects import Project


def setup(client, project="7.1700000000", config=CONFIG):
    reply = client.post("/setup", json={"project": project, "schema": config})
    assert reply.status_code == 200, reply.text
    return reply.json()["model_version"]


def test_project_ids_are_normalised_and_absurd_ones_refused(make_client):
    client = make_client()
    version = setup(client, "007.1700000000")
    assert setup(client, 7) == version
    for absurd in ("99999999999999999999.1", "0.1", "-3.1", "1e9"):
        reply = client.post("/setup", json={"project": absurd, "schema": CONFIG})
        assert reply.status_code == 422 and "project" in reply.json()["error"], absurd
    status = client.get("/status").json()["projects"]
    assert list(status) == ["7"]


def test_events_and_syncs_for_a_project_nobody_connected_are_refused(make_client, tmp_path):
    client = make_client(label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40)
    reply = annotate(client, 1, 10, "great film", "Positive", project=55)
    assert reply.status_code == 403 and "not connected" in reply.json()["error"]
    assert client.post("/sync/55", json={}).status_code == 403
    assert not (tmp_path / "models" / "55").exists()  # nothing read, written or created
    setup(client, "55.1")
    assert annotate(client, 1, 10, "great film", "Positive", project=55).status_code == 200


def test_a_prediction_with_a_label_config_does_not_connect_a_project(make_client, tmp_path):
    client = make_client(label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40)
    assert predict(client, ["a wonderful film"], project="424242.1").status_code == 200
    assert (tmp_path / "models" / "424242").is_dir()  # it predicted, and saved its prototype
    reply = client.post("/sync/424242", json={})
    assert reply.status_code == 403 and "not connected" in reply.json()["error"]
    reply = annotate(client, 1, 10, "great film", "Positive", project=424242)
    assert reply.status_code == 403
    setup(client, "424242.1")  # only /setup connects
    assert annotate(client, 1, 10, "great film", "Positive", project=424242).status_code == 200
    assert client.post("/sync/424242", json={}).status_code == 202


def test_an_oversized_chunked_body_is_a_413_with_the_error_shape(make_client):
    client = make_client(max_body_bytes=1000)

    def chunks():
        for _ in range(10):
            yield b"x" * 500

    for path in ("/predict", "/webhook", "/setup"):
        reply = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert reply.status_code == 413, (path, reply.text)
        assert "MAX_BODY_BYTES" in reply.json()["error"]


def test_deeply_nested_json_is_a_400(make_client):
    client = make_client()
    setup(client)
    deep = b'{"action": "ANNOTATION_CREATED", "project": {"id": 7}, "x": ' + b"[" * 100_000
    deep += b"]" * 100_000 + b"}"
    reply = client.post("/webhook", content=deep, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "nested" in reply.json()["error"]
    nested = b'{"project": "7.1", "tasks": [{"id": 1, "data": {"text": ' + b"[" * 100_000
    nested += b"]" * 100_000 + b"}}]}"
    reply = client.post("/predict", content=nested, headers={"content-type": "application/json"})
    assert 400 <= reply.status_code < 500, reply.text
    assert client.get("/health").status_code == 200


def test_a_task_without_usable_text_gets_an_empty_prediction_the_others_are_predicted(make_client):
    client = make_client()
    setup(client)
    tasks = [
        {"id": 1, "data": {"text": "a wonderful film"}},
        {"id": 2, "data": {"body": "no text field"}},
        {"id": 3, "data": {"text": "   "}},
        {"id": 4, "data": {"text": "dull and far too long"}},
    ]
    reply = client.post("/predict", json={"tasks": tasks, "project": "7.1"})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert len(results) == 4
    assert results[0]["result"] and results[3]["result"]
    assert results[1]["result"] == [] and results[2]["result"] == []


def test_a_huge_text_is_cut_before_it_is_tokenized(make_client, monkeypatch):
    client = make_client(max_text_chars=500)
    setup(client)
    seen: list[int] = []
    original = Project.score

    def spy(self, texts, embeddings=None, model=None):
        seen.extend(len(t) for t in texts)
        return original(self, texts, embeddings, model)

    monkeypatch.setattr(Project, "score", spy)
    reply = predict(client, ["word " * 2_000_000])  # 10 MB
    assert reply.status_code == 200
    assert seen == [500]


def test_malformed_annotation_results_are_stored_and_skipped_never_stopping_training(make_client):
    client = make_client()
    setup(client)
    bad_results = [
        [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": None}],
        ["not an object", 3],
        [
            {
                "from_name": "sentiment",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": None},
            }
        ],
    ]
    for i, result in enumerate(bad_results):
        body = {
            "action": "ANNOTATION_CREATED",
            "annotation": {"id": 100 + i, "task": 100 + i, "result": result},
            "task": {"id": 100 + i, "data": {"text": f"odd {i}"}},
            "project": {"id": 7, "label_config": CONFIG},
        }
        assert client.post("/webhook", json=body).status_code == 200
    for i, (text, label) in enumerate(
        [("a wonderful film", "Positive"), ("dull and boring", "Negative")] * 2
    ):
        assert annotate(client, i + 1, i + 1, text, label).status_code == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        head = client.get("/status").json()["projects"]["7"]["jobs"]["head"]
        if head["state"] == "done" and (head["last_result"] or {}).get("labels") == 4:
            break
        time.sleep(0.2)
    assert head["state"] == "done", head
    assert head["last_result"]["labels"] == 4  # the three malformed ones were skipped


def test_a_full_prediction_queue_answers_503_and_health_webhooks_setup_still_answer(
    make_client, monkeypatch
):
    client = make_client(threads=2, predict_queue=2)
    setup(client)
    release = threading.Event()
    entered = threading.Semaphore(0)
    original = Project.predict

    def slow(self, tasks):
        entered.release()
        release.wait(30)
        return original(self, tasks)

    monkeypatch.setattr(Project, "predict", slow)
    replies: list[int] = []
    busy = [
        threading.Thread(target=lambda: replies.append(predict(client, ["x"]).status_code))
        for _ in range(2)
    ]
    for thread in busy:
        thread.start()
    assert entered.acquire(timeout=10) and entered.acquire(timeout=10)  # every thread is busy
    try:
        full = predict(client, ["one more"])
        assert full.status_code == 503 and full.headers["Retry-After"]
        assert "PREDICT_QUEUE" in full.json()["error"]
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        assert setup(client)
        assert annotate(client, 1, 1, "a wonderful film", "Positive").status_code == 200
        assert time.monotonic() - started < 5  # none of them waited for a prediction thread
    finally:
        release.set()
        for thread in busy:
            thread.join(30)
    assert replies == [200, 200]


@pytest.mark.parametrize("labels", [3000])
def test_a_config_with_thousands_of_labels_answers_in_bounded_size(make_client, labels):
    client = make_client()
    choices = "".join(f'<Choice value="label {i}"/>' for i in range(labels))
    config = (
        '<View><Text name="text" value="$text"/>'
        f'<Choices name="sentiment" toName="text">{choices}</Choices></View>'
    )
    setup(client, config=config)
    reply = predict(client, ["a task"], config=config)
    assert reply.status_code == 200
    (item,) = reply.json()["results"][0]["result"]
    assert len(item["probabilities"]) <= 20 and item["labels_cut"] == labels
    assert len(json.dumps(reply.json())) < 20_000
