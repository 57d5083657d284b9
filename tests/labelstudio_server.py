"""Run a real Label Studio server for integration tests.

Migrating a fresh Label Studio data dir takes about a minute, so one *template* dir is migrated
once (and cached across test sessions, keyed by the Label Studio version and the test user);
each server then starts on a `cp -a` copy of it in about 10 s. See LABEL_STUDIO.md, section 2.
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
from typing import TYPE_CHECKING

import httpx

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


def server_env(data_dir: Path) -> dict[str, str]:
    """The environment of section 2, without Label Studio settings leaking in from ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LABEL_STUDIO_", "HEARTEX_", "DJANGO_"))
    }
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "DJANGO_DB": "sqlite",
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
    """One `label-studio start` process on its own data dir and port."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    token: str = TOKEN
    process: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0
    _pat: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
                env=server_env(self.data_dir),
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


def template_dir() -> Path:
    """Where the migrated template lives: LS_TEST_TEMPLATE_DIR, else a per-version temp dir."""
    override = os.environ.get("LS_TEST_TEMPLATE_DIR")
    if override:
        return Path(override)
    key = hashlib.sha1(f"{USERNAME}:{TOKEN}".encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"ls-backend-test-template-{label_studio_version()}-{key}"


def ensure_template(path: Path | None = None) -> tuple[Path, float]:
    """A migrated data dir with the test user and token; returns (path, seconds spent building).

    Built once (first start runs every migration), then reused until deleted. A lock makes
    concurrent test sessions wait for one build instead of racing.
    """
    path = path or template_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / READY_MARKER).exists():
            return path, 0.0
        started = time.monotonic()
        building = Path(tempfile.mkdtemp(prefix=f"{path.name}.build-", dir=path.parent))
        data_dir = building / "data"
        data_dir.mkdir()
        server = LabelStudioServer(data_dir=data_dir)
        try:
            server.start(timeout_s=FIRST_START_TIMEOUT_S)  # its error carries the log tail
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        finally:
            server.stop()
        (data_dir / READY_MARKER).write_text(label_studio_version())
        shutil.rmtree(path, ignore_errors=True)
        data_dir.rename(path)  # atomic: a half-built template never looks ready
        shutil.rmtree(building, ignore_errors=True)
        return path, time.monotonic() - started


@contextlib.contextmanager
def running_server(template: Path, base_dir: Path) -> Iterator[LabelStudioServer]:
    """A server on a fresh copy of the template, stopped (and its data kept for post-mortems)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="ls-", dir=base_dir))
    data_dir.rmdir()
    subprocess.run(["cp", "-a", str(template), str(data_dir)], check=True)
    server = LabelStudioServer(data_dir=data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
