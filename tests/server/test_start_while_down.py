"""The real server (`ls-backend serve`, as the README starts it) starts whatever is down.

With Redis or PostgreSQL unreachable it boots, serves predictions from what is on disk,
answers a webhook 2xx once its event is stored (503 only when it cannot be stored), and
catches up by itself once the server is back (issue 25, item 5).
"""

from __future__ import annotations

import json
import time

import httpx
from backend_server import BackendServer
from fakes import annotation_event, wait_for
from postgres_server import PostgresServer
from redis import Redis
from redis_server import RedisServer

from ls_backend.store.annotations import AnnotationStore
from ls_backend.store.sqlite import SqliteDatabase

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""
PREDICT = {
    "project": "1.1700000000",
    "tasks": [{"id": 1, "data": {"text": "is this A?"}}],
    "label_config": CONFIG,
}


def webhook(server: BackendServer, i: int) -> httpx.Response:
    body = annotation_event(i, 1000 + i, ["AB"[i % 2]], text=f"text {i}", config=CONFIG)
    return httpx.post(f"{server.url}/webhook", json=body, timeout=60)


def serving(server: BackendServer) -> str | None:
    projects = httpx.get(f"{server.url}/status", timeout=60).json()["projects"]
    return projects.get("1", {}).get("model_version")


def trained_on(model_dir, version: str | None) -> int:
    if not version:
        return 0
    info = json.loads((model_dir / "1" / "models" / version / "info.json").read_text())
    return int(info.get("labels", 0))


def test_with_redis_down_it_starts_stores_webhooks_and_enqueues_once_redis_is_back(tmp_path):
    redis = RedisServer(tmp_path / "redis")  # not started: nothing listens on its port yet
    model_dir = tmp_path / "models"
    # Labels a previous run stored and no worker trained: the start looks at them.
    store = AnnotationStore(SqliteDatabase(model_dir / "1" / "annotations.sqlite"))
    store.set_label_config(CONFIG)
    store.mark_connected()
    for i in range(4):
        store.apply(annotation_event(i, 1000 + i, ["AB"[i % 2]], config=CONFIG))
    server = BackendServer(model_dir, {"REDIS_URL": redis.url}).start()  # today: exit 3
    try:
        setup = httpx.post(
            f"{server.url}/setup", json={"project": "1.1700000000", "schema": CONFIG}, timeout=60
        )
        assert setup.status_code == 200, setup.text
        reply = webhook(server, 4)
        assert reply.status_code == 200 and reply.json()["status"] == "stored", reply.text
        assert httpx.post(f"{server.url}/predict", json=PREDICT, timeout=60).status_code == 200
        assert serving(server) is not None  # /status reads the store only
        redis.start(persist=False)
        queued = Redis.from_url(redis.url)
        wait_for(lambda: queued.llen("rq:queue:ls-backend:head"), 30, "the head lane's job")
    finally:
        server.stop()
        redis.stop()


def test_with_postgresql_down_it_starts_serves_from_disk_and_refuses_only_what_it_cannot_store(
    tmp_path,
):
    postgres = PostgresServer().start()
    try:
        env = {"DATABASE_URL": postgres.create_database()}
        model_dir = tmp_path / "models"
        server = BackendServer(model_dir, env).start()
        try:
            setup = {"project": "1.1700000000", "schema": CONFIG}
            assert httpx.post(f"{server.url}/setup", json=setup, timeout=60).status_code == 200
            for i in range(6):
                assert webhook(server, i).status_code == 200
            head = wait_for(lambda: trained_on(model_dir, serving(server)) == 6 and serving(server))
        finally:
            server.stop()
        postgres.stop()
        server = BackendServer(model_dir, env).start()  # today: exit 3 ("Worker failed to boot")
        try:
            predicted = httpx.post(f"{server.url}/predict", json=PREDICT, timeout=120)
            assert predicted.status_code == 200, predicted.text
            assert predicted.json()["model_version"] == head  # what served, from disk
            started = time.monotonic()  # the next ones do not wait for PostgreSQL again
            assert httpx.post(f"{server.url}/predict", json=PREDICT, timeout=60).status_code == 200
            assert time.monotonic() - started < 4.0  # not the 5 s connection wait
            refused = webhook(server, 6)
            assert refused.status_code == 503, refused.text  # not stored: said so
            postgres.start()
            deadline = time.monotonic() + 60
            while (reply := webhook(server, 6)).status_code != 200:
                assert time.monotonic() < deadline, reply.text
                time.sleep(1.0)
            wait_for(lambda: trained_on(model_dir, serving(server)) == 7, 120, "a head on 7 labels")
        finally:
            server.stop()
    finally:
        postgres.remove()
