"""The webhook-only token (WEBHOOK_TOKEN) opens /webhook and nothing else; /setup records the
URL Label Studio reached us by (whose webhook is ours); a webhook problem shows on /status and
on the dashboard."""

import base64

from fakes import annotation_event
from test_api import CONFIG

TOKEN = "a-long-random-webhook-token"
BASIC = "Basic " + base64.b64encode(b"admin:s3cret-password").decode()


def annotate(client, ann_id, task_id, text, label, headers=None):
    body = annotation_event(ann_id, task_id, [label], text=text, config=CONFIG, project=7,
                            from_name="sentiment")  # fmt: skip
    return client.post("/webhook", json=body, headers=headers or {})


def connect(client, project=7, **headers):
    reply = client.post("/setup", json={"project": f"{project}.1", "schema": CONFIG},
                        headers=headers)  # fmt: skip
    assert reply.status_code == 200, reply.text


def test_with_basic_auth_the_token_opens_only_the_webhook(make_client):
    client = make_client(
        basic_auth_user="admin", basic_auth_pass="s3cret-password", webhook_token=TOKEN
    )
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    connect(client, Authorization=BASIC)
    assert annotate(client, 1, 10, "great", "Positive", headers=bearer).status_code == 200
    assert annotate(client, 2, 11, "great", "Positive", headers={"Authorization": BASIC}).is_success
    wrong = {"Authorization": "Bearer not-the-token"}
    assert annotate(client, 3, 12, "great", "Positive", headers=wrong).status_code == 401
    assert annotate(client, 3, 12, "great", "Positive").status_code == 401
    for path in ("/status", "/ui", "/projects/7/report"):
        assert client.get(path, headers=bearer).status_code == 401, path
    assert client.post("/setup", json={"project": "7.1", "schema": CONFIG},
                       headers=bearer).status_code == 401  # fmt: skip
    assert (
        client.get("/status", headers={"Authorization": BASIC}).json()["projects"]["7"][
            "annotations"
        ]
        == 2
    )


def test_without_basic_auth_the_token_guards_the_webhook_alone(make_client):
    client = make_client(webhook_token=TOKEN)
    connect(client)
    assert annotate(client, 1, 10, "great", "Positive").status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert annotate(client, 1, 10, "great", "Positive", headers=bearer).status_code == 200
    assert client.get("/status").status_code == 200


def test_setup_records_the_url_label_studio_reached_us_by(make_client):
    client = make_client()
    connect(client)
    connect(client, **{"X-Forwarded-Host": "ml.example.org", "X-Forwarded-Proto": "https"})
    store = client.app.state.projects.project(7).store
    assert set(store.setup_urls()) == {"http://localhost", "https://ml.example.org"}


def test_a_webhook_problem_shows_on_status_and_the_dashboard(make_client):
    client = make_client()
    connect(client)
    assert client.get("/status").json()["projects"]["7"]["warnings"] == []
    problem = "Label Studio has no webhook for http://ls-backend:9090/webhook, ..."
    client.app.state.projects.project(7).store.set_webhook_problem(problem)
    assert client.get("/status").json()["projects"]["7"]["warnings"] == [problem]
    assert problem in client.get("/ui").text
    assert problem in client.get("/ui/projects/7").text
    assert client.get("/projects/7/report").json()["warnings"] == [problem]
