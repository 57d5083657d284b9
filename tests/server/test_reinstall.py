"""A reinstalled Label Studio (a fresh database: the same project and annotation ids, a new
project creation time) gets fresh state, over the HTTP API."""

import time

from fakes import annotation_event
from test_api import CONFIG, TRAIN

OLD, NEW = 1767605400, 1772366400  # project 3's creation: "<id>.<created>" in /setup
OLD_AT, NEW_AT = "2026-01-05T09:30:00.250000Z", "2026-03-01T12:00:00Z"  # the same, in webhooks


def webhook(client, ann_id, task_id, text, label, created_at, action="ANNOTATION_CREATED"):
    body = annotation_event(
        ann_id, task_id, [label], text=text, config=CONFIG, project=3, from_name="sentiment",
        action=action,
    )  # fmt: skip
    body["project"]["created_at"] = created_at
    return client.post("/webhook", json=body)


def wait_for_labels(client, labels, project=3):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = client.get(f"/projects/{project}/report").json()
        head = report["jobs"]["head"]
        if report["labels"] == labels and head["state"] == "done":
            return report
        time.sleep(0.1)
    raise TimeoutError(f"never {labels} labels trained")


def test_a_reinstalled_label_studio_gets_fresh_state(make_client):
    client = make_client()
    setup = {"project": f"3.{OLD}", "schema": CONFIG, "hostname": "http://ls.internal:8080"}
    assert client.post("/setup", json=setup).status_code == 200
    for i, (text, label) in enumerate(TRAIN):
        assert webhook(client, 1 + i, 100 + i, text, label, OLD_AT).status_code == 200
    gone = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {"id": 2}],
            "project": {"id": 3, "created_at": OLD_AT}}  # fmt: skip
    assert client.post("/webhook", json=gone).status_code == 200
    old = wait_for_labels(client, len(TRAIN) - 2)

    # Label Studio reinstalled on the same host: project 3 again, annotation ids from 1 again.
    reinstalled = {**setup, "project": f"3.{NEW}"}
    version = client.post("/setup", json=reinstalled).json()["model_version"]
    assert version.endswith("-prototype") and version != old["model_version"]  # zero-shot
    fresh = client.get("/projects/3/report").json()
    assert fresh["annotations"] == 0 and fresh["tasks"] == 0
    assert [p["version"] for p in fresh["learning_curve"]][: len(old["learning_curve"])] == [
        p["version"] for p in old["learning_curve"]
    ]  # the old versions stay saved
    labels = ["Negative", "Positive"]
    for i in range(4):  # ids 1 and 2 were deleted in the old one: they used to be dropped
        text = f"a review of the new installation, number {i}"
        assert webhook(client, 1 + i, 500 + i, text, labels[i % 2], NEW_AT).status_code == 200
    assert wait_for_labels(client, 4)["annotations"] == 4

    stale = webhook(client, 3, 102, "from the old installation", "Positive", OLD_AT)
    assert stale.status_code == 409 and "2026-01-05 09:30:00 UTC" in stale.json()["error"]
    back = client.post("/setup", json=setup)
    assert back.status_code == 409 and "replaced" in back.json()["error"]
    assert client.post("/setup", json=reinstalled).status_code == 200
    assert client.get("/projects/3/report").json()["annotations"] == 4
