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
