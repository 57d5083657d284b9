import pytest
from fastapi.testclient import TestClient

from ls_backend.jobs import start_scheduler
from ls_backend.projects import Projects
from ls_backend.server.app import create_app
from ls_backend.settings import Settings


@pytest.fixture(scope="session")
def encoder(tmp_path_factory):
    from ls_backend.core.embeddings import Encoder
    from ls_backend.store.databases import Databases

    path = tmp_path_factory.mktemp("cache") / "embeddings.sqlite"
    return Encoder(cache=Databases.embedding_cache_at(path))


@pytest.fixture
def make_client(tmp_path, encoder):
    """A test client over a fresh MODEL_DIR, sharing the session's encoder (loaded once)."""
    clients = []

    def make(**overrides):
        settings = Settings(
            model_dir=tmp_path / "models",
            lora_enabled=False,
            train_debounce_s=0.05,
            **overrides,
        )
        projects = Projects(settings, encoder=encoder)
        client = TestClient(
            create_app(settings, projects, start_scheduler(projects)), base_url="http://localhost"
        )
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
