"""/status and /metrics only read: no store is migrated, written or created by them, no open
project is closed and no model loaded; and what another process commits shows at once."""

import sqlite3
import time

from fakes import annotation_event
from test_api import CONFIG
from test_hardening import setup

from ls_backend.store.annotations import MIGRATIONS, AnnotationStore, _legacy_version
from ls_backend.store.sqlite import SETTLED_NS, SqliteDatabase


def files_of(model_dir):
    return {
        p: (p.stat().st_mtime_ns, p.stat().st_size)
        for p in model_dir.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def test_status_and_metrics_read_without_migrating_writing_or_creating(make_client, tmp_path):
    client = make_client()
    setup(client, "7.1")
    models = tmp_path / "models"
    old = SqliteDatabase(models / "8" / "annotations.sqlite")  # a store of an older release
    old.migrate(MIGRATIONS[:3], _legacy_version)
    with old.session(write=True) as db:
        db.execute("INSERT INTO meta VALUES ('serving_version', 'v0001-head')")
    (models / "9").mkdir()  # a folder without a store
    open_before = dict(client.app.state.projects._open)
    before = files_of(models)
    time.sleep(0.01)
    status = client.get("/status").json()["projects"]
    assert client.get("/metrics").status_code == 200
    assert set(status) == {"7", "8"}  # 9 has no store: left out, and none made for it
    assert status["8"]["annotations"] == 0 and status["8"]["model_version"] is None
    assert files_of(models) == before  # nothing written, nothing created
    with sqlite3.connect(models / "8" / "annotations.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3  # not migrated
    assert not (models / "9" / "annotations.sqlite").exists()
    assert dict(client.app.state.projects._open) == open_before  # none opened, none closed


def test_status_shows_what_another_process_committed_at_once(make_client, tmp_path):
    client = make_client()
    setup(client, "7.1")
    assert client.get("/status").json()["projects"]["7"]["annotations"] == 0
    time.sleep(SETTLED_NS / 1e9 + 0.1)  # the store's files settle: its summary is kept
    assert client.get("/status").json()["projects"]["7"]["annotations"] == 0
    elsewhere = AnnotationStore(SqliteDatabase(tmp_path / "models" / "7" / "annotations.sqlite"))
    elsewhere.apply(annotation_event(1, 10, ["Positive"], config=CONFIG, project=7))
    assert client.get("/status").json()["projects"]["7"]["annotations"] == 1
    metrics = client.get("/metrics").text
    assert 'ls_backend_project_annotations{project="7"} 1.0' in metrics


def test_a_quiet_status_reads_no_store_and_holds_no_connection_per_project(
    make_client, tmp_path, monkeypatch
):
    """/status re-opened and migrated every project past 32 (487 ms at 80 projects): now a
    store nobody wrote since the last call is not opened at all, and the process keeps a
    bounded number of idle connections however many projects it read."""
    from ls_backend.projects import Projects

    client = make_client()
    for key in range(1, 61):
        setup(client, f"{key}.1")
    for _ in range(2):  # the stores' files settle (a writer's last close checkpoints its WAL)
        time.sleep(SETTLED_NS / 1e9 + 0.1)
        assert len(client.get("/status").json()["projects"]) == 60
    opened = []
    real_view = Projects.view
    monkeypatch.setattr(
        Projects, "view", lambda self, key: opened.append(key) or real_view(self, key)
    )
    assert len(client.get("/status").json()["projects"]) == 60
    assert client.get("/metrics").status_code == 200
    assert opened == []
    databases = client.app.state.projects.databases
    assert len(databases.connections) <= databases.IDLE_CONNECTIONS
