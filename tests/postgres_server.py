"""A real PostgreSQL server on 127.0.0.1 for the tests (Debian's postgresql; scripts/test
installs it). The backend connects as an ordinary role that owns its database."""

from __future__ import annotations

import contextlib
import glob
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
    def __init__(self) -> None:
        # Not under pytest's tmp (root-only): the server runs as the postgres user.
        self.dir = Path(tempfile.mkdtemp(prefix="lsb-pg-"))
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._databases = 0

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
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
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

    def create_database(self) -> str:
        """A fresh database owned by the ordinary role; returns its URL."""
        self._databases += 1
        name = f"lsb_{os.getpid()}_{self._databases}"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{name}"

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
