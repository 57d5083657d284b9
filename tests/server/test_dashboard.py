"""The dashboard's data and page over the API: report, rollback, /ui, and basic auth on them."""

import base64
import time

from test_api import CONFIG, TRAIN, annotate

MORE = [
    ("an absolute joy to watch", "Positive"),
    ("funny, warm and clever", "Positive"),
    ("one of the best films I have seen", "Positive"),
    ("I fell asleep halfway through", "Negative"),
    ("badly written and badly acted", "Negative"),
    ("avoid this one", "Negative"),
]


def labeled_project(client, rows=TRAIN + MORE, project=7):
    assert client.post("/setup", json={"project": f"{project}.1", "schema": CONFIG}).is_success
    for i, (text, label) in enumerate(rows):
        assert annotate(client, 100 + i, 10 + i, text, label, project=project).is_success
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = client.get("/status").json()["projects"][str(project)]["jobs"]
        if jobs["head"]["state"] not in {"queued", "running"} and jobs["head"]["runs"]:
            return
        time.sleep(0.1)
    raise TimeoutError("the head lane did not finish")


def test_the_report_has_every_version_and_the_rollback_moves_the_serving_one(make_client):
    client = make_client()
    labeled_project(client)
    report = client.get("/projects/7/report").json()
    curve = report["learning_curve"]
    versions = [p["version"] for p in curve]
    assert versions[0].endswith("-prototype") and versions[-1].endswith("-head")
    assert [p["version"] for p in curve if p["serving"]] == [report["model_version"]]
    assert report["labels"] == 12 and report["label_distribution"] == {
        "Positive": 6,
        "Negative": 6,
    }
    assert len(report["suspects"]) == 12  # every label judged out of fold, worst first
    qualities = [s["quality"] for s in report["suspects"]]
    assert qualities == sorted(qualities)
    assert report["queue"] == [] and "sync is off" in report["queue_note"]

    reply = client.post("/projects/7/rollback", json={"version": versions[0]})
    assert reply.status_code == 200 and reply.json()["model_version"] == versions[0]
    assert client.get("/status").json()["projects"]["7"]["model_version"] == versions[0]
    page = client.get("/ui/projects/7").text
    assert 'class="serving-mark"' not in page  # zero-shot has no score to mark on the curve

    missing = client.post("/projects/7/rollback", json={"version": "v0099-head"})
    assert missing.status_code == 404 and "v0099-head" in missing.json()["error"]
    assert client.post("/projects/7/rollback", json={}).status_code == 422
    assert client.get("/projects/8/report").status_code == 404
    assert client.get("/projects/x/report").status_code == 422


def test_the_page_is_self_contained_and_listed_in_openapi(make_client):
    client = make_client()
    labeled_project(client)
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui"
    overview = client.get("/ui")
    assert overview.status_code == 200 and "/ui/projects/7" in overview.text
    page = client.get("/ui/projects/7").text
    assert "learning-curve" in page and "<script>" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page  # no CDN, no external asset
    schema = client.get("/openapi.json").json()
    route = schema["paths"]["/projects/{project}/report"]["get"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ProjectReport"
    )
    assert "/projects/{project}/rollback" in schema["paths"]


def test_the_page_and_the_report_need_basic_auth_when_it_is_on(make_client):
    client = make_client(basic_auth_user="admin", basic_auth_pass="s3cret")
    for path in ("/ui", "/ui/projects/7", "/projects/7/report", "/"):
        assert client.get(path, follow_redirects=False).status_code == 401
    assert (
        client.post("/projects/7/rollback", json={"version": "v0001-prototype"}).status_code == 401
    )
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()}
    assert client.get("/ui", headers=auth).status_code == 200


def wait_for_head_runs(client, runs, project=7):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        head = client.get("/status").json()["projects"][str(project)]["jobs"]["head"]
        if head["state"] not in {"queued", "running"} and head["runs"] >= runs:
            return
        time.sleep(0.1)
    raise TimeoutError("the head lane did not run")


def test_a_rollback_is_pinned_until_the_admin_lifts_it(make_client):
    """The next label used to undo a rollback; now it trains a version that is saved but does
    not serve until the pin is lifted (API and page)."""
    client = make_client()
    labeled_project(client)
    versions = [p["version"] for p in client.get("/projects/7/report").json()["learning_curve"]]
    runs = client.get("/status").json()["projects"]["7"]["jobs"]["head"]["runs"]
    reply = client.post("/projects/7/rollback", json={"version": versions[0]})
    assert reply.json() == {"project": "7", "model_version": versions[0], "pinned": True}

    assert annotate(client, 300, 300, "a dull and tedious mess", "Negative").is_success
    wait_for_head_runs(client, runs + 1)
    report = client.get("/projects/7/report").json()
    assert report["model_version"] == versions[0] and report["pinned"]
    newest = report["learning_curve"][-1]
    assert newest["version"] not in versions and not newest["promoted"]  # trained and saved
    page = client.get("/ui/projects/7").text
    assert "id=pinned" in page and 'onclick="unpin()"' in page

    assert client.post("/projects/7/rollback", json={"pin": False}).json() == {
        "project": "7",
        "model_version": versions[0],
        "pinned": False,
    }
    assert "id=pinned" not in client.get("/ui/projects/7").text
    assert annotate(client, 301, 301, "a warm, funny delight", "Positive").is_success
    wait_for_head_runs(client, runs + 2)
    report = client.get("/projects/7/report").json()
    assert (
        not report["pinned"] and report["model_version"] == report["learning_curve"][-1]["version"]
    )

    unpinned = client.post("/projects/7/rollback", json={"version": versions[0], "pin": False})
    assert unpinned.json()["pinned"] is False
