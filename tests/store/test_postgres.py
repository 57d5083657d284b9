"""The backend on a real PostgreSQL (DATABASE_URL): an ordinary role, and an outage."""

from __future__ import annotations

from fakes import HashEncoder, annotation_event, wait_for
from fastapi.testclient import TestClient

from ls_backend.projects import Projects
from ls_backend.server.app import create_app
from ls_backend.settings import Settings

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""


def test_a_postgres_outage_refuses_webhooks_with_503_and_predictions_keep_serving(
    tmp_path, postgres, database_url
):
    settings = Settings(model_dir=tmp_path, database_url=database_url, lora_enabled=False)
    backend = Projects(settings, encoder=HashEncoder())
    with TestClient(create_app(settings, backend), base_url="http://localhost") as client:
        assert client.post("/setup", json={"project": "1.1", "schema": CONFIG}).status_code == 200
        event = annotation_event(1, 10, ["A"], config=CONFIG)
        assert client.post("/webhook", json=event).status_code == 200
        task = {"id": 11, "data": {"text": "still served"}}
        predict = {"project": "1.1", "tasks": [task], "label_config": CONFIG}
        postgres.stop()
        try:
            refused = client.post("/webhook", json=annotation_event(2, 12, ["B"], config=CONFIG))
            assert refused.status_code == 503, refused.text
            assert "Start Training" in refused.json()["error"]
            served = client.post("/predict", json=predict)
            assert served.status_code == 200, served.text
            assert served.json()["results"][0]["result"]
        finally:
            postgres.start()
        # Stored again soon after PostgreSQL is back (the pool reconnects on demand).
        again = annotation_event(2, 12, ["B"], config=CONFIG)
        assert wait_for(lambda: client.post("/webhook", json=again).status_code == 200, 30)
    assert backend.project(1).store.count("annotations") == 2


def test_the_embedding_cache_never_fails_an_embedding_while_postgres_is_away(
    tmp_path, postgres, database_url
):
    import numpy as np

    from ls_backend.store.databases import Databases

    databases = Databases(tmp_path, database_url)
    cache = databases.embedding_cache()
    vector = np.ones(4, dtype=np.float32)
    cache.put_many("model", {b"k": vector})
    postgres.stop()
    try:
        assert cache.get_many("model", [b"k"]) == {}  # a miss: the model embeds it again
        cache.put_many("model", {b"other": vector})  # not kept, and no error
    finally:
        postgres.start()
    assert set(databases.embedding_cache().get_many("model", [b"k"])) == {b"k"}
    databases.close()
