"""Webhook events -> the durable, per-project annotation store.

Every event is appended to a log and applied to the derived tables in one transaction
before the webhook answers, so no annotation is lost to a crash or a restart. The
tables live in the project's database (``store.databases``: an SQLite file, or a
PostgreSQL schema with ``DATABASE_URL``), their schema versioned by ``MIGRATIONS``.
Label Studio sends deletions as ids only (``ANNOTATIONS_DELETED``), so the store keeps
its own annotation -> task map.

The ``tasks`` table mirrors the project's tasks (data, labeled or not): one full read
from Label Studio fills it, task and annotation webhooks keep it current, so a sync
reads from Label Studio only what it does not have.

The store also holds what every serving replica and worker must agree on, each piece behind
a named method: which model version serves (``store.pointer``), each lane's status and what
it has done, the queue pushed to Label Studio.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.pacing import labeling_since
from ls_backend.store.base import Database, Session

LABEL_ACTIONS = {
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",  # Data Manager: Create Annotations From Predictions
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
}
#: How a skip (ANNOTATION_CREATED with was_cancelled) is logged: stored, but not a label event.
SKIPPED = "ANNOTATION_SKIPPED"
#: Label Studio's *Start Training* (``POST /api/ml/{id}/train``).
START_TRAINING = "START_TRAINING"
KNOWN_ACTIONS = LABEL_ACTIONS | {
    "TASKS_CREATED",
    "TASKS_DELETED",
    "PROJECT_UPDATED",
    START_TRAINING,
}

# Keys of the ``meta`` table (each read and written through one named method below).
_LABEL_CONFIG = "label_config"
_CONNECTED = "connected"
_TRAIN_REQUESTED = "train_requested"
_REREAD_DONE = "reread_done"
_STATUS = "status:"  # + lane
_WEBHOOKS_CHECKED = "webhooks_checked"
_SETUP_URLS = "setup_urls"
_WEBHOOK_PROBLEM = "webhook_problem"
_QUEUE = "queue"
_SERVING = "serving_version"
_LABEL_STUDIO = "label_studio"  # which Label Studio project the store holds (``meet``)
_REPLACED = "label_studio_replaced"  # the ones it held before, by creation time
_PINNED = "serving_pinned"  # "1" while a rollback pins the serving version
_PLATEAU = "plateau_signal"  # the stopping signal after the last head round (``jobs.stopping``)

#: The store's schema, one step per version; a database applies the steps it has not seen.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE events (seq {serial}, action TEXT NOT NULL,"
        " received DOUBLE PRECISION NOT NULL, body TEXT NOT NULL)",
        "CREATE TABLE tasks (task_id BIGINT PRIMARY KEY, data TEXT NOT NULL)",
        "CREATE TABLE annotations (annotation_id BIGINT PRIMARY KEY, task_id BIGINT NOT NULL,"
        " result TEXT NOT NULL, was_cancelled INTEGER NOT NULL, seq BIGINT NOT NULL)",
        "CREATE INDEX annotations_task ON annotations (task_id)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE deleted_annotations (annotation_id BIGINT PRIMARY KEY)",
    ],
    ["ALTER TABLE tasks ADD COLUMN labeled INTEGER NOT NULL DEFAULT 0"],  # the task mirror
    ["ALTER TABLE annotations ADD COLUMN updated_at TEXT"],  # out-of-order webhooks
    # The task a deleted annotation was on: a delete applied again after a read still knows.
    ["ALTER TABLE deleted_annotations ADD COLUMN task_id BIGINT"],
    # Only /setup connects a project. A store from before /setup was recorded that received
    # webhooks was connected then (the backend refused none), so it stays connected.
    [
        "INSERT INTO meta (key, value)"
        " SELECT 'connected', (SELECT CAST(MIN(received) AS TEXT) FROM events)"
        " WHERE EXISTS (SELECT 1 FROM events) ON CONFLICT (key) DO NOTHING"
    ],
]


def _legacy_version(s: Session) -> int:
    """How many MIGRATIONS an SQLite store from before versioning has (0 for a new one)."""
    columns = {
        table: {row[1] for row in s.execute(f"PRAGMA table_info({table})")}
        for table in ("events", "tasks", "annotations")
    }
    if not columns["events"]:
        return 0
    if "updated_at" in columns["annotations"]:
        return 3
    return 2 if "labeled" in columns["tasks"] else 1


#: Rows written per transaction when a read of Label Studio fills the store: a webhook
#: waits for one batch (milliseconds), never for the read.
MIRROR_BATCH = 500

#: Keys never written to disk: the project's cloud-storage login and any credential.
_SECRET = re.compile(r"password|token|secret|login|api_key|credential", re.IGNORECASE)


class EventError(ValueError):
    """A webhook body that does not have the shape of its action."""


class OtherLabelStudio(EventError):
    """An event or a /setup from another Label Studio's project of the same id than the one
    the store holds (an old installation still running beside a reinstalled one)."""


def created_second(project: Any) -> int | None:
    """When Label Studio created the project, in whole seconds since the epoch, from a webhook's
    ``project.created_at`` (ISO 8601, as /setup's ``"<id>.<seconds>"`` counts it); None when
    it is absent or unreadable."""
    raw = project.get("created_at") if isinstance(project, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(when.replace(tzinfo=when.tzinfo or timezone.utc).timestamp())


def _when(created: int) -> str:
    return datetime.fromtimestamp(created, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Labeled:
    """One labeled task: the latest non-skipped annotation of it wins."""

    task_id: int
    annotation_id: int
    data: dict[str, Any]
    result: list[dict[str, Any]]


def _require(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind):
        raise EventError(f"'{key}' must be a {kind.__name__} in a {body.get('action')} event")
    return value


def _scrubbed(body: dict[str, Any]) -> dict[str, Any]:
    """The event as stored: credentials (the project's storage login, any token) left out."""
    clean = {k: v for k, v in body.items() if not _SECRET.search(k)}
    if isinstance(clean.get("project"), dict):
        clean["project"] = {k: v for k, v in clean["project"].items() if not _SECRET.search(k)}
    return clean


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size``; each is pulled from ``items`` before it is yielded."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _task_id(task: Any) -> int:
    if not isinstance(task, dict) or not isinstance(task.get("id"), int):
        raise EventError("every task needs an integer 'id'")
    return int(task["id"])


class AnnotationStore:
    def __init__(self, database: Database, migrate: bool = True) -> None:
        """``migrate``: bring the schema up to date on first use (not here: a process starts
        while PostgreSQL is away); a store opened only to read what is there, for /status, is
        never migrated."""
        self.database = database
        self._migrated = not migrate
        self._pinned = threading.local()

    def _ready(self) -> Database:
        if not self._migrated:
            self.database.migrate(MIGRATIONS, _legacy_version)
            self._migrated = True
        return self.database

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads in this block (in this thread) share one session: one connection, and with
        PostgreSQL one transaction, instead of one each."""
        if getattr(self._pinned, "session", None) is not None:
            yield
            return
        with self._ready().session() as session:
            self._pinned.session = session
            try:
                yield
            finally:
                self._pinned.session = None

    def _read(self) -> Any:
        pinned = getattr(self._pinned, "session", None)
        return nullcontext(pinned) if pinned is not None else self._ready().session()

    def _tx(self) -> Any:
        return self._ready().session(write=True)

    # --- writing -----------------------------------------------------------------------------

    def apply(self, body: dict[str, Any]) -> int:
        """Log one webhook event and apply it; returns its sequence number."""
        action = body.get("action")
        if not isinstance(action, str):
            raise EventError("'action' must be a string")
        annotation = body.get("annotation")
        skipped = isinstance(annotation, dict) and bool(annotation.get("was_cancelled"))
        # A skip is kept, but it is not a label: it must not trigger training.
        logged = SKIPPED if action == "ANNOTATION_CREATED" and skipped else action
        created = created_second(body.get("project"))
        with self._tx() as db:
            if created is not None:
                self._same_label_studio(db, created)
            seq = int(
                db.execute(
                    "INSERT INTO events (action, received, body) VALUES (?, ?, ?) RETURNING seq",
                    (logged, time.time(), json.dumps(_scrubbed(body))),
                ).fetchone()[0]
            )
            self._apply(db, action, body, seq)
            project = body.get("project")
            if isinstance(project, dict) and isinstance(project.get("label_config"), str):
                self._set_meta(db, _LABEL_CONFIG, project["label_config"])
        return seq

    def _apply(self, db: Session, action: str, body: dict[str, Any], seq: int) -> None:
        if action in {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}:
            annotation = _require(body, "annotation", dict)
            self._put_annotation(db, annotation, body.get("task"), seq)
        elif action == "ANNOTATIONS_CREATED":  # "annotation" and "task" are lists here
            tasks = {t.get("id"): t for t in body.get("task") or [] if isinstance(t, dict)}
            for annotation in _require(body, "annotation", list):
                if not isinstance(annotation, dict):
                    raise EventError("every item of 'annotation' must be an object")
                self._put_annotation(db, annotation, tasks.get(annotation.get("task")), seq)
        elif action == "ANNOTATIONS_DELETED":
            ids = [a.get("id") for a in _require(body, "annotations", list) if isinstance(a, dict)]
            ids = [i for i in ids if isinstance(i, int)]
            if not ids:
                return
            marks = ",".join("?" * len(ids))
            # Which task each was on: from the row, or (applied again after a read of Label
            # Studio, the row gone) from the record of the delete.
            on = dict(
                db.execute(
                    f"SELECT annotation_id, task_id FROM annotations WHERE annotation_id IN"
                    f" ({marks}) UNION SELECT annotation_id, task_id FROM deleted_annotations"
                    f" WHERE annotation_id IN ({marks}) AND task_id IS NOT NULL",
                    [*ids, *ids],
                ).fetchall()
            )
            db.executemany("DELETE FROM annotations WHERE annotation_id = ?", [(i,) for i in ids])
            db.executemany(
                "INSERT INTO deleted_annotations (annotation_id, task_id) VALUES (?, ?)"
                " ON CONFLICT (annotation_id) DO UPDATE"
                " SET task_id = COALESCE(excluded.task_id, deleted_annotations.task_id)",
                [(i, on.get(i)) for i in ids],
            )
            touched = sorted({int(t) for t in on.values()})
            db.executemany(  # labeled while another annotation of it stands
                "UPDATE tasks SET labeled = CASE WHEN EXISTS (SELECT 1 FROM annotations"
                " WHERE task_id = ? AND was_cancelled = 0) THEN 1 ELSE 0 END WHERE task_id = ?",
                [(t, t) for t in touched],
            )
        elif action == "TASKS_CREATED":
            for task in _require(body, "tasks", list):
                task_id = _task_id(task)
                if isinstance(task.get("data"), dict):
                    self._put_task(db, task_id, task["data"])
        elif action == "TASKS_DELETED":
            ids = [(_task_id(t),) for t in _require(body, "tasks", list)]
            db.executemany("DELETE FROM tasks WHERE task_id = ?", ids)
            db.executemany("DELETE FROM annotations WHERE task_id = ?", ids)
        elif action == START_TRAINING:
            self._set_meta(db, _TRAIN_REQUESTED, str(seq))

    def _same_label_studio(self, db: Session, created: int) -> None:
        """An event must come from the Label Studio project the store holds; a store that holds
        none yet (one from before this was kept) adopts the event's."""
        held = self._held(db)
        if held is None:
            self._set_meta(db, _LABEL_STUDIO, json.dumps({"created": created, "host": None}))
        elif held["created"] != created:
            raise OtherLabelStudio(
                f"project.created_at: this event is from a Label Studio project created "
                f"{_when(created)}, but the backend now holds the one created "
                f"{_when(held['created'])} under this id (a reinstalled Label Studio connected "
                "since); one backend serves one Label Studio per project id"
            )

    def _held(self, db: Session) -> dict[str, Any] | None:
        raw = self._get_meta(db, _LABEL_STUDIO)
        return None if raw is None else dict(json.loads(raw))

    def meet(self, created: int, host: str | None) -> int | None:
        """/setup names the Label Studio project it comes from: its creation time (``created``,
        seconds) and the host Label Studio calls itself. Another project than the one the store
        holds (a reinstalled Label Studio: same id, a fresh database) gets fresh state: what was
        read from the old one (annotations, the ids it deleted, the task mirror, the queue
        pushed to it, the runs it asked for) is cleared, so its reused annotation ids are not
        taken for old ones. Returns the creation time of the replaced project (None: same
        project, or the store held none, from before this was kept, and adopts this one).
        Raises OtherLabelStudio for a project replaced before: two live Label Studios would
        otherwise clear each other's state by turns."""
        seen = self.label_studio()  # every /setup asks: no write, no wait, when nothing changes
        if seen is not None and seen == {"created": created, "host": host or seen["host"]}:
            return None
        with self._tx() as db:
            held = self._held(db)
            if held is None or held["created"] == created:
                value = {"created": created, "host": host or (held or {}).get("host")}
                if value != held:
                    self._set_meta(db, _LABEL_STUDIO, json.dumps(value))
                return None
            replaced = json.loads(self._get_meta(db, _REPLACED) or "[]")
            if created in replaced:
                raise OtherLabelStudio(
                    f"project: the Label Studio project created {_when(created)} was replaced "
                    f"under this id by the one created {_when(held['created'])}; one backend "
                    "serves one Label Studio per project id (give another Label Studio its own "
                    "MODEL_DIR, and DATABASE_URL)"
                )
            for table in ("annotations", "deleted_annotations", "tasks"):
                db.execute(f"DELETE FROM {table}")
            # The queue pushed to the old one, when its webhooks were checked, the runs it
            # forced (so the new one's first connect forces a first sync).
            db.execute(
                "DELETE FROM meta WHERE key IN (?, ?) OR key LIKE ?",
                (_QUEUE, _WEBHOOKS_CHECKED, "%_forced"),
            )
            self._set_meta(db, _REPLACED, json.dumps([*replaced, held["created"]]))
            self._set_meta(db, _LABEL_STUDIO, json.dumps({"created": created, "host": host}))
        return int(held["created"])

    def label_studio(self) -> dict[str, Any] | None:
        """The Label Studio project the store holds: ``{"created": seconds, "host": ...}``."""
        raw = self._meta(_LABEL_STUDIO)
        return None if raw is None else dict(json.loads(raw))

    def _put_annotation(self, db: Session, annotation: dict[str, Any], task: Any, seq: int) -> None:
        """One annotation, unless a newer version of it (``updated_at``) is stored already or
        it was deleted: with Redis, Label Studio sends webhooks through a queue, out of order."""
        task = task if isinstance(task, dict) else {"id": annotation.get("task")}
        task_id = _task_id(task)
        annotation_id = annotation.get("id")
        if not isinstance(annotation_id, int):
            raise EventError("'annotation.id' must be an integer")
        result = annotation.get("result") or []
        if not isinstance(result, list):
            raise EventError("'annotation.result' must be a list")
        if isinstance(task.get("data"), dict):
            self._put_task(db, task_id, task["data"])
        if db.execute(
            "SELECT 1 FROM deleted_annotations WHERE annotation_id = ?", (annotation_id,)
        ).fetchone():
            return  # a late update of a deleted annotation
        updated = annotation.get("updated_at")
        updated = updated if isinstance(updated, str) else None
        stored = db.execute(
            "SELECT updated_at FROM annotations WHERE annotation_id = ?", (annotation_id,)
        ).fetchone()
        if stored is not None and stored[0] and updated and updated < stored[0]:
            return  # an older version arriving after a newer one
        if not annotation.get("was_cancelled"):  # a skip leaves the task in the queue
            db.execute(
                "INSERT INTO tasks (task_id, data, labeled) VALUES (?, '{}', 1)"
                " ON CONFLICT (task_id) DO UPDATE SET labeled = 1",
                (task_id,),
            )
        db.execute(
            "INSERT INTO annotations"
            " (annotation_id, task_id, result, was_cancelled, seq, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (annotation_id) DO UPDATE SET"
            " task_id = excluded.task_id, result = excluded.result,"
            " was_cancelled = excluded.was_cancelled, seq = excluded.seq,"
            " updated_at = excluded.updated_at",
            (
                annotation_id,
                task_id,
                json.dumps(result),
                int(bool(annotation.get("was_cancelled"))),
                seq,
                updated,
            ),
        )

    @staticmethod
    def _put_task(db: Session, task_id: int, data: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO tasks (task_id, data) VALUES (?, ?)"
            " ON CONFLICT (task_id) DO UPDATE SET data = excluded.data",
            (task_id, json.dumps(data)),
        )

    @staticmethod
    def _get_meta(db: Session, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(db: Session, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def replace_labeled(self, tasks: Iterable[dict[str, Any]], upto: int) -> int:
        """Make the store match Label Studio's own labeled tasks (START_TRAINING re-read);
        returns how many tasks were read.

        ``tasks`` may be a lazy read of Label Studio: it is written MIRROR_BATCH tasks per
        short transaction, never pulled inside one, so webhooks go on meanwhile. ``upto`` is
        the last event sequence number stored before Label Studio was read: rows from later
        webhooks are newer than the read and stay as they are, and so do annotations deleted
        since. Stored annotations the read lacks go only once it is complete and not empty: an
        empty or failed read (an empty page, a Label Studio that went away) deletes nothing.
        """
        read: set[int] = set()
        tasks_read = 0
        for chunk in _batches(tasks, MIRROR_BATCH):
            with self._tx() as db:
                for task in chunk:
                    task_id = _task_id(task)
                    self._put_task(db, task_id, task.get("data") or {})
                    for annotation in task.get("annotations") or []:
                        self._put_read_annotation(db, task_id, annotation, upto)
                        read.add(int(annotation["id"]))
            tasks_read += len(chunk)
        if not read:
            return tasks_read
        stored = self._all("SELECT annotation_id FROM annotations WHERE seq <= ?", (upto,))
        gone = [(int(row[0]), upto) for row in stored if int(row[0]) not in read]
        for start in range(0, len(gone), MIRROR_BATCH):
            with self._tx() as db:  # a webhook may have updated one since: it stays
                db.executemany(
                    "DELETE FROM annotations WHERE annotation_id = ? AND seq <= ?",
                    gone[start : start + MIRROR_BATCH],
                )
        return tasks_read

    @staticmethod
    def _put_read_annotation(
        db: Session, task_id: int, annotation: dict[str, Any], upto: int
    ) -> None:
        """An annotation as a re-read found it, unless a webhook since ``upto`` brought a
        newer version of it or deleted it."""
        annotation_id = int(annotation["id"])
        updated = annotation.get("updated_at")
        db.execute(
            "INSERT INTO annotations"
            " (annotation_id, task_id, result, was_cancelled, seq, updated_at)"
            " SELECT ?, ?, ?, ?, 0, ? WHERE NOT EXISTS"
            " (SELECT 1 FROM deleted_annotations WHERE annotation_id = ?)"
            " ON CONFLICT (annotation_id) DO UPDATE SET task_id = excluded.task_id,"
            " result = excluded.result, was_cancelled = excluded.was_cancelled, seq = 0,"
            " updated_at = excluded.updated_at WHERE annotations.seq <= ?",
            (
                annotation_id,
                task_id,
                json.dumps(annotation.get("result") or []),
                int(bool(annotation.get("was_cancelled"))),
                updated if isinstance(updated, str) else None,
                annotation_id,
                upto,
            ),
        )

    def replace_tasks(self, tasks: Iterable[tuple[int, dict[str, Any], bool]]) -> int:
        """Make the task mirror match a full read of Label Studio: ``(id, data, labeled)``.

        ``tasks`` may be a lazy read of Label Studio (minutes for a large project, longer if
        it stalls): it is written MIRROR_BATCH tasks per short transaction and never pulled
        inside one, so webhooks of the project are stored meanwhile within milliseconds.
        What they brought while the read ran wins over the read: those events are applied
        again at the end. So tasks created while the read ran and labels that webhooks brought
        meanwhile stay. Tasks the read did not return are removed only once it is complete
        (a read that fails half-way removes nothing). Returns how many tasks were read.
        """
        start = self._last_event()
        read: set[int] = set()
        last = 0
        complete = False
        try:
            for chunk in _batches(tasks, MIRROR_BATCH):
                rows = [(int(i), json.dumps(data), int(labeled)) for i, data, labeled in chunk]
                with self._tx() as db:
                    db.executemany(
                        "INSERT INTO tasks (task_id, data, labeled) VALUES (?, ?, ?)"
                        " ON CONFLICT (task_id) DO UPDATE"
                        " SET data = excluded.data, labeled = excluded.labeled",
                        rows,
                    )
                read.update(row[0] for row in rows)
                last = max(last, *(row[0] for row in rows))
            complete = True
        finally:
            if complete:
                mirrored = self._all("SELECT task_id FROM tasks WHERE task_id <= ?", (last,))
                gone = [(int(r[0]),) for r in mirrored if int(r[0]) not in read]
                for at in range(0, len(gone), MIRROR_BATCH):
                    with self._tx() as db:
                        db.executemany(
                            "DELETE FROM tasks WHERE task_id = ?", gone[at : at + MIRROR_BATCH]
                        )
            with self._tx() as db:  # what webhooks brought during the read is newer
                self._replay(db, after=start)
                db.execute(
                    "UPDATE tasks SET labeled = 1 WHERE labeled = 0 AND task_id IN"
                    " (SELECT task_id FROM annotations WHERE was_cancelled = 0)"
                )
        return len(read)

    def _last_event(self) -> int:
        return int(self._one("SELECT COALESCE(MAX(seq), 0) FROM events")[0])

    def _replay(self, db: Session, after: int) -> None:
        """Apply the task and annotation events after ``after`` again (applying an event
        twice changes nothing: every step is an upsert, a delete or a recount)."""
        actions = sorted(LABEL_ACTIONS | {SKIPPED, "TASKS_CREATED", "TASKS_DELETED"})
        marks = ",".join("?" * len(actions))
        rows = db.execute(
            f"SELECT seq, action, body FROM events WHERE seq > ? AND action IN ({marks})"
            " ORDER BY seq",
            [after, *actions],
        ).fetchall()
        for seq, action, body in rows:
            try:
                self._apply(db, "ANNOTATION_CREATED" if action == SKIPPED else action,
                            json.loads(body), int(seq))  # fmt: skip
            except EventError:  # stored, so it applied once; nothing to redo
                continue

    def prune_events(self, upto: int, before: float) -> int:
        """Delete the logged events numbered ``upto`` or less and received before ``before``
        (a Unix time), except the newest of each action (``last_seq`` and ``last_received``
        read those); returns how many went. Events are a log: every annotation and task they
        brought is in its own table, so nothing stored is lost. Short transactions."""
        newest = {int(r[0]) for r in self._all("SELECT MAX(seq) FROM events GROUP BY action")}
        deleted, after = 0, 0
        while True:
            with self._tx() as db:
                rows = db.execute(
                    "SELECT seq FROM events WHERE seq > ? AND seq <= ? AND received < ?"
                    " ORDER BY seq LIMIT ?",
                    (after, upto, before, MIRROR_BATCH),
                ).fetchall()
                seqs = [int(r[0]) for r in rows]
                doomed = [(seq,) for seq in seqs if seq not in newest]
                db.executemany("DELETE FROM events WHERE seq = ?", doomed)
            deleted += len(doomed)
            if len(seqs) < MIRROR_BATCH:
                return deleted
            after = seqs[-1]

    # --- reading -----------------------------------------------------------------------------

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._read() as db:
            return list(db.execute(sql, params).fetchall())

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._read() as db:
            return db.execute(sql, params).fetchone()

    def task_states(self) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Every mirrored task id, ascending, and whether it is labeled."""
        rows = self._all("SELECT task_id, labeled FROM tasks ORDER BY task_id")
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return table[:, 0], table[:, 1].astype(bool)

    def task_data(self, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        chunk = 500  # SQLite caps the number of bound parameters
        with self._read() as db:
            for start in range(0, len(task_ids), chunk):
                part = [int(t) for t in task_ids[start : start + chunk]]
                marks = ",".join("?" * len(part))
                query = f"SELECT task_id, data FROM tasks WHERE task_id IN ({marks})"
                rows = db.execute(query, part)
                found.update((int(task_id), json.loads(data)) for task_id, data in rows)
        return found

    def touched_tasks(self) -> set[int]:
        """Tasks someone labeled or skipped: no longer open in an annotator's editor."""
        rows = self._all(
            "SELECT task_id FROM tasks WHERE labeled = 1 UNION SELECT task_id FROM annotations"
        )
        return {int(row[0]) for row in rows}

    def touched_between(self, start: float, end: float) -> set[int]:
        """Tasks labeled or skipped by an event received in [start, end) (Unix times)."""
        rows = self._all(
            "SELECT DISTINCT a.task_id FROM annotations a JOIN events e ON e.seq = a.seq"
            " WHERE e.received >= ? AND e.received < ?",
            (start, end),
        )
        return {int(row[0]) for row in rows}

    def annotators_since(self, since: float) -> int:
        """How many people labeled or skipped a task since ``since`` (a Unix time)."""
        who = self.database.json_text("body", "annotation", "completed_by")
        row = self._one(
            f"SELECT COUNT(DISTINCT {who}) FROM events WHERE received >= ? AND action IN (?, ?, ?)",
            (since, "ANNOTATION_CREATED", "ANNOTATION_UPDATED", SKIPPED),
        )
        return int(row[0])

    def mirror_counts(self) -> tuple[int, int]:
        """(tasks, labeled tasks) in the mirror: compared with Label Studio's own counters."""
        total, labeled = self._one("SELECT COUNT(*), COALESCE(SUM(labeled), 0) FROM tasks")
        return int(total), int(labeled)

    def last_seq(self, actions: set[str]) -> int:
        marks = ",".join("?" * len(actions))
        query = f"SELECT COALESCE(MAX(seq), 0) FROM events WHERE action IN ({marks})"
        return int(self._one(query, list(actions))[0])

    def labeling(self) -> bool:
        """Someone labeled or skipped a task lately (``core.pacing``), through any process."""
        return labeling_since(self.last_received(LABEL_ACTIONS | {SKIPPED}))

    def last_received(self, actions: set[str]) -> float:
        """When the newest event of ``actions`` arrived (a Unix time; 0 if none did)."""
        marks = ",".join("?" * len(actions))
        query = f"SELECT COALESCE(MAX(received), 0) FROM events WHERE action IN ({marks})"
        return float(self._one(query, list(actions))[0])

    def first_seq_since(self, when: float) -> int:
        """The number of the first event received at ``when`` or later (a Unix time); one
        past the last event if none was."""
        row = self._one("SELECT MIN(seq) FROM events WHERE received >= ?", (when,))
        return int(row[0]) if row[0] is not None else self._last_event() + 1

    def count_events(self, actions: set[str], after: int) -> int:
        marks = ",".join("?" * len(actions))
        query = f"SELECT COUNT(*) FROM events WHERE seq > ? AND action IN ({marks})"
        return int(self._one(query, [after, *actions])[0])

    def labeled(self) -> list[Labeled]:
        """Labeled tasks: skips are not labels; of several annotations the latest one counts."""
        rows = self._all(
            "SELECT a.task_id, a.annotation_id, t.data, a.result FROM annotations a"
            " JOIN tasks t ON t.task_id = a.task_id"
            " WHERE a.was_cancelled = 0 ORDER BY a.task_id, a.seq, a.annotation_id"
        )
        latest: dict[int, Labeled] = {}
        for task_id, annotation_id, data, result in rows:
            latest[task_id] = Labeled(task_id, annotation_id, json.loads(data), json.loads(result))
        return list(latest.values())

    def count_labeled(self) -> int:
        """How many labeled tasks ``labeled`` returns, without reading them."""
        row = self._one(
            "SELECT COUNT(DISTINCT a.task_id) FROM annotations a"
            " JOIN tasks t ON t.task_id = a.task_id WHERE a.was_cancelled = 0"
        )
        return int(row[0])

    def count(self, table: str) -> int:
        if table not in {"events", "tasks", "annotations"}:
            raise ValueError(table)
        return int(self._one(f"SELECT COUNT(*) FROM {table}")[0])

    # --- the project's named state (the ``meta`` table) ------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def _put_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            self._set_meta(db, key, value)

    def label_config(self) -> str | None:
        """The project's label config, as /setup or the last webhook sent it."""
        return self._meta(_LABEL_CONFIG)

    def set_label_config(self, xml: str) -> None:
        self._put_meta(_LABEL_CONFIG, xml)

    def connected_at(self) -> float | None:
        """When Label Studio first called /setup for the project (None: never)."""
        raw = self._meta(_CONNECTED)
        return None if raw is None else float(raw)

    def mark_connected(self) -> None:
        if self.connected_at() is None:
            self._put_meta(_CONNECTED, str(time.time()))

    def training_requested(self) -> int:
        """The event number of the last START_TRAINING (0: none)."""
        return int(self._meta(_TRAIN_REQUESTED) or 0)

    def reread_done(self) -> int:
        """The START_TRAINING whose re-read of Label Studio's labels ran last."""
        return int(self._meta(_REREAD_DONE) or 0)

    def set_reread_done(self, request: int) -> None:
        self._put_meta(_REREAD_DONE, str(request))

    def lane_done(self, lane: str) -> int:
        """What the lane's last handled run covered (its marker then)."""
        return int(self._meta(f"{lane}_done") or 0)

    def set_lane_done(self, lane: str, marker: int) -> None:
        self._put_meta(f"{lane}_done", str(marker))

    def lane_status(self, lane: str) -> dict[str, Any] | None:
        raw = self._meta(_STATUS + lane)
        return None if raw is None else dict(json.loads(raw))

    def set_lane_status(self, lane: str, status: dict[str, Any]) -> None:
        self._put_meta(_STATUS + lane, json.dumps(status))

    def lane_wanted(self, lane: str) -> int:
        """When a run of the lane was last asked for (ns since the epoch; 0: never)."""
        return int(self._meta(f"{lane}_wanted") or 0)

    def lane_forced(self, lane: str) -> int:
        """When a run that must act whatever changed was last asked for (0: never)."""
        return int(self._meta(f"{lane}_forced") or 0)

    def want_lane(self, lane: str, forced: bool = False) -> None:
        """Ask for a run of the lane (one that acts whatever changed, when ``forced``)."""
        now = str(time.time_ns())
        with self._tx() as db:
            if forced:
                self._set_meta(db, f"{lane}_forced", now)
            self._set_meta(db, f"{lane}_wanted", now)

    def webhooks_checked(self) -> float:
        """When the project's webhooks were last checked for our basic-auth header."""
        return float(self._meta(_WEBHOOKS_CHECKED) or 0)

    def set_webhooks_checked(self, when: float) -> None:
        self._put_meta(_WEBHOOKS_CHECKED, str(when))

    def setup_urls(self) -> dict[str, float]:
        """The URLs Label Studio reached /setup by, with when each was first seen."""
        return {str(k): float(v) for k, v in json.loads(self._meta(_SETUP_URLS) or "{}").items()}

    def note_setup_urls(self, urls: Iterable[str], keep: int) -> bool:
        """Record URLs /setup came by (the ``keep`` newest stay); whether one was new. A URL
        already known costs a read, not a write (Label Studio calls /setup very often)."""
        urls, seen = list(urls), self.setup_urls()
        if all(url in seen for url in urls):
            return False
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (_SETUP_URLS,)).fetchone()
            known: dict[str, float] = json.loads(row[0]) if row else {}
            now = time.time()
            known.update((url, now) for url in urls if url not in known)
            newest = sorted(known.items(), key=lambda item: item[1])[-keep:]
            self._set_meta(db, _SETUP_URLS, json.dumps(dict(newest)))
        return True

    def webhook_problem(self) -> str | None:
        """What is wrong with the project's webhook in Label Studio, as last found."""
        return self._meta(_WEBHOOK_PROBLEM) or None

    def set_webhook_problem(self, problem: str | None) -> None:
        self._put_meta(_WEBHOOK_PROBLEM, problem or "")

    def queue_state(self) -> str | None:
        """What Label Studio's queue holds (``labelstudio.queue.QueueState``, as JSON)."""
        return self._meta(_QUEUE)

    def set_queue_state(self, raw: str) -> None:
        self._put_meta(_QUEUE, raw)

    def serving_version(self) -> str | None:
        """The name of the model version that serves (the registry's pointer)."""
        return self._meta(_SERVING)

    def serving_pinned(self) -> bool:
        """Whether a rollback pinned the serving version (promotions then leave it serving)."""
        return self._meta(_PINNED) == "1"

    def set_serving_version(self, version: str, pinned: bool = False) -> None:
        with self._tx() as db:  # the name and the pin at once
            self._set_meta(db, _SERVING, version)
            self._set_meta(db, _PINNED, "1" if pinned else "0")

    def plateau(self) -> dict[str, Any] | None:
        """The stopping signal as the last head round left it (``jobs.stopping.update``): the
        verdict, the forecasts of the earlier rounds, its cost; None before the first."""
        raw = self._meta(_PLATEAU)
        return None if raw is None else dict(json.loads(raw))

    def set_plateau(self, signal: dict[str, Any]) -> None:
        self._put_meta(_PLATEAU, json.dumps(signal))
