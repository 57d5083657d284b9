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
