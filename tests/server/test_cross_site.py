"""What a web page the admin visits must not be able to do: post events or syncs with a form
or a no-cors fetch, read the API through a DNS-rebound name of its own, or frame the pages."""

import json

import pytest
from test_api import CONFIG, annotate
from test_hardening import setup

from ls_backend.server.middleware import HostPolicy


def test_posts_that_are_not_json_are_refused_and_nothing_is_stored(make_client):
    client = make_client(label_studio_url="http://127.0.0.1:9", label_studio_api_key="k" * 40)
    setup(client)
    event = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 1, "task": 10, "result": []},
        "task": {"id": 10, "data": {"text": "forged"}},
        "project": {"id": 7},
    }
    forged = [  # what a form or a no-cors fetch can send
        ("/webhook", json.dumps(event), "text/plain"),
        ("/webhook", "action=ANNOTATION_CREATED", "application/x-www-form-urlencoded"),
        ("/webhook", json.dumps(event), "multipart/form-data; boundary=x"),
        ("/sync/7", "", None),  # no body, no Content-Type: a simple request, no preflight
        ("/sync/7", "", "application/x-www-form-urlencoded"),
        ("/setup", json.dumps({"project": "8.1", "schema": CONFIG}), "text/plain"),
        ("/projects/7/rollback", json.dumps({"version": "v0001-prototype"}), "text/plain"),
    ]
    for path, body, content_type in forged:
        headers = {"content-type": content_type} if content_type else {}
        reply = client.post(path, content=body, headers=headers)
        assert reply.status_code == 415, (path, content_type, reply.text)
        assert "application/json" in reply.json()["error"]
    status = client.get("/status").json()
    assert status["projects"]["7"]["annotations"] == 0 and "8" not in status["projects"]
    # Label Studio sends JSON (requests' json=), with or without a charset.
    assert annotate(client, 1, 10, "real", "Positive").status_code == 200
    body = json.dumps(event | {"annotation": {"id": 2, "task": 11, "result": []}})
    reply = client.post(
        "/webhook", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert reply.status_code == 200, reply.text
    assert client.post("/sync/7", json={}).status_code == 202


def test_a_host_name_that_is_not_ours_is_refused(make_client):
    client = make_client()  # bound to 127.0.0.1, ALLOWED_HOSTS unset
    for host in ("attacker.example", "attacker.example:9090", "localhost.attacker.example"):
        reply = client.get("/status", headers={"host": host})
        assert reply.status_code == 400, host
        assert "ALLOWED_HOSTS" in reply.json()["error"]
        assert client.post("/setup", json={}, headers={"host": host}).status_code == 400
    for host in ("localhost", "localhost:9090", "127.0.0.1:9090", "[::1]:9090", "LOCALHOST."):
        assert client.get("/status", headers={"host": host}).status_code == 200, host


def test_allowed_hosts_names_the_ones_label_studio_reaches_us_by(make_client):
    client = make_client(host="0.0.0.0", allowed_hosts="ls-backend.internal, .corp.example")
    for host in ("ls-backend.internal:9090", "ml.corp.example", "corp.example", "10.0.3.7:9090"):
        assert client.get("/status", headers={"host": host}).status_code == 200, host
    for host in ("ls-backend", "evil.example", "corp.example.evil.example"):
        assert client.get("/status", headers={"host": host}).status_code == 400, host
    anyone = make_client(allowed_hosts="*")
    assert anyone.get("/status", headers={"host": "anything.example"}).status_code == 200


@pytest.mark.parametrize(
    ("bound", "name", "allowed"),
    [
        ("127.0.0.1", "gpu-box", False),
        ("localhost", "gpu-box", False),
        ("::1", "gpu-box", False),
        ("0.0.0.0", "gpu-box", True),  # this machine's own name, when others can reach it
        ("0.0.0.0", "other-box", False),
    ],
)
def test_the_default_names_depend_on_where_the_backend_listens(monkeypatch, bound, name, allowed):
    monkeypatch.setattr("socket.gethostname", lambda: "gpu-box")
    assert HostPolicy.for_server(bound, None).allows(name) is allowed
    assert HostPolicy.for_server(bound, None).allows("127.0.0.1:9090")


def test_no_page_can_be_framed(make_client):
    client = make_client()
    setup(client)
    for path in ("/ui", "/ui/projects/7", "/status", "/docs"):
        reply = client.get(path)
        assert reply.status_code == 200, path
        assert reply.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"], path
