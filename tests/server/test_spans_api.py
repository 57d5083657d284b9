"""A span project (``<Labels>`` on a ``<Text>``, Label Studio's NER template) through the
HTTP app: setup, pre-annotated regions, webhooks that train, bad spans that never fail."""

import time

NER = """<View>
  <Labels name="label" toName="text">
    <Label value="PER"/><Label value="LOC"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""

PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry"]
PLACES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Dublin", "Prague"]


def sentence(i):
    """``"<person> flew to <place> on Monday ."`` and its gold spans."""
    person, place = PEOPLE[i % len(PEOPLE)], PLACES[(3 * i) % len(PLACES)]
    text = f"{person} flew to {place} on Monday ."
    at = text.index(place)
    return text, [(0, len(person), "PER"), (at, at + len(place), "LOC")]


def region(source, start, end, label, **override):
    value = {"start": start, "end": end, "text": source[start:end], "labels": [label], **override}
    return {"from_name": "label", "to_name": "text", "type": "labels", "value": value}


def event(ann_id, task_id, text, result, project=9):
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": ann_id, "task": task_id, "was_cancelled": False, "result": result},
        "task": {"id": task_id, "data": {"text": text}},
        "project": {"id": project, "label_config": NER},
    }


def predict(client, texts, project="9.1700000000"):
    tasks = [{"id": 500 + i, "data": {"text": t}} for i, t in enumerate(texts)]
    reply = client.post("/predict", json={"tasks": tasks, "project": project, "label_config": NER})
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


def test_a_ner_project_serves_nothing_before_labels_then_learns_spans(make_client):
    client = make_client()
    setup = client.post("/setup", json={"project": "9.1700000000", "schema": NER})
    assert setup.status_code == 200, setup.text
    assert setup.json()["model_version"].endswith("-prototype")
    cold = predict(client, ["Alice flew to Paris ."])
    assert cold[0]["result"] == [] and cold[0]["score"] == 1.0  # nothing served, no error

    for i in range(12):
        text, spans = sentence(i)
        result = [region(text, *span) for span in spans]
        assert client.post("/webhook", json=event(100 + i, 10 + i, text, result)).status_code == 200
    # "no entity here" is a label too
    empty = client.post("/webhook", json=event(200, 30, "It rained all day .", []))
    assert empty.status_code == 200

    status = head_status(client)
    result = status["last_result"]
    assert result["version"].endswith("-head") and result["promoted"], result
    assert result["labels"] == 13 and 0.0 <= result["metrics"]["entity_f1"] <= 1.0
    assert set(result["metrics"]["per_type"]) == {"PER", "LOC"}

    # Unusual characters before the entities: offsets are code points of the original text.
    texts = ["Grace  flew to Rome on Monday .", "🙂 Émile flew to Dublin on Monday ."]
    served = predict(client, texts)
    for text, item in zip(texts, served, strict=True):
        assert item["model_version"] == result["version"]
        assert 0.0 <= item["score"] <= 1.0
        for r in item["result"]:
            assert r["type"] == "labels" and (r["from_name"], r["to_name"]) == ("label", "text")
            value = r["value"]
            assert text[value["start"] : value["end"]] == value["text"]
            assert value["labels"][0] in {"PER", "LOC"} and 0.0 < r["score"] <= 1.0
    found = {(r["value"]["text"], r["value"]["labels"][0]) for r in served[0]["result"]}
    assert ("Rome", "LOC") in found, served[0]
    assert "entropy_sum" in served[0]["result"][0]["uncertainty"]


def test_bad_spans_are_stored_skipped_counted_and_never_fail_a_round(make_client):
    client = make_client()
    client.post("/setup", json={"project": "9.1700000000", "schema": NER})
    for i in range(6):
        text, spans = sentence(i)
        client.post(
            "/webhook", json=event(100 + i, 10 + i, text, [region(text, *s) for s in spans])
        )
    text, _ = sentence(7)
    relation = {"type": "relation", "from_id": "a", "to_id": "b", "direction": "right"}
    bad = [
        [region(text, 0, len(text) + 5, "PER")],  # outside the text
        [region(text, 5, 2, "PER", text="")],  # end before start
        [region(text, 0, 5, "PER", text="Nobody")],  # text that is not at the offsets
        [region(text, 0, 5, "PER"), region(text, 2, 8, "LOC")],  # overlapping
        [region(text, 0, 5, "ORG")],  # a label the config does not have
        [region(text, 0, 5, "PER"), relation],  # a relation beside a good span: span kept
    ]
    for j, result in enumerate(bad):
        reply = client.post("/webhook", json=event(300 + j, 40 + j, text, result))
        assert reply.status_code == 200  # stored as sent
    status = head_status(client)
    result = status["last_result"]
    assert result["promoted"] and result["labels"] == 7  # 6 good + the one beside a relation
    assert result["skipped_annotations"] == 5
    problems = client.get("/status").json()["projects"]["9"]["label_problems"]
    assert problems == {
        "out_of_bounds": 1,
        "empty": 1,
        "text_mismatch": 1,
        "overlap": 2,
        "unknown_label": 1,
        "other_result": 1,
    }
    assert client.get("/status").json()["projects"]["9"]["annotations"] == 12


def test_the_dashboard_shows_a_span_project(make_client):
    client = make_client()
    client.post("/setup", json={"project": "9.1700000000", "schema": NER})
    for i in range(8):
        text, spans = sentence(i)
        client.post(
            "/webhook", json=event(100 + i, 10 + i, text, [region(text, *s) for s in spans])
        )
    head_status(client)
    for page in ("/ui", "/ui/projects/9"):
        reply = client.get(page)
        assert reply.status_code == 200, (page, reply.text[-2000:])


def test_windows_line_endings_keep_exact_offsets_in_labels_and_regions(make_client):
    # Offsets are Python str indices of the text as Label Studio sends it ("\r\n" is two
    # characters, a lone "\r" one), both in the annotations read and the regions served.
    client = make_client()
    client.post("/setup", json={"project": "9.1700000000", "schema": NER})
    for i in range(12):
        text, spans = sentence(i)
        person, place = text[spans[0][0] : spans[0][1]], text[spans[1][0] : spans[1][1]]
        text = f"Note {i}:\r\n{person} flew\rto {place} .\r\n"
        at_person, at_place = text.index(person), text.index(place)
        result = [
            region(text, at_person, at_person + len(person), "PER"),
            region(text, at_place, at_place + len(place), "LOC"),
        ]
        assert client.post("/webhook", json=event(100 + i, 10 + i, text, result)).is_success
    result = head_status(client)["last_result"]
    assert result["labels"] == 12, result  # no region refused as out of place
    assert client.get("/status").json()["projects"]["9"].get("label_problems", {}) == {}

    texts = ["Note 99:\r\nEmma flew\rto Rome .\r\n", "Emma\r\n\r\nflew to Rome ."]
    for text, item in zip(texts, predict(client, texts), strict=True):
        found = {
            (r["value"]["start"], r["value"]["end"], r["value"]["text"]) for r in item["result"]
        }
        for start, end, quoted in found:
            assert text[start:end] == quoted and quoted.strip() == quoted
        assert (text.index("Rome"), text.index("Rome") + 4, "Rome") in found, item
