"""Live predictions (what an annotator waits for) never queue behind background embedding."""

import threading
import time

from ls_backend.projects import Projects
from ls_backend.settings import Settings

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="question"/><Choice value="statement"/></Choices></View>"""


def test_a_live_prediction_does_not_wait_for_a_sync_embedding_an_import(tmp_path):
    projects = Projects(Settings(model_dir=tmp_path, lora_enabled=False))
    project = projects.project(1)
    project.setup(CONFIG)
    project.predict([{"id": 1, "data": {"text": "warm the model up"}}])
    # Seconds of forward passes on 2 cores even with OpenVINO (1,200 texts took 0.5 s).
    imported = [f"imported task {i} about subject {i * 7919 % 1000}" for i in range(12_000)]
    embedded = threading.Event()

    def sync_embeds() -> None:
        projects.encoder.encode(imported, background=True)
        embedded.set()

    thread = threading.Thread(target=sync_embeds)
    thread.start()
    time.sleep(0.2)
    batch = project.predict([{"id": 2, "data": {"text": "What is the capital of France ?"}}])
    assert not embedded.is_set(), "the live prediction waited for the whole import"
    assert batch.results[0]["result"]
    thread.join(300)
    assert embedded.is_set()


def test_a_folder_in_model_dir_that_is_no_project_is_ignored_at_start(tmp_path, caplog):
    from fakes import HashEncoder
    from fastapi.testclient import TestClient

    from ls_backend.jobs import start_scheduler
    from ls_backend.server.app import create_app

    for stray in ("0", "007", "backup", "99999999999"):
        (tmp_path / stray).mkdir()
    settings = Settings(model_dir=tmp_path, lora_enabled=False)
    projects = Projects(settings, encoder=HashEncoder())
    projects.project(12).setup(CONFIG)  # a project's folder, its store and first model
    app = create_app(settings, projects, start_scheduler(projects))
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/health").status_code == 200  # the start resumed every project
        assert set(client.get("/status").json()["projects"]) == {"12"}
    assert projects.known_projects() == ["12"]
    ignored = [r.getMessage() for r in caplog.records if "not a project folder" in r.getMessage()]
    assert len(ignored) == 4  # one line per folder, however often the folders are listed
