"""Shared fixtures: a real Label Studio server (see tests/labelstudio_server.py) and test data.

- `label_studio`: one server for the whole session (SQLite); each test makes its own project.
  A test module that must also pass on PostgreSQL overrides it with a fixture parametrized
  over `labelstudio_server.ENGINES` that returns `label_studio_on(request)`.
- `label_studio_postgresql`: the same on PostgreSQL, as the compose stack runs it.
- `fresh_label_studio`: a private server for a test that stops or restarts Label Studio.
- `make_ls_project`: creates a text-classification project on the shared server.
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin-wait on a busy CPU (2-9x slower); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import text_classification_config
from labelstudio_server import (
    LabelStudioServer,
    ensure_template,
    label_studio_executable,
    running_server,
)
from postgres_server import PostgresServer

# The shared datasets sit beside the checkout (../shared/data), in CI as on a developer machine.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
TREC_DIR = Path(os.environ.get("TREC_DIR", DATA_DIR / "trec"))


@pytest.fixture(scope="session")
def ls_template() -> Path:
    """The migrated Label Studio data dir every test server is copied from (built once)."""
    if label_studio_executable() is None:
        pytest.skip("label-studio is not installed (pip install -e '.[test]')")
    path, _built_s = ensure_template()
    return path


@pytest.fixture(scope="session")
def label_studio_sqlite(
    ls_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabelStudioServer]:
    """A running Label Studio shared by the session: `.url`, `.token`, `.client` (SDK).

    Shared state: create your own project, and do not stop it or reset its token.
    """
    with running_server(ls_template, tmp_path_factory.mktemp("label-studio")) as server:
        yield server


@pytest.fixture(scope="session")
def label_studio(label_studio_sqlite: LabelStudioServer) -> LabelStudioServer:
    """The shared Label Studio (SQLite, its default)."""
    return label_studio_sqlite


@pytest.fixture(scope="session")
def label_studio_postgresql(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabelStudioServer]:
    """`label_studio` with its data in PostgreSQL (DJANGO_DB=default, POSTGRE_*): the migrated
    database is a cached dump, restored once per PostgreSQL server and copied per Label Studio
    with CREATE DATABASE ... TEMPLATE."""
    if label_studio_executable() is None:
        pytest.skip("label-studio is not installed (pip install -e '.[test]')")
    template, _built_s = ensure_template(postgres=postgres)
    base = tmp_path_factory.mktemp("label-studio-postgresql")
    with running_server(template, base, postgres) as server:
        yield server


@pytest.fixture
def fresh_label_studio(
    ls_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabelStudioServer]:
    """A private Label Studio for this test only (about 10 s to start): it may `.stop()`,
    `.start()` or `.restart()` it (same port, same data)."""
    with running_server(ls_template, tmp_path_factory.mktemp("label-studio")) as server:
        yield server


@pytest.fixture
def make_ls_project(label_studio: LabelStudioServer) -> Callable[..., dict[str, Any]]:
    """`make_ls_project(labels, tasks=[{"text": ...}], title=...)` -> {"id", "task_ids", ...}."""
    sdk = label_studio.client
    counter = iter(range(1, 1_000_000))

    def make(
        labels: list[str],
        tasks: list[dict[str, Any]] | None = None,
        title: str | None = None,
    ) -> dict[str, Any]:
        project = sdk.projects.create(
            title=title or f"test project {next(counter)}",  # LS wants >= 3 characters
            label_config=text_classification_config(labels),
        )
        task_ids: list[int] = []
        if tasks:
            imported = sdk.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True)
            task_ids = list(imported.task_ids or [])
        return {"id": project.id, "task_ids": task_ids, "labels": labels}

    return make


@pytest.fixture(scope="session")
def trec_labels() -> list[str]:
    path = TREC_DIR / "labels.json"
    if not path.exists():
        pytest.skip(f"no TREC data at {TREC_DIR} (set TREC_DIR)")
    return list(json.loads(path.read_text())["labels"])


@pytest.fixture(scope="session")
def trec_test_rows(trec_labels: list[str]) -> list[dict[str, str]]:
    """The 500 TREC test rows: {"text", "label", "label_fine"}."""
    with open(TREC_DIR / "test.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- the store's engines: SQLite files, and a real PostgreSQL --------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh PostgreSQL database for one test, owned by an ordinary role."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def make_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """Opens a project's database on each engine: ``make_database("1")``."""
    from ls_backend.store.databases import Databases

    url = request.getfixturevalue("database_url") if request.param == "postgresql" else None
    databases = Databases(tmp_path / "models", url)
    yield databases.project
    databases.close()


@pytest.fixture(autouse=True)
def _store_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """TEST_DATABASE=postgresql: every backend the test makes (in-process or a server it
    starts) keeps its stores in a fresh PostgreSQL database (scripts/test's second pass)."""
    if os.environ.get("TEST_DATABASE") == "postgresql":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("database_url"))
