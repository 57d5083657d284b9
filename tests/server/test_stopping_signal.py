"""The stopping signal over the API: computed after the head lane's rounds, stored, and shown on
/status, in the report and on the page."""

import time

import pytest
from test_api import CONFIG, TRAIN, annotate
from test_dashboard import MORE

from ls_backend.core import stopping

ROWS = (
    TRAIN
    + MORE
    + [
        ("a triumph from start to finish", "Positive"),
        ("tedious and far too long", "Negative"),
        ("the cast is superb", "Positive"),
        ("a waste of an evening", "Negative"),
    ]
)


def head_runs(client, project=7):
    return client.get("/status").json()["projects"][str(project)]["jobs"]["head"]


def label_in_rounds(client, rows, per_round, project=7):
    """Labels ``per_round`` at a time, each batch trained on before the next comes: one head
    version per batch."""
    assert client.post("/setup", json={"project": f"{project}.1", "schema": CONFIG}).is_success
    for start in range(0, len(rows), per_round):
        before = head_runs(client, project).get("runs", 0)
        for i, (text, label) in enumerate(rows[start : start + per_round], start):
            assert annotate(client, 100 + i, 10 + i, text, label, project=project).is_success
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = head_runs(client, project)
            if job["state"] not in {"queued", "running"} and job.get("runs", 0) > before:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("the head lane did not finish")


def test_the_signal_says_too_early_after_the_first_rounds(make_client):
    client = make_client()
    label_in_rounds(client, ROWS[:12], 12)
    shown = client.get("/status").json()["projects"]["7"]["stopping"]
    assert shown["verdict"] is None and "too early to tell" in shown["note"]
    report = client.get("/projects/7/report").json()
    assert report["plateau"]["verdict"] is None
    assert report["plateau"]["curve_labels"] == [12]  # one head version, judged
    assert "too early to tell" in client.get("/ui/projects/7").text


def test_the_verdict_with_its_expected_gain_and_how_sure_appears_after_rounds(
    make_client, monkeypatch: pytest.MonkeyPatch
):
    # A forecast needs 50 labels and 4 versions; a toy project gets one from 4 labels and 3.
    monkeypatch.setattr(stopping, "MIN_LABELS", 4)
    monkeypatch.setattr(stopping, "MIN_VERSIONS", 3)
    client = make_client()
    label_in_rounds(client, ROWS, 2)
    shown = client.get("/status").json()["projects"]["7"]["stopping"]
    assert shown["verdict"] in {
        "keep labeling",
        "stop: more labels are unlikely to buy more than a point of accuracy",
    }
    assert shown["labels"] == len(ROWS) and shown["metric"] == "accuracy"
    gain, (low, high) = shown["gain_per_100_labels"], shown["gain_80_percent"]
    assert low < gain < high
    assert 0.0 <= shown["p_gain_over_a_point"] <= 1.0
    # Too few labels for the rule to let it stop, whatever the forecast.
    assert shown["stop"] is False and shown["verdict"] == "keep labeling"

    report = client.get("/projects/7/report").json()["plateau"]
    assert report["curve_labels"] == sorted(report["curve_labels"])
    assert report["curve_labels"][-1] == len(ROWS) and len(report["curve_labels"]) >= 4
    assert report["fit_labels"] and report["rule"] == stopping.RULE
    assert report["cpu_s"] < 5  # the cost of one signal, timed by the lane
    page = client.get("/ui/projects/7").text
    assert "Expected gain of the next 100 labels" in page and "plateau-plot" in page
    assert "keep labeling" in client.get("/ui").text
