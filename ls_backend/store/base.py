"""The store's contract: a project's durable state lives in a ``Database`` (an SQLite file per
project, the embedded default, or a PostgreSQL schema per project with ``DATABASE_URL``).

Stores write portable SQL (``?`` placeholders, ``ON CONFLICT``, ``RETURNING``) against a
``Session``; the few differences (the DDL of an auto-numbered key, reading a JSON field) are
properties of the database. Schemas are versioned: ``migrate`` applies the steps a database
has not seen, once, under a lock. Named locks (``lock``: one training run per lane, one writer
of the model registry) are ``flock`` files beside an SQLite store, and advisory locks in
PostgreSQL, so processes on several machines take turns without a shared lock file.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

#: A migration step: SQL statements, formatted with the database's ``ddl`` words.
Migration = Sequence[str]


class StoreUnavailable(RuntimeError):
    """The database cannot be reached (a PostgreSQL restart, a network cut)."""


class StoreMissing(LookupError):
    """A store opened read-only does not exist (a read never creates one)."""


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

    def stamp(self) -> Hashable | None:
        """Something that changes whenever anyone commits to this store, cheap to get without
        a connection; None when the engine cannot tell (then every read reads)."""
        ...
