import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from ls_backend.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_readme_table_with_its_default():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \|\s*`?([^`|]*?)`?\s*\|", readme, flags=re.M))
    for name, field in Settings.model_fields.items():
        assert name.upper() in rows, f"{name.upper()} missing from the README's environment table"
        default = field.default
        if default is None:
            assert rows[name.upper()].strip() == ""
        else:
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert rows[name.upper()] == shown, name
    assert set(rows) <= {n.upper() for n in Settings.model_fields}, "README lists unknown settings"


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-token")
    settings = Settings()
    assert settings.workers == 3
    assert "secret-token" not in repr(settings)  # the key never lands in a log line


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in readme and "scripts/test" in ci


def test_basic_auth_with_only_one_of_its_two_variables_is_a_start_up_error():
    for half in ({"basic_auth_user": "admin"}, {"basic_auth_pass": "s3cret"}):
        with pytest.raises(ValidationError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
            Settings(**half)
    assert Settings(basic_auth_user="admin", basic_auth_pass="s3cret").auth_enabled
    assert not Settings().auth_enabled


def test_auto_picks_openvino_on_a_cpu_and_keeps_torch_on_cuda():
    assert Settings(device="cpu").resolved_embedding_backend() == "openvino"
    assert Settings(device="cuda").resolved_embedding_backend() == "torch"
    assert Settings(device="cuda", embedding_backend="onnx").resolved_embedding_backend() == "onnx"


SECRETS = {  # every setting that holds a credential, each with a value to look for
    "BASIC_AUTH_PASS": "pass-8d1f0c",
    "LABEL_STUDIO_API_KEY": "key-5e2b7a",
    "DATABASE_URL": "postgresql://app:db-3c9e41@db/app",
    "REDIS_URL": "redis://:redis-77f0aa@redis:6379/0",
}
MARKS = ("pass-8d1f0c", "key-5e2b7a", "db-3c9e41", "redis-77f0aa")


@pytest.mark.parametrize(
    "broken",
    [
        {"BASIC_AUTH_USER": "admin", "BASIC_AUTH_PASS": None},  # half-set auth: user only
        {"BASIC_AUTH_USER": None},  # half-set auth: password only
        {"BASIC_AUTH_USER": "admin", "WORKERS": "0"},  # any other bad value
        {"BASIC_AUTH_USER": "admin", "STRATEGY": "nope"},
    ],
)
def test_a_start_error_names_the_problem_but_no_secret(monkeypatch, broken):
    from ls_backend import cli
    from ls_backend.settings import get_settings

    for name, value in {**SECRETS, **broken}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    shown = [str(raised.value), repr(raised.value), raised.value.json()]
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as stopped:  # what `ls-backend serve` prints, and exits with
        cli.main(["serve"])
    get_settings.cache_clear()
    shown.append(str(stopped.value.code))
    assert "BASIC_AUTH_USER" in shown[-1] or "WORKERS" in shown[-1] or "STRATEGY" in shown[-1]
    assert "Traceback" not in shown[-1]
    for text in shown:
        assert not [mark for mark in MARKS if mark in text], text


def test_no_secret_is_in_the_settings_repr(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BASIC_AUTH_USER", "admin")
    shown = repr(Settings())
    assert not [mark for mark in MARKS if mark in shown]
