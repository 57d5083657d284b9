"""`ls-backend models list|show|rollback` on a project the worker trained."""

import json

import pytest
from fakes import BackendProcess, HashEncoder, annotation_event

from ls_backend import cli
from ls_backend.settings import Settings, get_settings

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""


@pytest.fixture
def trained(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    get_settings.cache_clear()
    backend = BackendProcess(
        Settings(model_dir=tmp_path, train_debounce_s=0.05, lora_enabled=False)
    )
    worker = backend.scheduler
    project = backend.project(5)
    for i in range(8):  # stored before the first model wakes the head lane: one run for all
        project.store.apply(annotation_event(i, i, ["AB"[i % 2]], config=CONFIG, project=5))
    project.setup(CONFIG)
    project.connect()
    worker.request("5", "head")
    assert worker.wait_idle(30)
    worker.stop()
    yield project
    get_settings.cache_clear()


def test_models_list_show_and_rollback(trained, capsys):
    versions = trained.registry.versions()
    assert len(versions) == 2 and trained.registry.current() == versions[-1]

    cli.main(["models", "list", "--project", "5"])
    listing = capsys.readouterr().out
    assert f"* {versions[-1]}" in listing and versions[0] in listing

    cli.main(["models", "show", "--project", "5", "--version", versions[-1]])
    assert json.loads(capsys.readouterr().out)["kind"] == "head"

    cli.main(["models", "rollback", "--project", "5"])
    assert trained.registry.current() == versions[0]
    assert versions[0] in capsys.readouterr().out


def test_unknown_project_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    get_settings.cache_clear()
    with pytest.raises(SystemExit, match="no models for project 42"):
        cli.main(["models", "list", "--project", "42"])
    get_settings.cache_clear()


def test_report_prints_the_dashboards_json(trained, capsys, monkeypatch):
    monkeypatch.setattr("ls_backend.projects.Encoder", lambda *_a, **_k: HashEncoder())
    cli.main(["report", "--project", "5"])
    report = json.loads(capsys.readouterr().out)
    assert [p["version"] for p in report["learning_curve"]] == trained.registry.versions()
    assert report["labels"] == 8 and report["jobs"]["head"]["state"] == "done"
    with pytest.raises(SystemExit, match="project 6 is unknown"):
        cli.main(["report", "--project", "6"])
