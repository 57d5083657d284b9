"""Schemathesis against the app's own OpenAPI description: no input gives a 5xx."""

import schemathesis
from fakes import HashEncoder
from hypothesis import HealthCheck, settings

from ls_backend.projects import Projects
from ls_backend.server.app import create_app
from ls_backend.settings import Settings


def make_app():
    import tempfile
    from pathlib import Path

    config = Settings(
        model_dir=Path(tempfile.mkdtemp()) / "models",
        lora_enabled=False,
        allowed_hosts="testserver",  # the name the ASGI test client sends
    )
    return create_app(config, Projects(config, encoder=HashEncoder()))


schema = schemathesis.openapi.from_asgi("/openapi.json", make_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gives_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    )
