"""Run a real Label Studio server for integration tests, on SQLite (its default) or on
PostgreSQL (as the compose stack runs it: DJANGO_DB=default and POSTGRE_*).

Migrating a fresh Label Studio takes about a minute (65-74 s on PostgreSQL), so one *template*
is migrated once (and cached across test sessions, keyed by the Label Studio version and the
test user); each server then starts on a copy of it in about 10 s. On SQLite the template is a
data dir, copied with `cp -a`; on PostgreSQL it is a data dir plus a dump of the migrated
database, restored once per PostgreSQL server and copied per Label Studio with
`CREATE DATABASE ... TEMPLATE`. See LABEL_STUDIO.md, section 2.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from postgres_server import PostgresServer

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

USERNAME = "admin@example.com"
PASSWORD = "admin12345"
# Legacy token of the test user; a constant so a cached template keeps working.
TOKEN = "0123456789abcdef0123456789abcdef01234567"

FIRST_START_TIMEOUT_S = 240.0  # runs every migration: ~60 s on 2 cores, more on a busy machine
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
READY_MARKER = ".ls-template-ready"
#: The migrated database of a PostgreSQL template, beside its data dir.
PG_DUMP = "label_studio.sql"
ENGINES = ("sqlite", "postgresql")


class LabelStudioStartError(RuntimeError):
    """Label Studio did not come up; the message carries the tail of its log."""


def label_studio_version() -> str:
    return importlib.metadata.version("label-studio")


def label_studio_executable() -> Path | None:
    """The `label-studio` script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "label-studio"
    if beside.exists():
        return beside
    found = shutil.which("label-studio")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_env(database_url: str | None) -> dict[str, str]:
    """Where Label Studio keeps its data: SQLite in the data dir, or the PostgreSQL database
    of ``database_url`` (the compose stack's variables)."""
    if database_url is None:
        return {"DJANGO_DB": "sqlite"}
    url = urlsplit(database_url)
    return {
        "DJANGO_DB": "default",
        "POSTGRE_NAME": url.path.lstrip("/"),
        "POSTGRE_USER": url.username or "",
        "POSTGRE_PASSWORD": url.password or "",
        "POSTGRE_HOST": url.hostname or "",
        "POSTGRE_PORT": str(url.port or 5432),
    }


def server_env(data_dir: Path, database_url: str | None = None) -> dict[str, str]:
    """The environment of section 2, without Label Studio settings leaking in from ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LABEL_STUDIO_", "HEARTEX_", "DJANGO_", "POSTGRE_"))
    }
    env.update(database_env(database_url))
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": USERNAME,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            # Only honoured when the organization is created (the template's first start).
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class LabelStudioServer:
    """One `label-studio start` process on its own data dir and port (and its own PostgreSQL
    database, when ``database_url`` is set)."""

    data_dir: Path
    database_url: str | None = None
    port: int = field(default_factory=free_port)
    token: str = TOKEN
    process: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0
    _pat: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> str:
        return "sqlite" if self.database_url is None else "postgresql"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @functools.cached_property
    def client(self) -> LabelStudio:
        """A label-studio-sdk client authenticated with the legacy token."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def personal_access_token(self) -> str:
        """The user's personal access token (a JWT refresh token), created on first use.

        Label Studio lets a user hold one (a second POST /api/token/ is 409), so get it here.
        """
        if self._pat is None:
            r = httpx.post(
                f"{self.url}/api/token/", headers={"Authorization": f"Token {self.token}"}
            )
            if r.status_code == 409:
                raise RuntimeError(
                    "this server's user already has a personal access token created elsewhere; "
                    "use LabelStudioServer.personal_access_token() everywhere"
                )
            r.raise_for_status()
            self._pat = str(r.json()["token"])
        return self._pat

    def log_tail(self, lines: int = 60) -> str:
        return _log_tail(self.log_path, lines)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LabelStudioServer:
        """Start (or restart, same port and data) and wait until the API answers the token."""
        if self.running:
            raise RuntimeError(f"Label Studio is already running at {self.url}")
        exe = label_studio_executable()
        if exe is None:
            raise LabelStudioStartError("no `label-studio` executable; pip install label-studio")
        cmd = [
            str(exe),
            "start",
            "--no-browser",
            "--host",
            self.url,
            "--internal-host",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        started = time.monotonic()
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server.
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(cmd)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                cmd,
                env=server_env(self.data_dir, self.database_url),
                stdin=subprocess.DEVNULL,  # LS prompts for a user when none is configured
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Token {self.token}"}
        last = "no answer yet"
        with httpx.Client(base_url=self.url, timeout=5.0) as http:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise LabelStudioStartError(
                        f"Label Studio exited with code {self.process.returncode} while starting "
                        f"at {self.url}; log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    health = http.get("/health")
                    if health.status_code == 200:
                        projects = http.get("/api/projects", headers=headers)
                        if projects.status_code == 200:
                            return
                        last = f"/api/projects -> {projects.status_code} {projects.text[:200]}"
                        if projects.status_code == 401:
                            # A template made without legacy tokens never recovers (section 2.1).
                            raise LabelStudioStartError(
                                f"Label Studio at {self.url} rejects the test token: {last}; "
                                f"delete the template dir and retry"
                            )
                    else:
                        last = f"/health -> {health.status_code}"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.25)
        raise LabelStudioStartError(
            f"Label Studio at {self.url} not ready after {timeout_s:.0f} s ({last}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM and wait for the exit, so the port and the data dir are free afterwards."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def restart(self) -> LabelStudioServer:
        self.stop()
        return self.start()


def template_dir(engine: str = "sqlite") -> Path:
    """Where the migrated template lives: LS_TEST_TEMPLATE_DIR, else a per-version temp dir
    (with a ``-postgresql`` suffix for the PostgreSQL one)."""
    suffix = "" if engine == "sqlite" else f"-{engine}"
    override = os.environ.get("LS_TEST_TEMPLATE_DIR")
    if override:
        return Path(override + suffix)
    key = hashlib.sha1(f"{USERNAME}:{TOKEN}".encode()).hexdigest()[:8]
    name = f"ls-backend-test-template-{label_studio_version()}-{key}{suffix}"
    return Path(tempfile.gettempdir()) / name


def ensure_template(
    path: Path | None = None, postgres: PostgresServer | None = None
) -> tuple[Path, float]:
    """A migrated template with the test user and token; returns (path, seconds spent
    building). With ``postgres``: a data dir plus the dump of a database migrated on that
    server (``PG_DUMP`` inside the template).

    Built once (first start runs every migration), then reused until deleted. A lock makes
    concurrent test sessions wait for one build instead of racing.
    """
    path = path or template_dir("sqlite" if postgres is None else "postgresql")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / READY_MARKER).exists():
            return path, 0.0
        started = time.monotonic()
        building = Path(tempfile.mkdtemp(prefix=f"{path.name}.build-", dir=path.parent))
        data_dir = building / "data"
        data_dir.mkdir()
        database = postgres.create_database() if postgres is not None else None
        server = LabelStudioServer(data_dir=data_dir, database_url=database)
        try:
            server.start(timeout_s=FIRST_START_TIMEOUT_S)  # its error carries the log tail
            server.stop()
            if postgres is not None and database is not None:
                postgres.dump(database, data_dir / PG_DUMP)
        except BaseException:
            server.stop()
            shutil.rmtree(building, ignore_errors=True)
            raise
        (data_dir / READY_MARKER).write_text(label_studio_version())
        shutil.rmtree(path, ignore_errors=True)
        data_dir.rename(path)  # atomic: a half-built template never looks ready
        shutil.rmtree(building, ignore_errors=True)
        return path, time.monotonic() - started


def label_studio_on(request: Any) -> LabelStudioServer:
    """In a pytest fixture parametrized over ``ENGINES``: the session's shared Label Studio of
    that engine (conftest's ``label_studio_sqlite`` or ``label_studio_postgresql``)."""
    server: LabelStudioServer = request.getfixturevalue(f"label_studio_{request.param}")
    return server


@contextlib.contextmanager
def running_server(
    template: Path, base_dir: Path, postgres: PostgresServer | None = None
) -> Iterator[LabelStudioServer]:
    """A server on a fresh copy of the template (on ``postgres``: a PostgreSQL template and a
    database copied from it), stopped (and its data kept for post-mortems)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="ls-", dir=base_dir))
    data_dir.rmdir()
    subprocess.run(["cp", "-a", str(template), str(data_dir)], check=True)
    database = None
    if postgres is not None:
        database = postgres.create_database(template=postgres.restored(template / PG_DUMP))
    server = LabelStudioServer(data_dir=data_dir, database_url=database)
    server.start()
    try:
        yield server
    finally:
        server.stop()
