"""Model versions on disk: atomic save, a ``current`` pointer, rollback.

Layout under a project's ``models/`` folder::

    v0007-head/   one finished version (model files, info.json, metrics, ...)
    .tmp-.../     a version being written; never read, removed on start
    current       the serving version's name, replaced atomically

A version directory appears only by ``rename`` of a fully written and fsynced
temporary directory, and ``current`` moves only after that, so a ``kill -9`` at
any moment leaves the last good version serving.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_VERSION = re.compile(r"^v(\d{4,})-([a-z]+)$")


def version_number(name: str) -> int:
    match = _VERSION.match(name)
    if match is None:
        raise KeyError(f"no model version {name!r}")
    return int(match.group(1))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_dir_atomic(target: Path, write: Callable[[Path], None]) -> bool:
    """Create directory ``target`` with ``write(tmp)`` on a sibling temporary directory,
    fsynced, then renamed: it appears whole or not at all. Returns False (and discards this
    copy) when another writer created ``target`` first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise writers of this registry across threads and processes (flock)."""
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def clean(self) -> None:
        """Drop half-written versions left by a crash (call while holding the write lock)."""
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def versions(self) -> list[str]:
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=version_number)

    def save(self, kind: str, write: Callable[[Path], None], info: dict[str, Any]) -> str:
        """Write a new version with ``write(dir)`` plus ``info.json``; returns its name.

        Callers serialise saves per project (the registry lock), so numbering is race-free
        and any ``.tmp-*`` left now is a killed writer's, removed here.
        """
        if not re.fullmatch(r"[a-z]+", kind):
            raise ValueError(f"bad model kind {kind!r}")
        self.clean()
        existing = self.versions()
        number = version_number(existing[-1]) + 1 if existing else 1
        name = f"v{number:04d}-{kind}"

        def write_version(tmp: Path) -> None:
            write(tmp)
            record = {"version": name, "kind": kind, "created": time.time(), **info}
            (tmp / "info.json").write_text(json.dumps(record, indent=1, sort_keys=True))

        if not write_dir_atomic(self.root / name, write_version):
            raise FileExistsError(f"{name} appeared while it was written")
        return name

    def path(self, version: str) -> Path:
        path = self.root / version
        if not _VERSION.match(version) or not (path / "info.json").is_file():
            raise KeyError(f"no model version {version!r}")
        return path

    def info(self, version: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path(version) / "info.json").read_text())
        return data

    @property
    def pointer(self) -> Path:
        return self.root / "current"

    def current(self) -> str | None:
        try:
            name = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return name if (self.root / name / "info.json").is_file() else None

    def pointer_stamp(self) -> int:
        """Cheap change detector for serving processes (no read, one stat)."""
        try:
            return self.pointer.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def set_current(self, version: str) -> None:
        self.path(version)  # must exist and be complete
        tmp = self.root / f".current.{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(version)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.pointer)
        _fsync_dir(self.root)

    def rollback(self, version: str | None = None) -> str:
        """Serve ``version``, or the promoted version before the current one."""
        if version is None:
            current = self.current()
            promoted = [v for v in self.versions() if self.info(v).get("promoted")]
            limit = version_number(current) if current else None
            earlier = [v for v in promoted if limit is None or version_number(v) < limit]
            if not earlier:
                raise KeyError("no earlier promoted version to roll back to")
            version = earlier[-1]
        self.set_current(version)
        return version
