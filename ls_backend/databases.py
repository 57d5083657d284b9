"""Where a project's durable state lives: one SQLite file per project under MODEL_DIR (the
embedded default), or one PostgreSQL schema per project (``DATABASE_URL``), which serving
replicas and workers on several machines share.

Stores write portable SQL (``?`` placeholders, ``ON CONFLICT``, ``RETURNING``) against a
``Session``; the few differences (the DDL of an auto-numbered key, reading a JSON field) are
properties of the database. Schemas are versioned: ``migrate`` applies the steps a database
has not seen, once, under a lock. Named locks (``lock``: one training run per lane, one writer
of the model registry) are ``flock`` files beside an SQLite store, and advisory locks in
PostgreSQL, so processes on several machines take turns without a shared lock file.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from ls_backend.core.registry import flock

log = logging.getLogger(__name__)

#: A migration step: SQL statements, formatted with the database's ``ddl`` words.
Migration = Sequence[str]


class StoreUnavailable(RuntimeError):
    """The database cannot be reached (a PostgreSQL restart, a network cut)."""


class Rows(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Session(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Database(Protocol):
    #: DDL words that differ between engines: ``serial`` (an auto-numbered primary key).
    ddl: dict[str, str]

    def session(self, write: bool = False) -> Any:
        """A context manager yielding a ``Session``: one transaction when ``write`` (writers
        of one project take turns), else a plain read."""
        ...

    def json_text(self, column: str, *path: str) -> str:
        """SQL for the text at ``path`` inside the JSON in ``column``."""
        ...

    def migrate(self, steps: Sequence[Migration], legacy: Callable[[Session], int]) -> None:
        """Apply the steps this database has not seen. ``legacy`` says how many steps a store
        from before versioning already has (SQLite files only)."""
        ...

    def lock(self, name: str, wait: bool = True) -> AbstractContextManager[bool]:
        """The lock ``name`` of this store, held by one thread of one process at a time (it
        goes with a killed process); yields whether it is held (always, when ``wait``)."""
        ...


# --- SQLite: one file per project ---------------------------------------------------------------


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


# --- PostgreSQL: one schema per project, a connection pool per process ------------------------


class _PgSession:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self.conn.execute(self._sql(sql), params)  # type: ignore[no-any-return]

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.conn.cursor().executemany(self._sql(sql), rows)


def _lock_id(name: str) -> int:
    """A 64-bit advisory-lock key for ``name``."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresDatabase:
    """A project's schema in the shared database. Writers of one project take turns (a
    transaction-scoped advisory lock), as SQLite's single writer did; readers never wait."""

    ddl = {"serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "blob": "BYTEA"}

    def __init__(self, pool: Any, schema: str) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ValueError(f"not a schema name: {schema!r}")
        self.pool, self.schema = pool, schema
        self._lock = _lock_id(schema)

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        import psycopg

        try:
            with self.pool.connection() as conn:  # one transaction: committed at the end
                conn.execute(f"SET LOCAL search_path TO {self.schema}")
                if write:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock,))
                yield _PgSession(conn)
        except psycopg.OperationalError as exc:  # the pool's PoolTimeout, too
            raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc

    def json_text(self, column: str, *path: str) -> str:
        expr = f"({column})::jsonb"
        for key in path[:-1]:
            expr += f" -> '{key}'"
        return f"({expr} ->> '{path[-1]}')"

    def migrate(self, steps: Sequence[Migration], legacy: Callable[[Session], int]) -> None:
        import psycopg

        try:
            self._migrate(steps)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc

    def _migrate(self, steps: Sequence[Migration]) -> None:
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            conn.execute(f"SET LOCAL search_path TO {self.schema}")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            for step in steps[version:]:
                for statement in step:
                    conn.execute(statement.format(**self.ddl))
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (%s)", (len(steps),))

    @contextmanager
    def lock(self, name: str, wait: bool = True) -> Iterator[bool]:
        """A session-level advisory lock on a connection of its own, idle while held (a LoRA
        run holds it for minutes): it goes with the connection if the process dies."""
        import psycopg

        key = _lock_id(f"{self.schema}.{name}")
        try:
            with self.pool.connection() as conn:
                take = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
                held = conn.execute(f"SELECT {take}(%s)", (key,)).fetchone()[0] is not False
                conn.commit()  # not idle in a transaction while the lock is held
                try:
                    yield held
                finally:
                    if held:
                        self._unlock(conn, key)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc

    def _unlock(self, conn: Any, key: int) -> None:
        import psycopg

        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg.OperationalError:  # the connection died: the lock went with it
            log.warning("%s: a lock's connection was lost while it was held", self.schema)


class Databases:
    """Opens each project's database: the one way the backend opens a store."""

    #: Connections per process, at most (opened as needed): every running lane holds one for its
    #: lock (5 lane threads in-process), and requests must still find one within 5 s.
    POOL_SIZE = 16

    def __init__(self, model_dir: Path, url: str | None = None, pool_size: int = POOL_SIZE) -> None:
        self.model_dir, self.url = model_dir, url
        self._pool: Any = None
        self._pool_size = pool_size
        self._lock = threading.Lock()

    def project(self, key: str) -> Database:
        """A project's store: ``<key>/annotations.sqlite``, or the schema ``project_<key>``."""
        if self.url is None:
            return SqliteDatabase(self.model_dir / key / "annotations.sqlite")
        return PostgresDatabase(self.pool(), f"project_{key}")

    def embedding_cache(self) -> Database:
        """Every project's embeddings: ``embeddings.sqlite``, or the schema ``embedding_cache``."""
        if self.url is None:
            return SqliteDatabase(self.model_dir / "embeddings.sqlite", durable=False)
        return PostgresDatabase(self.pool(), "embedding_cache")

    def pool(self) -> Any:
        assert self.url is not None, "SQLite needs no pool"
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                # Opened lazily, and not waited for: the server starts while PostgreSQL is
                # away, and serves predictions from the loaded model meanwhile.
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=5,  # a request waits this long for PostgreSQL, then gets 503
                    open=False,
                    name="ls-backend",
                    # A connection from before a PostgreSQL restart is dead: test it on
                    # checkout (one round trip) instead of failing the request it serves.
                    check=ConnectionPool.check_connection,
                    # Background reconnects back off (1, 2, 4 s...): give them up after 10 s
                    # so that, once PostgreSQL is back, the next request connects at once
                    # instead of waiting out a backoff as long as the outage was.
                    reconnect_timeout=10,
                )
                self._pool.open(wait=False)
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
