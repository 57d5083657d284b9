"""`ls-backend finetune`: a project's labels (in this process, or as a job on the LoRA queue with
REDIS_URL) or a dataset file, into a model folder that ``pipeline(...)`` loads, and a version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import HashEncoder, annotation_event
from redis_server import RedisServer
from transformers import pipeline

from ls_backend import cli
from ls_backend.projects import Projects
from ls_backend.settings import Settings, get_settings

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""
WORDS = {"A": "great", "B": "awful"}
TINY = ["--epochs", "5", "--max-length", "16", "--batch-size", "4", "--lr", "0.02"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    from core.test_lora import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def env_for(model_dir: Path, backbone: str) -> dict[str, str]:
    return {
        "MODEL_DIR": str(model_dir),
        "LORA_BACKBONE": backbone,
        "LORA_MIN_STEPS": "0",
        "LORA_ENABLED": "false",
        "DEVICE": "cpu",
        "EMBEDDING_BACKEND": "torch",
    }


def labeled_project(model_dir: Path, n: int, project: int = 5) -> None:
    """A connected project with ``n`` labels, stored as the webhook stores them."""
    projects = Projects(Settings(model_dir=model_dir), encoder=HashEncoder())  # no lanes
    state = projects.project(project)
    for i in range(n):
        label = "AB"[i % 2]
        text = f"{WORDS[label]} film {i}"
        state.store.apply(annotation_event(i, 100 + i, [label], text=text, config=CONFIG))
    state.setup(CONFIG)  # zero-shot serves
    state.connect()


@pytest.fixture
def settings_env(tmp_path, backbone, monkeypatch):
    for key, value in env_for(tmp_path / "models", backbone).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("ls_backend.projects.Encoder", lambda *_a, **_k: HashEncoder())
    get_settings.cache_clear()
    yield tmp_path / "models"
    get_settings.cache_clear()


def finetune(capsys, *args: str) -> dict:
    cli.main(["finetune", *args])
    return json.loads(capsys.readouterr().out)


def test_a_projects_labels_become_a_model_folder_and_a_registered_version(
    settings_env, tmp_path, capsys
):
    labeled_project(settings_env, 60)
    out = tmp_path / "final"
    result = finetune(capsys, "--project", "5", "--register", "--out", str(out), *TINY)
    assert result["out"] == str(out) and result["evaluation"] == "held-out"
    assert result["labels"] == 60 and result["promoted"], result  # beats zero-shot clearly
    label = pipeline("text-classification", model=str(out))("great film 99")[0]["label"]
    assert label in ("A", "B")
    card = (out / "README.md").read_text()
    assert "project: 5" in card and "| 0 | A | 30 |" in card
    project = Projects(get_settings(), encoder=HashEncoder()).project(5)
    version = result["version"]
    assert project.registry.current() == version and version.endswith("-lora")
    assert project.registry.info(version)["finetune"]["out"] == str(out)
    # It serves /predict like any adapter version, the head beside it.
    batch = project.predict([{"id": 1, "data": {"text": "awful film"}}])
    assert batch.model_version == version and batch.results[0]["result"]


def test_bad_input_is_a_clear_error_and_writes_nothing(settings_env, tmp_path, capsys):
    labeled_project(settings_env, 4)
    out = tmp_path / "final"
    with pytest.raises(SystemExit, match="finetune: too few labels per class"):
        cli.main(["finetune", "--project", "5", "--out", str(out), *TINY])
    with pytest.raises(SystemExit, match="unknown backbone 'nobody/nothing'"):
        cli.main(["finetune", "--project", "5", "--backbone", "nobody/nothing", "--out", str(out)])
    with pytest.raises(SystemExit, match="project 77 is unknown"):
        cli.main(["finetune", "--project", "77", "--out", str(out)])
    with pytest.raises(SystemExit, match="--register needs the held-out evaluation"):
        cli.main(["finetune", "--project", "5", "--register", "--min-per-class", "1", *TINY])
    assert not out.exists()


def test_a_project_with_several_controls_is_refused_clearly(settings_env, tmp_path, capsys):
    several = CONFIG.replace(
        "</View>", '<Labels name="ents" toName="text"><Label value="X"/></Labels></View>'
    )
    projects = Projects(Settings(model_dir=settings_env), encoder=HashEncoder())
    state = projects.project(5)
    state.setup(several)
    state.connect()
    with pytest.raises(SystemExit, match="multi project: finetune trains classifiers"):
        cli.main(["finetune", "--project", "5", "--out", str(tmp_path / "final"), *TINY])


def test_a_dataset_file_fine_tunes_and_scores_its_test_file(settings_env, tmp_path, capsys):
    rows = [{"text": f"{WORDS[x]} film {i}", "label": x} for i, x in enumerate("AB" * 6)]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows))
    test.write_text("\n".join(json.dumps(r) for r in rows[:4]))
    out = tmp_path / "final"
    result = finetune(
        capsys, "--train", str(train), "--test", str(test), "--out", str(out), "--method",
        "full", "--lr", "0.001", *TINY[:6],
    )  # fmt: skip
    assert result["evaluation"] == "k-fold" and result["test"]["n"] == 4
    record = json.loads((out / "finetune.json").read_text())
    assert record["method"]["name"] == "full" and record["data"]["train"] == str(train)


def test_with_redis_it_runs_as_a_job_on_the_lora_queue(
    settings_env, tmp_path, backbone, capsys, monkeypatch
):
    from jobs.test_rq import Workers

    redis = RedisServer(tmp_path / "redis").start()
    workers = Workers(tmp_path, redis.url, env_for(settings_env, backbone))
    try:
        labeled_project(settings_env, 40)
        monkeypatch.setenv("REDIS_URL", redis.url)
        get_settings.cache_clear()
        workers.start("lora")  # a GPU box's worker: it takes LoRA rounds and fine-tunes
        out = tmp_path / "final"
        cli.main(["finetune", "--project", "5", "--out", str(out), *TINY])
        printed = capsys.readouterr()
        assert "queued as job" in printed.err and "on ls-backend:lora" in printed.err
        assert json.loads(printed.out)["out"] == str(out)
        assert (out / "onnx" / "model.onnx").is_file()
        # An error on the worker comes back as the command's error.
        with pytest.raises(SystemExit, match="failed: .*FinetuneError: .*exists"):
            cli.main(["finetune", "--project", "5", "--out", str(out), *TINY])
    finally:
        workers.stop()
        redis.stop()
