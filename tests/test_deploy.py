"""What can be checked of the Docker set-up without a Docker engine."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint():
    hadolint = str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install -e '.[test]')")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_installs_and_starts_with_the_readme_commands():
    dockerfile = (ROOT / "Dockerfile").read_text()
    serve = (ROOT / "scripts" / "serve").read_text()
    # The image runs the same install script as `scripts/serve` and CI, then the same command.
    assert re.search(r"^RUN .*scripts/install", dockerfile, flags=re.M)
    assert "scripts/install" in serve and "ls-backend serve" in serve
    assert 'CMD [".venv/bin/ls-backend", "serve"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert "MODEL_DIR=/data" in dockerfile and 'VOLUME ["/data"]' in dockerfile
    assert "scripts/install" in (ROOT / "scripts" / "test").read_text()


def test_compose_wires_label_studio_and_the_backend():
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    studio, backend = compose["services"]["label-studio"], compose["services"]["ls-backend"]
    assert studio["image"].startswith("heartexlabs/label-studio:1.23")
    assert backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    # One token: Label Studio creates the user with it, the backend calls back with it.
    assert "LABEL_STUDIO_API_KEY" in studio["environment"]["LABEL_STUDIO_USER_TOKEN"]
    assert "LABEL_STUDIO_API_KEY" in backend["environment"]["LABEL_STUDIO_API_KEY"]
    assert studio["environment"]["ML_BLOCK_LOCAL_IP"] == "false"
    assert studio["environment"]["SSRF_PROTECTION_ENABLED"] == "false"
    for service in (studio, backend):
        (volume,) = service["volumes"]
        assert volume.split(":")[0] in compose["volumes"]  # persistent, named volumes
    assert backend["volumes"][0].endswith(":/data")
    assert backend["build"]["context"] == ".."
    # It holds the admin's token: auth is required and the port is the host's loopback only.
    assert all(port.startswith("127.0.0.1:") for port in backend["ports"])
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "LABEL_STUDIO_API_KEY"):
        assert ":?" in backend["environment"][name], name


def test_the_example_env_holds_no_usable_secret():
    values = dict(
        line.split("=", 1)
        for line in (ROOT / "docker" / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    for name in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_PASSWORD", "BASIC_AUTH_PASS"):
        assert values[name] == "", name  # compose refuses to start until one is chosen


def test_compose_file_validates_with_docker_compose(tmp_path):
    """`docker-compose config` (Debian's docker-compose) where installed; no engine needed."""
    import shutil

    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env_file = tmp_path / ".env"
    env_file.write_text(
        (ROOT / "docker" / ".env.example").read_text()
        + "LABEL_STUDIO_PASSWORD=pw-for-the-test\nLABEL_STUDIO_API_KEY="
        + "ab" * 20
        + "\nBASIC_AUTH_PASS=pw-for-the-test\n"
    )
    result = subprocess.run(
        [
            compose,
            "-f",
            str(ROOT / "docker" / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            "config",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "http://label-studio:8080" in result.stdout


def test_the_scale_out_compose_shares_one_volume_one_database_server_and_redis(tmp_path):
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.scale.yml").read_text())
    services = compose["services"]
    backends = {name: s for name, s in services.items() if s.get("image") == "ls-backend:latest"}
    assert set(backends) == {"ls-backend", "worker-cpu", "worker-gpu"}
    assert services["ls-backend"]["deploy"]["replicas"] == 2
    for service in backends.values():  # one MODEL_DIR, one database, one Redis for all
        assert service["volumes"] == ["ls-backend-models:/data"]
        assert "@postgres:5432/ls_backend" in service["environment"]["DATABASE_URL"]
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert services["worker-gpu"]["command"][-2:] == ["--queues", "lora"]
    (gpu,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia"
    assert services["worker-cpu"]["command"][-2:] == ["--queues", "head,sync"]
    studio = services["label-studio"]["environment"]
    assert studio["POSTGRE_HOST"] == "postgres" and studio["POSTGRE_NAME"] != "ls_backend"
    assert "label_studio" in (ROOT / "docker" / "postgres-init.sql").read_text()

    import shutil

    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        return  # validated above by shape; `config` where docker-compose is installed
    env_file = tmp_path / ".env"
    env_file.write_text(
        (ROOT / "docker" / ".env.example").read_text()
        + "LABEL_STUDIO_PASSWORD=pw\nLABEL_STUDIO_API_KEY="
        + "ab" * 20
        + "\nBASIC_AUTH_PASS=pw\nPOSTGRES_PASSWORD=pw\n"
    )
    scale = str(ROOT / "docker" / "docker-compose.scale.yml")
    result = subprocess.run(
        [docker_compose, "-f", scale, "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
