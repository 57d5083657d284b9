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


def test_models_list_sizes_its_columns_from_the_content(trained, capsys):
    cli.main(["models", "list", "--project", "5"])
    header, *rows = capsys.readouterr().out.splitlines()
    prototype = next(row for row in rows if "-prototype" in row)
    assert "v0001-prototype  " in prototype  # was "v0001-prototypeTrue": the names ran together
    start = header.index("promoted")
    for row in rows:  # every cell of a column starts where its header does
        assert row[start - 2 : start] == "  " and row[start] != " "


def test_models_show_and_rollback_without_a_usable_version_say_why(tmp_path, monkeypatch, capsys):
    from ls_backend.store.pointer import StoreAddress, project_registry

    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    get_settings.cache_clear()
    registry = project_registry(tmp_path / "5", StoreAddress(tmp_path, None, "5").open())
    registry.root.mkdir(parents=True)  # a models folder without a version (reading makes none)
    with pytest.raises(SystemExit, match="no version serves; name one with --version"):
        cli.main(["models", "show", "--project", "5"])  # was a TypeError traceback
    with registry.lock():
        only = registry.save("prototype", lambda path: None, {"promoted": True})
        registry.set_current(only)
    cli.main(["models", "show", "--project", "5"])  # the serving one
    assert json.loads(capsys.readouterr().out)["version"] == only
    with pytest.raises(SystemExit, match=f"no earlier promoted version.*known: {only}"):
        cli.main(["models", "rollback", "--project", "5"])  # was a KeyError traceback
    for action in ("show", "rollback"):
        with pytest.raises(SystemExit, match=f"no model version 'v0009-head' .known: {only}"):
            cli.main(["models", action, "--project", "5", "--version", "v0009-head"])
    assert registry.current() == only
    get_settings.cache_clear()


def test_models_rollback_pins_and_unpin_lifts_it(trained, capsys):
    versions = trained.registry.versions()
    cli.main(["models", "rollback", "--project", "5"])
    assert f"now serves {versions[0]}, pinned" in capsys.readouterr().out
    assert trained.registry.pinned() == versions[0]
    cli.main(["models", "list", "--project", "5"])
    assert "ls-backend models unpin --project 5" in capsys.readouterr().out
    cli.main(["models", "unpin", "--project", "5"])
    assert f"the pin on {versions[0]} is lifted" in capsys.readouterr().out
    assert trained.registry.pinned() is None and trained.registry.current() == versions[0]
    cli.main(["models", "unpin", "--project", "5"])
    assert "nothing is pinned" in capsys.readouterr().out
