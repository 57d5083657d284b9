"""SQLite: one file per project under MODEL_DIR, the embedded default (no server)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ls_backend.core.files import flock
from ls_backend.store.base import Migration, Rows, Session


class _SqliteSession:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self.db.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)


class SqliteDatabase:
    """WAL, ``synchronous=FULL``: an acknowledged write survives power loss. One connection
    per thread, closed when the database object goes."""

    ddl = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"}

    def __init__(self, path: Path, durable: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.durable = path, durable
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            self._local.db = db
        return db

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        db = self._db()
        if not write:
            yield _SqliteSession(db)
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteSession(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def json_text(self, column: str, *path: str) -> str:
        return f"json_extract({column}, '$.{'.'.join(path)}')"

    def migrate(self, steps: Sequence[Migration], legacy: Callable[[Session], int]) -> None:
        with self.session(write=True) as s:
            version = int(s.execute("PRAGMA user_version").fetchone()[0])
            if version == 0:
                version = legacy(s)
            for step in steps[version:]:
                for statement in step:
                    s.execute(statement.format(**self.ddl))
            s.execute(f"PRAGMA user_version = {len(steps)}")

    def lock(self, name: str, wait: bool = True) -> AbstractContextManager[bool]:
        return flock(self.path.parent / f"{name}.lock", wait)
