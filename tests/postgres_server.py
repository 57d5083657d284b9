"""A real PostgreSQL server on 127.0.0.1 for the tests (Debian's postgresql; scripts/test
installs it). The backend connects as an ordinary role that owns its database."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from backend_server import free_port

ROLE, PASSWORD = "lsb", "lsb-test"


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: scripts/test installs it")
    return str(found[-1])


class PostgresServer:
    """``fsync``: off for the tests (faster, nothing to keep), on for benchmarks that compare
    with a real deployment."""

    def __init__(self, fsync: bool = False) -> None:
        self.fsync = fsync
        # Not under pytest's tmp (root-only): the server runs as the postgres user.
        self.dir = Path(tempfile.mkdtemp(prefix="lsb-pg-"))
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._databases = 0
        self._templates: set[str] = set()

    def _run(self, *args: str) -> None:
        # Never a pipe: the server pg_ctl starts would hold it open, and this would wait forever.
        subprocess.run([*self._as, *args], check=True, stdout=subprocess.DEVNULL, timeout=120)

    def start(self) -> PostgresServer:
        if not (self.dir / "data").exists():
            if self._as:
                shutil.chown(self.dir, "postgres", "postgres")
            self._run(
                _binary("initdb"), "-D", str(self.dir / "data"), "--auth-local=trust",
                "--auth-host=scram-sha-256", "-U", "postgres",
            )  # fmt: skip
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        options += "" if self.fsync else " -c fsync=off"
        data, log = str(self.dir / "data"), str(self.dir / "server.log")
        self._run(_binary("pg_ctl"), "-D", data, "-l", log, "-o", options, "-w", "start")
        with self.admin() as db:
            if not db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone():
                db.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")  # not a superuser
        return self

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.dir), port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_database(self, template: str | None = None) -> str:
        """A fresh database owned by the ordinary role (a copy of ``template``, when given);
        returns its URL."""
        self._databases += 1
        name = f"lsb_{os.getpid()}_{self._databases}"
        copy = f" TEMPLATE {template}" if template else ""
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {ROLE}{copy}")
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def _client(self, tool: str, *args: str) -> None:
        """``psql`` or ``pg_dump`` as the ordinary role, over TCP like the servers."""
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        host = ["-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE]
        subprocess.run(
            [_binary(tool), *host, *args], env=env, check=True, stdout=subprocess.DEVNULL,
            timeout=300,
        )  # fmt: skip

    def dump(self, url: str, path: Path) -> None:
        """The database of ``url`` as plain SQL without owners (any role can restore it)."""
        name = url.rsplit("/", 1)[1]
        self._client("pg_dump", "--no-owner", "--no-privileges", "-f", str(path), name)

    def restored(self, dump: Path) -> str:
        """A database restored from ``dump``, once per server (later calls return it): the
        template that ``create_database(template=...)`` copies in a moment."""
        name = "tpl_" + hashlib.blake2b(str(dump.resolve()).encode(), digest_size=5).hexdigest()
        if name not in self._templates:
            with self.admin() as db:
                db.execute(f"DROP DATABASE IF EXISTS {name}")
                db.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
            self._client("psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", name, "-f", str(dump))
            self._templates.add(name)
        return name

    def stop(self, mode: str = "fast") -> None:
        self._run(_binary("pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
