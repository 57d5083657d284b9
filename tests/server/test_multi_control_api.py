"""A config with several controls on one text through the HTTP app: ``<Choices>`` and
``<Labels>`` both predicted in one prediction, both trained by webhooks, an annotation with
only a choice training the classifier alone; two ``<Labels>`` each with a model; the
dashboard, the report, /status and a rollback of such a project."""

import time

BOTH = """<View>
  <Text name="text" value="$text"/>
  <Choices name="topic" toName="text"><Choice value="travel"/><Choice value="weather"/></Choices>
  <Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>
</View>"""
TWO_LABELS = """<View>
  <Labels name="people" toName="text"><Label value="PER"/></Labels>
  <Labels name="places" toName="text"><Label value="LOC"/></Labels>
  <Text name="text" value="$text"/>
</View>"""

PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry"]
PLACES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Dublin", "Prague"]


def travel(i):
    person, place = PEOPLE[i % len(PEOPLE)], PLACES[(3 * i) % len(PLACES)]
    text = f"{person} flew to {place} on Monday ."
    at = text.index(place)
    return text, [(0, len(person), "PER"), (at, at + len(place), "LOC")]


def region(name, source, start, end, label):
    value = {"start": start, "end": end, "text": source[start:end], "labels": [label]}
    return {"from_name": name, "to_name": "text", "type": "labels", "value": value}


def choice(value):
    return {"from_name": "topic", "to_name": "text", "type": "choices",
            "value": {"choices": [value]}}  # fmt: skip


def event(ann_id, task_id, text, result, config):
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": ann_id, "task": task_id, "was_cancelled": False, "result": result},
        "task": {"id": task_id, "data": {"text": text}},
        "project": {"id": 9, "label_config": config},
    }


def predict(client, texts, config):
    tasks = [{"id": 500 + i, "data": {"text": t}} for i, t in enumerate(texts)]
    body = {"tasks": tasks, "project": "9.1700000000", "label_config": config}
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()["results"]


def head_status(client, want_runs=1, timeout=60.0):
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = client.get("/status").json()["projects"]["9"]["jobs"]["head"]
        if status["state"] == "done" and status.get("runs", 0) >= want_runs:
            return status
        time.sleep(0.2)
    raise AssertionError(f"no head round: {status}")


def post(client, *events):
    for body in events:
        assert client.post("/webhook", json=body).status_code == 200


def test_choices_and_labels_are_both_predicted_and_both_learn(make_client):
    client = make_client()
    setup = client.post("/setup", json={"project": "9.1700000000", "schema": BOTH})
    assert setup.status_code == 200, setup.text
    (cold,) = predict(client, ["Alice flew to Paris ."], BOTH)
    assert [r["type"] for r in cold["result"]] == ["choices"]  # zero-shot; no span yet

    events = []
    for i in range(10):  # travel with both controls
        text, spans = travel(i)
        result = [choice("travel"), *(region("label", text, *s) for s in spans)]
        events.append(event(100 + i, 10 + i, text, result, BOTH))
    for i in range(6):  # weather with the choice only: no "no entity" for the span model
        text = f"It rained all day {i} ."
        events.append(event(200 + i, 40 + i, text, [choice("weather")], BOTH))
    post(client, *events)

    result = head_status(client)["last_result"]
    assert result["promoted"] and result["version"].endswith("-head"), result
    assert result["labels"] == 16
    parts = result["metrics"]["parts"]
    assert set(parts) == {"topic", "label"}
    assert parts["topic"]["n"] == 16 and parts["label"]["n"] == 10  # choice-only: no span label

    texts = ["Grace flew to Rome on Monday .", "It rained all day 9 ."]
    served = predict(client, texts, BOTH)
    for text, item in zip(texts, served, strict=True):
        assert item["model_version"] == result["version"] and 0.0 <= item["score"] <= 1.0
        kinds = [r["type"] for r in item["result"]]
        assert kinds[0] == "choices" and "combined" in item["result"][0]["uncertainty"]
        for r in item["result"][1:]:
            assert r["type"] == "labels" and r["from_name"] == "label"
            assert text[r["value"]["start"] : r["value"]["end"]] == r["value"]["text"]
    first = served[0]["result"]
    assert first[0]["value"]["choices"] == ["travel"]
    assert ("Rome", "LOC") in {(r["value"]["text"], r["value"]["labels"][0]) for r in first[1:]}
    assert served[1]["result"][0]["value"]["choices"] == ["weather"]

    # The admin's views of such a project.
    status = client.get("/status")
    assert status.status_code == 200
    stopping = status.json()["projects"]["9"]["stopping"]
    assert stopping["verdict"] is None and "multi" in stopping["note"]  # computed, not failed
    report = client.get("/projects/9/report")
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["label_distribution"]["topic: travel"] == 10
    assert body["label_distribution"]["label: PER"] == 10
    assert body["learning_curve"][-1]["accuracy"] is not None
    for page in ("/ui", "/ui/projects/9"):
        reply = client.get(page)
        assert reply.status_code == 200, (page, reply.text[-2000:])

    # Rollback to the prototype and back: the composite version serves again.
    first_version = body["learning_curve"][0]["version"]
    back = client.post("/projects/9/rollback", json={"version": first_version})
    assert back.status_code == 200 and back.json()["pinned"]
    (rolled,) = predict(client, ["Alice flew to Paris ."], BOTH)
    assert rolled["model_version"] == first_version
    assert (
        client.post("/projects/9/rollback", json={"version": result["version"]}).status_code == 200
    )
    (again,) = predict(client, ["Alice flew to Paris ."], BOTH)
    assert again["model_version"] == result["version"]
    assert any(r["type"] == "labels" for r in again["result"])


def test_two_labels_controls_each_learn_their_entities(make_client):
    client = make_client()
    client.post("/setup", json={"project": "9.1700000000", "schema": TWO_LABELS})
    events = []
    for i in range(10):
        text, (person, place) = travel(i)
        result = [region("people", text, *person), region("places", text, *place)]
        events.append(event(100 + i, 10 + i, text, result, TWO_LABELS))
    post(client, *events)
    result = head_status(client)["last_result"]
    assert result["promoted"] and set(result["metrics"]["parts"]) == {"people", "places"}
    (item,) = predict(client, ["Grace flew to Rome on Monday ."], TWO_LABELS)
    found = {(r["from_name"], r["value"]["text"], r["value"]["labels"][0]) for r in item["result"]}
    assert ("people", "Grace", "PER") in found and ("places", "Rome", "LOC") in found
