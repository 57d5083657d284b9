"""The embedding cache: (model, text hash) -> float32 vector, in a database of its own (an
SQLite file under MODEL_DIR, or a PostgreSQL schema that every replica and worker shares).

A text is embedded once per model and runtime: a restart, a second gunicorn worker or another
replica never re-embeds a pool. The cache never fails a prediction: while its database is
away, reads find nothing and writes are dropped (the model computes the vectors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ls_backend.store.base import Database, StoreUnavailable

log = logging.getLogger(__name__)

#: SQLite caps the number of bound parameters per statement.
_CHUNK = 500
#: After its database failed to answer (each try waits up to 5 s for a PostgreSQL
#: connection), the cache is skipped this long: predictions embed without it, at once.
AWAY_RETRY_S = 10.0


class EmbeddingCache:
    """A ``core.embeddings.VectorCache`` on a ``Database``."""

    MIGRATIONS = [
        [
            "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, key {blob} NOT NULL,"
            " vector {blob} NOT NULL, PRIMARY KEY (model, key))"
        ]
    ]

    def __init__(self, database: Database) -> None:
        self.database = database
        self._ready = False
        self._away_until = 0.0  # monotonic

    def _away(self) -> bool:
        return time.monotonic() < self._away_until

    def _ensure(self) -> None:
        if not self._ready:
            self.database.migrate(self.MIGRATIONS, lambda _session: 0)  # idempotent
            self._ready = True

    def get_many(self, model: str, keys: Sequence[bytes]) -> dict[bytes, NDArray[np.float32]]:
        found: dict[bytes, NDArray[np.float32]] = {}
        if self._away():
            return found
        try:
            self._ensure()
            with self.database.session() as db:
                for start in range(0, len(keys), _CHUNK):
                    part = list(keys[start : start + _CHUNK])
                    marks = ",".join("?" * len(part))
                    rows = db.execute(
                        f"SELECT key, vector FROM embeddings WHERE model = ? AND key IN ({marks})",
                        [model, *part],
                    )
                    for key, blob in rows:
                        found[bytes(key)] = np.frombuffer(blob, dtype=np.float32)
        except StoreUnavailable as exc:
            log.warning("embedding cache unreachable, embedding without it: %s", exc)
            self._away_until = time.monotonic() + AWAY_RETRY_S
            return {}
        return found

    def put_many(self, model: str, items: dict[bytes, NDArray[np.float32]]) -> None:
        if self._away():
            return
        try:
            self._ensure()
            with self.database.session(write=True) as db:
                db.executemany(
                    "INSERT INTO embeddings (model, key, vector) VALUES (?, ?, ?)"
                    " ON CONFLICT (model, key) DO UPDATE SET vector = excluded.vector",
                    [(model, k, v.astype(np.float32).tobytes()) for k, v in items.items()],
                )
        except StoreUnavailable as exc:
            log.warning("embedding cache unreachable, %d vectors not kept: %s", len(items), exc)
            self._away_until = time.monotonic() + AWAY_RETRY_S
