"""Model versions on disk: atomic save, a pointer to the serving version, rollback.

Layout under a project's ``models/`` folder::

    v0007-head/   one finished version (model files, info.json, metrics, ...)
    .tmp-.../     a version being written; never read, removed on start
    current       the serving version's name, replaced atomically (``FilePointer``)
    history.jsonl the info.json records of versions deleted by ``prune`` (the learning curve)

A version directory appears only by ``rename`` of a fully written and fsynced
temporary directory, and the pointer moves only after that, so a ``kill -9`` at
any moment leaves the last good version serving. The server keeps the pointer in the
project's database instead (``Pointer``), where every replica reads it.

Retention (``prune``, after each round): the serving version, the last N and every promoted
version stay; the others' files go, their records move to ``history.jsonl``.

A rollback *pins* the pointer: the version rolled back to keeps serving while new rounds
train and are saved, until the pin is lifted (``unpin``), so the next label does not undo it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from ls_backend.core.files import flock, fsync_dir, write_dir_atomic, write_text_atomic
from ls_backend.core.kinds import ModelKind

_VERSION = re.compile(r"^v(\d{4,})-([a-z]+)$")
#: Where ``prune`` keeps the records of the versions it deleted.
HISTORY = "history.jsonl"


def version_number(name: str) -> int:
    match = _VERSION.match(name)
    if match is None:
        raise KeyError(f"no model version {name!r}")
    return int(match.group(1))


class Pointer(Protocol):
    """Where the serving version's name lives, and whether it is pinned (both written at once)."""

    def read(self) -> str | None: ...

    def pinned(self) -> bool: ...

    def write(self, version: str, pinned: bool = False) -> None: ...


#: How ``FilePointer`` marks a pinned version after its name.
_PIN_MARK = "pinned"


class FilePointer:
    """The serving version's name in a file, replaced atomically; `` pinned`` after it when
    a rollback pinned it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _words(self) -> list[str]:
        try:
            return self.path.read_text().split()
        except FileNotFoundError:
            return []

    def read(self) -> str | None:
        words = self._words()
        return words[0] if words else None

    def pinned(self) -> bool:
        return self._words()[1:] == [_PIN_MARK]

    def write(self, version: str, pinned: bool = False) -> None:
        write_text_atomic(self.path, f"{version} {_PIN_MARK}" if pinned else version)


class Registry:
    """A project's versions under ``root``. ``pointer`` says which one serves (the ``current``
    file by default); ``lock`` serialises writers (an ``flock`` in ``root`` by default)."""

    def __init__(
        self,
        root: Path,
        pointer: Pointer | None = None,
        lock: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.root = root  # made by the first save: reading a registry creates nothing
        self.pointer = pointer or FilePointer(root / "current")
        self._lock = lock or self._file_lock
        self.moves = 0  # of the pointer, through this object

    def _file_lock(self) -> AbstractContextManager[bool]:
        self.root.mkdir(parents=True, exist_ok=True)
        return flock(self.root / ".lock")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise writers of this registry (saves, promotions, rollbacks)."""
        with self._lock():
            yield

    def clean(self) -> None:
        """Drop half-written versions left by a crash (call while holding the write lock)."""
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=version_number)

    def save(self, kind: ModelKind, write: Callable[[Path], None], info: dict[str, Any]) -> str:
        """Write a new version with ``write(dir)`` plus ``info.json``; returns its name.

        Callers serialise saves per project (the registry lock), so numbering is race-free
        and any ``.tmp-*`` left now is a killed writer's, removed here.
        """
        kind = ModelKind(kind)
        self.clean()
        existing = self.versions()
        number = version_number(existing[-1]) + 1 if existing else 1
        name = f"v{number:04d}-{kind.value}"

        def write_version(tmp: Path) -> None:
            write(tmp)
            record = {"version": name, "kind": kind.value, "created": time.time(), **info}
            (tmp / "info.json").write_text(json.dumps(record, indent=1, sort_keys=True))

        if not write_dir_atomic(self.root / name, write_version):
            raise FileExistsError(f"{name} appeared while it was written")
        return name

    def prune(self, keep_last: int) -> list[str]:
        """Delete every version that is not the serving one (pinned or not), one of the last
        ``keep_last`` or promoted; returns their names. Their ``info.json`` records are kept in
        HISTORY first (``history``). Call holding ``lock``: saves number from the last version,
        which always stays."""
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1: the next save numbers from it")
        versions = self.versions()
        kept = set(versions[-keep_last:]) | {self.pointer.read()}
        doomed = [v for v in versions if v not in kept and not self.info(v).get("promoted")]
        if not doomed:
            return []
        with open(self.root / HISTORY, "a", encoding="utf-8") as history:
            for version in doomed:
                history.write(json.dumps(self.info(version), sort_keys=True) + "\n")
            history.flush()
            os.fsync(history.fileno())
        for version in doomed:  # renamed first: a crash mid-delete leaves no half version
            gone = self.root / f".tmp-pruned-{version}"
            (self.root / version).rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
        fsync_dir(self.root)
        return doomed

    def history(self) -> list[dict[str, Any]]:
        """Every version's ``info.json`` record in version order, the pruned ones too."""
        records: dict[str, dict[str, Any]] = {}
        try:
            with open(self.root / HISTORY, encoding="utf-8") as history:
                for line in history:
                    try:
                        record = json.loads(line)
                    except ValueError:  # a line cut by a crash while it was written
                        continue
                    records[str(record.get("version"))] = record
        except FileNotFoundError:
            pass
        for version in self.versions():
            records[version] = self.info(version)
        known = [v for v in records if _VERSION.match(v)]
        return [records[v] for v in sorted(known, key=version_number)]

    def path(self, version: str) -> Path:
        path = self.root / version
        if not _VERSION.match(version) or not (path / "info.json").is_file():
            raise KeyError(f"no model version {version!r}")
        return path

    def info(self, version: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path(version) / "info.json").read_text())
        return data

    def current(self) -> str | None:
        name = self.pointer.read()
        return name if name and (self.root / name / "info.json").is_file() else None

    def pinned(self) -> str | None:
        """The serving version while a rollback pins it (None: promotions move the pointer)."""
        current = self.current()
        return current if current is not None and self.pointer.pinned() else None

    def set_current(self, version: str, pin: bool = False) -> None:
        """Serve ``version`` (pinned or not); this lifts any pin. Call holding ``lock``."""
        self.path(version)  # must exist and be complete
        self.pointer.write(version, pin)
        self.moves += 1

    def unpin(self) -> str | None:
        """Lift the pin: the serving version stays until a round promotes another."""
        current = self.current()
        if current is not None and self.pointer.pinned():
            self.pointer.write(current, False)
        return current

    def rollback(self, version: str | None = None, pin: bool = True) -> str:
        """Serve ``version``, or the promoted version before the current one; pinned (new rounds
        are saved but do not serve) unless ``pin`` is False."""
        if version is None:
            current = self.current()
            promoted = [v for v in self.versions() if self.info(v).get("promoted")]
            limit = version_number(current) if current else None
            earlier = [v for v in promoted if limit is None or version_number(v) < limit]
            if not earlier:
                raise KeyError("no earlier promoted version to roll back to")
            version = earlier[-1]
        self.set_current(version, pin)
        return version
