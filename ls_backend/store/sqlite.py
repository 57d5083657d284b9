"""SQLite: one file per project under MODEL_DIR, the embedded default (no server)."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ls_backend.core.files import flock
from ls_backend.store.base import Migration, Rows, Session, StoreMissing

#: A file changed this recently may change again within its time's granularity (a few ms on
#: Linux): ``stamp`` vouches for nothing younger.
SETTLED_NS = 1_000_000_000


class _SqliteSession:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self.db.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)


class Connections:
    """The SQLite connections of a process, shared by its stores. A connection serves one
    session at a time, then waits idle for the next session on its file; past ``idle`` idle
    connections the one used longest ago is closed. So open files stay bounded however many
    projects a process touches (3 per connection: the database, its WAL, its shared memory),
    and none waits for the garbage collector to be closed (1,000 projects held 2,688 files)."""

    def __init__(self, idle: int = 48) -> None:
        self.idle = idle
        self._idle: OrderedDict[int, tuple[Hashable, sqlite3.Connection]] = OrderedDict()
        self._lock = threading.Lock()
        self._tokens = itertools.count()

    def take(self, key: Hashable, connect: Callable[[], sqlite3.Connection]) -> sqlite3.Connection:
        """An idle connection of ``key`` (the one used last), else a new one."""
        with self._lock:
            for token in reversed(self._idle):
                if self._idle[token][0] == key:
                    return self._idle.pop(token)[1]
        return connect()

    def give(self, key: Hashable, db: sqlite3.Connection) -> None:
        """``db`` is idle again."""
        if db.in_transaction:  # a session that could not even roll back: not reusable
            db.close()
            return
        with self._lock:
            self._idle[next(self._tokens)] = (key, db)
            doomed = []
            while len(self._idle) > self.idle:
                doomed.append(self._idle.popitem(last=False)[1][1])
        for old in doomed:  # outside the lock: the last close of a file checkpoints its WAL
            old.close()

    def close(self) -> None:
        with self._lock:
            doomed = [db for _, db in self._idle.values()]
            self._idle.clear()
        for db in doomed:
            db.close()

    def __len__(self) -> int:
        return len(self._idle)


class SqliteDatabase:
    """WAL, ``synchronous=FULL``: an acknowledged write survives power loss. Connections come
    from ``connections`` (shared by a process's stores; a few of its own by default), one per
    session; a session inside a session of the same thread shares its connection.
    ``readonly``: opened read-only, never created or migrated (``StoreMissing`` if absent)."""

    ddl = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"}

    def __init__(
        self,
        path: Path,
        durable: bool = True,
        readonly: bool = False,
        connections: Connections | None = None,
    ) -> None:
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.durable, self.readonly = path, durable, readonly
        self.connections = Connections(idle=2) if connections is None else connections
        self._key = (str(path), durable, readonly)
        self._active = threading.local()  # the connection of this thread's open session

    def _connect(self) -> sqlite3.Connection:
        # Not bound to a thread: ``Connections`` hands a connection to one session at a time.
        if self.readonly:
            if not self.path.is_file():
                raise StoreMissing(f"no store at {self.path}")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            db = sqlite3.connect(
                uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False
            )
        else:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        return db

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db: sqlite3.Connection | None = getattr(self._active, "db", None)
        if db is not None:  # a session inside a session of this thread
            yield db
            return
        db = self.connections.take(self._key, self._connect)
        self._active.db = db
        try:
            yield db
        finally:
            self._active.db = None
            self.connections.give(self._key, db)

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        with self._connection() as db:
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
        with self._connection() as db:  # a read first: an up-to-date store is not written
            if int(db.execute("PRAGMA user_version").fetchone()[0]) >= len(steps):
                return
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

    def stamp(self) -> Hashable | None:
        return file_stamp(str(self.path))


def file_stamp(path: str) -> Hashable | None:
    """Changes with every commit to the SQLite file ``path``, by anyone (its and its WAL's
    sizes and times); None while a file changed within SETTLED_NS (its time is coarser than
    commits). Strings, not ``Path``: /status takes a thousand of these."""
    now = time.time_ns()
    parts: list[tuple[int, int, int] | None] = []
    for name in (path, path + "-wal"):
        try:
            stat = os.stat(name)
        except FileNotFoundError:
            parts.append(None)
            continue
        if stat.st_size == 0 and name != path:
            parts.append(None)  # an empty WAL (a reader made it) is no change
            continue
        if now - stat.st_mtime_ns < SETTLED_NS:
            return None
        parts.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(parts)
