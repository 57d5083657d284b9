"""Opening stores: the one way the backend opens a project's database or the embedding
cache's, on the engine the settings name."""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from ls_backend.store.base import Database
from ls_backend.store.embedding_cache import EmbeddingCache
from ls_backend.store.postgres import PostgresDatabase
from ls_backend.store.sqlite import Connections, SqliteDatabase, file_stamp


class Databases:
    """Opens each project's database: the one way the backend opens a store."""

    #: Connections per process, at most (opened as needed): every running lane holds one for its
    #: lock (5 lane threads in-process), and requests must still find one within 5 s.
    POOL_SIZE = 16

    #: SQLite connections kept idle per process, over every project (3 open files each).
    IDLE_CONNECTIONS = 48

    def __init__(self, model_dir: Path, url: str | None = None, pool_size: int = POOL_SIZE) -> None:
        self.model_dir, self.url = model_dir, url
        self._pool: Any = None
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self.connections = Connections(self.IDLE_CONNECTIONS)

    def project(self, key: str, readonly: bool = False) -> Database:
        """A project's store: ``<key>/annotations.sqlite``, or the schema ``project_<key>``.
        ``readonly``: for reading what is there, never creating or writing anything."""
        if self.url is None:
            path = self.model_dir / key / "annotations.sqlite"
            return SqliteDatabase(path, readonly=readonly, connections=self.connections)
        return PostgresDatabase(self.pool(), f"project_{key}", readonly=readonly)

    def stamp(self, key: str) -> Hashable | None:
        """``project(key).stamp()``, without making the database object (cheap enough for
        every project on every /status)."""
        if self.url is None:
            return file_stamp(os.path.join(self.model_dir, key, "annotations.sqlite"))
        return None

    def embedding_cache(self) -> EmbeddingCache:
        """Every project's embeddings: ``embeddings.sqlite``, or the schema ``embedding_cache``."""
        if self.url is None:
            return self.embedding_cache_at(self.model_dir / "embeddings.sqlite", self.connections)
        return EmbeddingCache(PostgresDatabase(self.pool(), "embedding_cache"))

    @staticmethod
    def embedding_cache_at(path: Path, connections: Connections | None = None) -> EmbeddingCache:
        """An embedding cache in the SQLite file ``path`` (the bench keeps one of its own)."""
        # Worth no fsync per write: it is recomputed if lost.
        return EmbeddingCache(SqliteDatabase(path, durable=False, connections=connections))

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
        self.connections.close()
        if self._pool is not None:
            self._pool.close()
