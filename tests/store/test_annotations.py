import time

import pytest

from ls_backend.store.annotations import (
    MIGRATIONS,
    AnnotationStore,
    EventError,
    _legacy_version,
)
from ls_backend.store.sqlite import SqliteDatabase

PROJECT = {"id": 3, "label_config": "<View/>"}


def annotation(action, ann_id, task_id, choice, cancelled=False):
    result = (
        []
        if cancelled
        else [{"from_name": "c", "to_name": "t", "type": "choices", "value": {"choices": [choice]}}]
    )
    return {
        "action": action,
        "annotation": {"id": ann_id, "task": task_id, "result": result, "was_cancelled": cancelled},
        "task": {"id": task_id, "data": {"text": f"task {task_id}"}},
        "project": PROJECT,
    }


def choices(store):
    return {item.task_id: item.result[0]["value"]["choices"][0] for item in store.labeled()}


def test_create_update_delete_and_skip(make_database, tmp_path):
    store = AnnotationStore(make_database("1"))
    store.apply(annotation("ANNOTATION_CREATED", 1, 10, "a"))
    store.apply(annotation("ANNOTATION_CREATED", 2, 11, "b"))
    store.apply(annotation("ANNOTATION_CREATED", 3, 12, None, cancelled=True))
    assert choices(store) == {10: "a", 11: "b"}  # a skip is not a label
    store.apply(annotation("ANNOTATION_UPDATED", 1, 10, "b"))
    assert choices(store) == {10: "b", 11: "b"}
    store.apply({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2}], "project": PROJECT})
    assert choices(store) == {10: "b"}  # ids only: the store knows annotation 2 was task 11
    store.apply({"action": "TASKS_DELETED", "tasks": [{"id": 10}], "project": PROJECT})
    assert store.labeled() == []
    assert store.label_config() == "<View/>"


def test_events_survive_reopening(make_database):
    store = AnnotationStore(make_database("1"))
    for i in range(5):
        store.apply(annotation("ANNOTATION_CREATED", i, 100 + i, "a"))
    reopened = AnnotationStore(make_database("1"))
    assert reopened.count("events") == 5 and len(reopened.labeled()) == 5
    assert reopened.last_seq({"ANNOTATION_CREATED"}) == 5


def test_latest_annotation_of_a_task_wins(make_database, tmp_path):
    store = AnnotationStore(make_database("1"))
    store.apply(annotation("ANNOTATION_CREATED", 1, 10, "a"))
    store.apply(annotation("ANNOTATION_CREATED", 2, 10, "b"))
    assert choices(store) == {10: "b"}


@pytest.mark.parametrize(
    "body",
    [
        {"action": "ANNOTATION_CREATED", "project": PROJECT},
        {"action": "ANNOTATION_CREATED", "annotation": {"id": "x", "task": 1}, "project": PROJECT},
        {"action": "ANNOTATIONS_DELETED", "annotations": "1", "project": PROJECT},
        {"action": "TASKS_CREATED", "tasks": [{"id": "nope"}], "project": PROJECT},
    ],
)
def test_malformed_events_are_rejected_and_not_stored(make_database, tmp_path, body):
    store = AnnotationStore(make_database("1"))
    with pytest.raises(EventError):
        store.apply(body)
    assert store.count("events") == 0


def test_a_skip_is_logged_but_is_not_a_label_event(make_database, tmp_path):
    from ls_backend.store.annotations import LABEL_ACTIONS

    store = AnnotationStore(make_database("1"))
    store.apply(annotation("ANNOTATION_CREATED", 1, 10, "a"))
    store.apply(annotation("ANNOTATION_CREATED", 2, 11, None, cancelled=True))
    assert store.count("events") == 2
    assert store.last_seq(LABEL_ACTIONS) == 1


def test_a_reread_replaces_what_it_read_and_keeps_webhooks_that_came_during_it(
    make_database, tmp_path
):
    store = AnnotationStore(make_database("1"))
    store.apply(annotation("ANNOTATION_CREATED", 1, 10, "a"))
    store.apply(annotation("ANNOTATION_CREATED", 2, 11, "a"))  # deleted in Label Studio since
    upto = store.last_seq({"ANNOTATION_CREATED"})
    store.apply(annotation("ANNOTATION_CREATED", 3, 12, "c"))  # arrives while Label Studio is read
    read = [
        {
            "id": 10,
            "data": {"text": "task 10"},
            "annotations": [annotation("", 1, 10, "b")["annotation"]],
        },
        {
            "id": 13,
            "data": {"text": "task 13"},
            "annotations": [annotation("", 4, 13, "d")["annotation"]],
        },
    ]
    store.replace_labeled(read, upto)
    assert choices(store) == {10: "b", 12: "c", 13: "d"}


def test_annotations_created_from_predictions_are_labels(make_database, tmp_path):
    store = AnnotationStore(make_database("1"))
    body = {
        "action": "ANNOTATIONS_CREATED",  # Data Manager: Create Annotations From Predictions
        "annotation": [
            annotation("x", 1, 10, "a")["annotation"],
            annotation("x", 2, 11, "b")["annotation"],
        ],
        "task": [{"id": 10, "data": {"text": "ten"}}, {"id": 11, "data": {"text": "eleven"}}],
        "project": PROJECT,
    }
    store.apply(body)
    assert choices(store) == {10: "a", 11: "b"}
    assert {item.data["text"] for item in store.labeled()} == {"ten", "eleven"}


def stamped(action, ann_id, task_id, choice, updated_at):
    body = annotation(action, ann_id, task_id, choice)
    body["annotation"]["updated_at"] = updated_at
    return body


def test_out_of_order_webhooks_keep_the_newest_version_and_deletes_stay_deleted(
    make_database, tmp_path
):
    store = AnnotationStore(make_database("1"))
    store.apply(stamped("ANNOTATION_UPDATED", 1, 10, "new", "2026-12-02T10:00:05.000000Z"))
    store.apply(stamped("ANNOTATION_CREATED", 1, 10, "old", "2026-12-02T10:00:01.000000Z"))
    assert choices(store) == {10: "new"}

    store.apply({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}], "project": PROJECT})
    store.apply(stamped("ANNOTATION_UPDATED", 1, 10, "late", "2026-12-02T10:00:09.000000Z"))
    assert choices(store) == {}


def test_credentials_in_events_never_reach_the_disk(tmp_path):
    store = AnnotationStore(SqliteDatabase(tmp_path / "a.sqlite"))
    body = annotation("ANNOTATION_CREATED", 1, 10, "a")
    body["project"] = {
        **PROJECT,
        "task_data_login": "storage-user",
        "task_data_password": "hunter2-storage",
        "access_token": "0123456789abcdef",
    }
    store.apply(body)
    raw = (tmp_path / "a.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("a.sqlite-*")
    )
    assert b"hunter2-storage" not in raw and b"storage-user" not in raw
    assert b"0123456789abcdef" not in raw
    assert choices(store) == {10: "a"}


def test_a_store_from_before_schema_versions_is_migrated_and_keeps_its_events(tmp_path):
    import sqlite3

    path = tmp_path / "a.sqlite"
    with sqlite3.connect(path) as db:  # what the first release wrote: no task mirror yet
        for statement in MIGRATIONS[0]:
            db.execute(statement.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
        db.execute("INSERT INTO events (action, received, body) VALUES ('START_TRAINING', 1, '{}')")
    store = AnnotationStore(SqliteDatabase(path))
    store.apply(annotation("ANNOTATION_CREATED", 1, 10, "a"))
    assert store.count("events") == 2 and choices(store) == {10: "a"}
    assert store.mirror_counts() == (1, 1)  # the columns later steps added are there
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_a_lock_is_held_by_one_holder_at_a_time_and_freed_after(make_database):
    import threading

    database = make_database("1")
    seen: list[bool] = []

    def try_elsewhere() -> None:  # another thread, so another connection or file handle
        with database.lock("lora", wait=False) as held:
            seen.append(held)

    with database.lock("lora") as held:
        assert held
        thread = threading.Thread(target=try_elsewhere)
        thread.start()
        thread.join()
        with make_database("2").lock("lora", wait=False) as other_project:
            assert other_project  # locks are per project
    try_elsewhere()
    assert seen == [False, True]


def test_a_killed_holder_frees_its_lock(make_database, tmp_path):
    """A worker killed mid-run (kill -9) must not keep the lane locked for ever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from ls_backend.store.postgres import PostgresDatabase

    database = make_database("1")
    url = database.pool.conninfo if isinstance(database, PostgresDatabase) else None
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from ls_backend.store.databases import Databases\n"
        f"db = Databases(Path({str(tmp_path / 'models')!r}), {url!r}).project('1')\n"
        "with db.lock('lora') as held:\n"
        "    print(held, flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
    with database.lock("lora", wait=False) as held:
        assert not held
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 30  # PostgreSQL notices the dead connection
    while True:
        with database.lock("lora", wait=False) as held:
            if held or time.monotonic() > deadline:
                break
        time.sleep(0.1)
    assert held


def test_the_serving_pointer_and_lane_status_live_in_the_store(make_database, tmp_path):
    from ls_backend.core.registry import FilePointer
    from ls_backend.store.pointer import project_registry

    project_dir = tmp_path / "1"
    (project_dir / "models" / "v0001-head").mkdir(parents=True)
    (project_dir / "models" / "v0001-head" / "info.json").write_text("{}")
    FilePointer(project_dir / "models" / "current").write("v0001-head")  # an older install
    store = AnnotationStore(make_database("1"))
    registry = project_registry(project_dir, store)
    assert registry.current() == "v0001-head"  # adopted from the file
    version = registry.save("head", lambda path: None, {"promoted": True})
    with registry.lock():
        registry.set_current(version)
    reopened = project_registry(project_dir, AnnotationStore(make_database("1")))
    assert reopened.current() == version == "v0002-head"
    # The file is only a copy, for a start while the store is away: the store decides.
    assert FilePointer(project_dir / "models" / "current").read() == "v0002-head"
    FilePointer(project_dir / "models" / "current").write("v0001-head")
    assert reopened.current() == "v0002-head"

    store.set_lane_status("head", {"state": "running", "progress": 0.5})
    assert AnnotationStore(make_database("1")).lane_status("head") == {
        "state": "running",
        "progress": 0.5,
    }
    assert store.lane_status("lora") is None


def test_stores_that_received_webhooks_before_setup_was_recorded_stay_connected(make_database):
    """Only /setup connects; a store from before it was recorded that took webhooks was
    connected then (none were refused), one that only predicted was not."""
    labeled, predicted = make_database("1"), make_database("2")
    for database in (labeled, predicted):
        database.migrate(MIGRATIONS[:3], _legacy_version)  # the schema before the step
    with labeled.session(write=True) as db:
        db.execute(
            "INSERT INTO events (action, received, body) VALUES (?, ?, ?)",
            ("ANNOTATION_CREATED", 1700000000.5, "{}"),
        )
    assert AnnotationStore(labeled).connected_at() == 1700000000.5
    assert AnnotationStore(predicted).connected_at() is None
    fresh = AnnotationStore(make_database("3"))
    fresh.apply(annotation("ANNOTATION_CREATED", 1, 10, "a"))
    assert AnnotationStore(make_database("3")).connected_at() is None  # applied once, at first


def test_the_pin_lives_in_the_store_with_the_pointer(make_database, tmp_path):
    from ls_backend.core.registry import FilePointer
    from ls_backend.store.pointer import project_registry

    project_dir = tmp_path / "1"
    for name in ("v0001-head", "v0002-head"):
        (project_dir / "models" / name).mkdir(parents=True)
        (project_dir / "models" / name / "info.json").write_text('{"promoted": true}')
    FilePointer(project_dir / "models" / "current").write("v0002-head")
    registry = project_registry(project_dir, AnnotationStore(make_database("1")))
    with registry.lock():
        assert registry.rollback() == "v0001-head"
    other = project_registry(project_dir, AnnotationStore(make_database("1")))  # a replica
    assert other.pinned() == "v0001-head" and other.current() == "v0001-head"
    with other.lock():
        other.unpin()
    assert registry.pinned() is None and registry.current() == "v0001-head"


def from_label_studio(body, created_at):
    return {**body, "project": {**body["project"], "created_at": created_at}}


OLD_LS = "2026-01-05T09:30:00.250000Z"  # project 3, created 1767605400 (an ISO time in webhooks)
NEW_LS = "2026-03-01T12:00:00Z"  # project 3 of a reinstalled Label Studio: 1772366400


def test_a_reinstalled_label_studio_gets_fresh_state_instead_of_dropped_labels(make_database):
    """A fresh Label Studio database reuses project and annotation ids; the store held the old
    one's deleted ids and newer updated_at, so the new labels were dropped without a word."""
    from ls_backend.store.annotations import OtherLabelStudio, created_second

    assert created_second({"created_at": OLD_LS}) == 1767605400
    store = AnnotationStore(make_database("3"))
    for ann_id, task_id in ((1, 10), (2, 11)):
        body = annotation("ANNOTATION_CREATED", ann_id, task_id, "a")
        body["annotation"]["updated_at"] = "2026-01-05T10:00:00Z"
        store.apply(from_label_studio(body, OLD_LS))
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2}], "project": PROJECT}
    store.apply(from_label_studio(deleted, OLD_LS))
    assert store.meet(1767605400, "http://ls.old:8080") is None  # the same project: kept
    assert choices(store) == {10: "a"}

    assert store.meet(1772366400, "http://ls.new:8080") == 1767605400  # fresh state
    assert store.labeled() == [] and store.count("tasks") == 0
    assert store.label_studio() == {"created": 1772366400, "host": "http://ls.new:8080"}
    for ann_id, task_id in ((1, 20), (2, 21)):  # ids the old one used, one of them deleted
        body = annotation("ANNOTATION_CREATED", ann_id, task_id, "b")
        body["annotation"]["updated_at"] = "2026-03-01T12:05:00Z"  # older than what was held
        store.apply(from_label_studio(body, NEW_LS))
    assert choices(store) == {20: "b", 21: "b"}

    late = from_label_studio(annotation("ANNOTATION_UPDATED", 1, 10, "c"), OLD_LS)
    with pytest.raises(OtherLabelStudio, match="created 2026-01-05 09:30:00 UTC"):
        store.apply(late)  # the old one, still running: refused by name, nothing stored
    with pytest.raises(OtherLabelStudio, match="was replaced"):
        store.meet(1767605400, "http://ls.old:8080")  # and it cannot take the id back
    assert choices(store) == {20: "b", 21: "b"}
    assert store.meet(1772366400, "https://labels.example.org") is None  # moved: same project
    assert store.label_studio()["host"] == "https://labels.example.org"


def test_a_store_from_before_adopts_the_first_label_studio_it_meets(make_database):
    store = AnnotationStore(make_database("3"))
    store.apply(annotation("ANNOTATION_CREATED", 1, 10, "a"))  # no created_at: older events
    assert store.label_studio() is None
    store.apply(from_label_studio(annotation("ANNOTATION_CREATED", 2, 11, "a"), OLD_LS))
    assert store.label_studio() == {"created": 1767605400, "host": None}  # adopted, nothing lost
    assert store.meet(1767605400, "http://ls:8080") is None
    assert choices(store) == {10: "a", 11: "a"}
    reopened = AnnotationStore(make_database("3"))  # a bare store from before, upgraded
    assert reopened.label_studio() == {"created": 1767605400, "host": "http://ls:8080"}


def test_prune_events_keeps_what_is_still_read_and_every_annotation(make_database):
    """The event log only grew; pruning deletes events up to a number and before a time, but
    never the newest of an action, nor any annotation or task they brought."""
    store = AnnotationStore(make_database("1"))
    for i in range(1, 8):
        store.apply(annotation("ANNOTATION_CREATED", i, 100 + i, "a"))
    store.apply({"action": "START_TRAINING", "project": PROJECT})  # event 8
    store.apply(annotation("ANNOTATION_CREATED", 9, 109, "b"))  # event 9
    assert store.prune_events(upto=5, before=0.0) == 0  # all received after time 0
    assert store.prune_events(upto=5, before=time.time() + 1) == 5
    assert store.count("events") == 4
    assert store.count_events({"ANNOTATION_CREATED"}, after=5) == 3  # what lanes count: intact
    assert store.prune_events(upto=9, before=time.time() + 1) == 2  # 6 and 7
    assert store.last_seq({"ANNOTATION_CREATED"}) == 9 and store.training_requested() == 8
    assert store.last_seq({"START_TRAINING"}) == 8  # the newest of each action stays
    assert len(store.labeled()) == 8 and store.count("tasks") == 8  # no annotation lost
    assert store.first_seq_since(0.0) == 8 and store.first_seq_since(time.time() + 1) == 10
