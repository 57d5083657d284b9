"""The serving pointer and the model registry of a project, as every replica and worker
shares them: versions are folders under ``MODEL_DIR/<project>/models``, the name of the one
that serves lives in the project's store, and so does the registry writers' lock."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ls_backend.core.registry import FilePointer, Registry
from ls_backend.store.annotations import AnnotationStore
from ls_backend.store.databases import Databases

log = logging.getLogger(__name__)


class StorePointer:
    """The registry's pointer, and its pin, in the project's store, where every replica and
    worker reads them. Each move is copied into the registry's ``current`` file too, so that a
    process that starts while the store is away serves what was serving (``last_written``); a
    store from before the pointer lived there adopts that file (``readonly``: reads it, and
    leaves the adoption to a writer)."""

    def __init__(self, store: AnnotationStore, file: Path, readonly: bool = False) -> None:
        self.store, self.file, self.readonly = store, FilePointer(file), readonly

    def read(self) -> str | None:
        name = self.store.serving_version()
        if name is None and (name := self.file.read()) is not None and not self.readonly:
            self.store.set_serving_version(name, self.file.pinned())
        return name

    def pinned(self) -> bool:
        return self.store.serving_pinned()

    def write(self, version: str, pinned: bool = False) -> None:
        self.store.set_serving_version(version, pinned)
        try:
            self.file.write(version, pinned)
        except OSError as exc:  # the store's pointer moved: that is what serves
            log.warning("could not copy the serving version to %s: %s", self.file.path, exc)

    def last_written(self) -> str | None:
        """The serving version as last copied to disk: only for when the store is away."""
        return self.file.read()


def project_registry(project_dir: Path, store: AnnotationStore, readonly: bool = False) -> Registry:
    """The project's model registry: versions in ``models/``, the pointer and the writers' lock
    in the store (``readonly``: for reading what serves, never writing)."""
    root = project_dir / "models"
    pointer = StorePointer(store, root / "current", readonly)
    return Registry(root, pointer, lambda: store.database.lock("models"))


@dataclass(frozen=True)
class StoreAddress:
    """Where a project's store is; picklable, so a child process opens it again."""

    model_dir: Path
    database_url: str | None
    key: str

    @property
    def project_dir(self) -> Path:
        return self.model_dir / self.key

    def open(self) -> AnnotationStore:
        """The store, opened once per process."""
        return _open(self)


@lru_cache(maxsize=8)
def _open(address: StoreAddress) -> AnnotationStore:
    databases = Databases(address.model_dir, address.database_url, pool_size=3)
    return AnnotationStore(databases.project(address.key))
