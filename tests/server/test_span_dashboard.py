"""The dashboard, the report and the stopping signal of a span project: entity F1 in place
of accuracy, the entity types the model confuses, the regions it doubts."""

import time

import pytest
from test_spans_api import NER, event, region, sentence

from ls_backend.core import stopping

WRONG = 5  # this sentence's place is labeled PER
FORGOTTEN = 9  # ... and this one's place is not labeled at all


def labeled(i):
    text, spans = sentence(i)
    if i == WRONG:
        spans = [spans[0], (*spans[1][:2], "PER")]
    if i == FORGOTTEN:
        spans = spans[:1]
    return text, [region(text, *s) for s in spans]


def head_runs(client):
    return client.get("/status").json()["projects"]["9"]["jobs"]["head"]


def label_in_rounds(client, n, per_round):
    """``n`` sentences, ``per_round`` at a time, each batch trained on before the next."""
    assert client.post("/setup", json={"project": "9.1700000000", "schema": NER}).is_success
    for begin in range(0, n, per_round):
        before = head_runs(client).get("runs", 0)
        for i in range(begin, min(n, begin + per_round)):
            text, result = labeled(i)
            assert client.post("/webhook", json=event(100 + i, 10 + i, text, result)).is_success
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = head_runs(client)
            if job["state"] not in {"queued", "running"} and job.get("runs", 0) > before:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("the head lane did not finish")


def test_a_span_project_gets_entity_f1_confusions_suspects_and_a_stopping_signal(
    make_client, monkeypatch: pytest.MonkeyPatch
):
    # A forecast needs 50 labels and 4 versions; a toy project gets one from 4 and 3.
    monkeypatch.setattr(stopping, "MIN_LABELS", 4)
    monkeypatch.setattr(stopping, "MIN_VERSIONS", 3)
    client = make_client()
    label_in_rounds(client, 24, 4)

    shown = client.get("/status").json()["projects"]["9"]["stopping"]
    assert shown["metric"] == "entity F1" and shown["labels"] == 24
    assert shown["verdict"] == "keep labeling"  # far below the rule's floor of labels
    assert shown["gain_80_percent"][0] < shown["gain_per_100_labels"]
    assert "points of entity F1" in shown["note"]

    report = client.get("/projects/9/report").json()
    assert report["metric"] == "entity F1"
    plateau = report["plateau"]
    assert plateau["curve_labels"] == sorted(plateau["curve_labels"])
    assert plateau["curve_labels"][-1] == 24 and len(plateau["curve_labels"]) >= 4
    assert all(0.0 <= f <= 1.0 for f in plateau["curve_accuracy"])
    assert plateau["curve_accuracy"][-1] > 0.5  # the newest judged by itself
    scored = [p for p in report["learning_curve"] if p["accuracy"] is not None]
    assert scored and all(0.0 <= p["accuracy"] <= 1.0 for p in scored)
    assert report["label_distribution"] == {"PER": 25, "LOC": 22}

    # The place labeled PER, and the place nobody labeled, are what the model doubts.
    text, gold = sentence(WRONG)
    start, end, _ = gold[1]
    suspects = {(s["task_id"], s["start"]): s for s in report["suspects"]}
    flipped = suspects[(10 + WRONG, start)]
    assert (flipped["given"], flipped["predicted"]) == ("PER", "LOC")
    assert flipped["region"] == text[start:end] and flipped["end"] == end
    assert flipped["quality"] < 0.5 < flipped["confidence"]
    text, gold = sentence(FORGOTTEN)
    missing = suspects[(10 + FORGOTTEN, gold[1][0])]
    assert (missing["given"], missing["predicted"]) == ("(no entity)", "LOC")
    assert "span head" in report["suspects_note"]
    pairs = {(c["given"], c["predicted"]): c["count"] for c in report["confusions"]}
    assert pairs.get(("PER", "LOC")) == 1 and pairs.get(("(no entity)", "LOC")) == 1
    assert "right" in report["confusions_note"] and "spurious" in report["confusions_note"]
    assert report["stopping"] is None and "entity F1" in report["stopping_note"]

    page = client.get("/ui/projects/9").text
    assert "entity F1 (blue)" in page and "points of entity F1" in page
    assert "plateau-plot" in page and "confusions-note" in page
    assert f"<b>{sentence(WRONG)[0][start:end]}</b>" in page
    assert "keep labeling" in client.get("/ui").text
