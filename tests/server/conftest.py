import pytest
from fastapi.testclient import TestClient

from ls_backend.server.app import create_app
from ls_backend.service import Backend
from ls_backend.settings import Settings
from ls_backend.worker import Worker


@pytest.fixture(scope="session")
def encoder(tmp_path_factory):
    from ls_backend.core.embeddings import Encoder

    return Encoder(cache=tmp_path_factory.mktemp("cache") / "embeddings.sqlite")


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
        backend = Backend(settings, encoder=encoder)
        Worker(backend)
        client = TestClient(create_app(settings, backend))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
