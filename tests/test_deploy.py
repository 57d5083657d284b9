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


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.scale.yml"])
def test_label_studio_connects_through_a_dotted_alias(name):
    """Label Studio makes no webhook for a URL whose host has no dot (its URLField validator),
    so the documented URL is a network alias with one."""
    text = (ROOT / "docker" / name).read_text()
    backend = yaml.safe_load(text)["services"]["ls-backend"]
    assert backend["networks"]["default"]["aliases"] == ["ls-backend.internal"]
    urls = set(re.findall(r"http://ls-backend[\w.]*:9090", text))
    urls |= set(re.findall(r"http://ls-backend[\w.]*:9090", (ROOT / "README.md").read_text()))
    assert urls == {"http://ls-backend.internal:9090"}


def test_secrets_stay_out_of_git_and_of_the_image():
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT, capture_output=True
    )
    assert ignored.returncode == 0, "docker/.env is not ignored by git"
    assert "**/.env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_a_source_edit_keeps_the_dependency_layer():
    """Dependencies install from pyproject.toml alone; the source is copied after them."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    install = next(i for i, line in enumerate(lines) if re.match(r"RUN .*scripts/install", line))
    copies = [line.split()[1] for line in lines[:install] if line.startswith("COPY")]
    assert copies == ["pyproject.toml", "scripts/install"]
    assert any(line.startswith("COPY ls_backend") for line in lines[install:])


def test_the_package_declares_its_license_as_an_spdx_expression():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in pyproject["build-system"]["requires"]


def test_the_example_env_holds_no_usable_secret():
    values = dict(
        line.split("=", 1)
        for line in (ROOT / "docker" / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    secrets = ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_PASSWORD", "BASIC_AUTH_PASS")
    for name in (*secrets, "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
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
    # Two replicas with compose v2 and v1 alike (v1 reads deploy.replicas only with
    # --compatibility, and refuses a file with both).
    assert services["ls-backend"]["scale"] == 2 and "deploy" not in services["ls-backend"]
    redis_password = "${REDIS_PASSWORD:?set it in docker/.env}"
    assert services["redis"]["command"][-2:] == ["--requirepass", redis_password]
    for service in backends.values():  # one MODEL_DIR, one database, one Redis for all
        assert service["volumes"] == ["ls-backend-models:/data"]
        assert "@postgres:5432/ls_backend" in service["environment"]["DATABASE_URL"]
        assert service["environment"]["REDIS_URL"] == f"redis://:{redis_password}@redis:6379/0"
    assert services["worker-gpu"]["command"][-2:] == ["--queues", "lora"]
    (gpu,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia"
    # Without NVIDIA the stack still starts: the GPU worker only comes with --profile gpu.
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["command"][-2:] == ["--queues", "head,sync"]
    for name in ("worker-cpu", "worker-gpu"):  # they serve no HTTP: no /health check
        assert services[name]["healthcheck"] == {"disable": True}
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
        + "\nBASIC_AUTH_PASS=pw\nPOSTGRES_PASSWORD=pw\nREDIS_PASSWORD=pw\n"
    )
    scale = str(ROOT / "docker" / "docker-compose.scale.yml")
    result = subprocess.run(
        [docker_compose, "-f", scale, "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
