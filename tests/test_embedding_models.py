"""Another embedding model end to end (EMBEDDING_MODEL and LORA_BACKBONE set to an MPNet, the
architecture of all-mpnet-base-v2, here tiny and random): the three runtimes embed with it, a
project predicts, trains its head and a LoRA adapter on it (MPNet's projections are `q`/`v`),
ranks its tasks as a sync does, and the bench embeds with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fakes import annotation_event
from sentence_transformers import SentenceTransformer, models
from transformers import AutoTokenizer, MPNetConfig, MPNetModel

from ls_backend.core.embeddings import Encoder, resolve_model_path
from ls_backend.jobs import lanes_for
from ls_backend.jobs.lanes import run_once
from ls_backend.labelstudio.sync import TaskPool, rank_front
from ls_backend.projects import Projects
from ls_backend.settings import Settings

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"""
WORDS = {"A": "great", "B": "awful"}
DIM = 32


def save_tiny_mpnet(path: Path) -> str:
    """A 2-layer, 32-wide random MPNet as a sentence-transformers folder (mean pooling, L2
    norm), with the embedded model's tokenizer made to give MPNet's inputs (no token types)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded"))
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
    )
    raw = path / "raw"
    MPNetModel(config, add_pooling_layer=False).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=64)
    modules = [transformer, models.Pooling(DIM, "mean"), models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(path / "st"))
    return str(path / "st")


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_the_cpu_runtimes_embed_an_mpnet_as_torch_does(mpnet, runtime, tmp_path):
    texts = ["a short one", "a somewhat longer text about the weather in the mountains"]
    reference = Encoder(mpnet, runtime="torch").encode(texts)
    vectors = Encoder(mpnet, runtime=runtime, export_dir=tmp_path).encode(texts)
    assert vectors.shape == (2, DIM)
    cosine = (reference * vectors).sum(axis=1)
    assert cosine.min() > 0.99


def test_a_project_on_mpnet_predicts_trains_head_and_adapter_and_ranks(mpnet, tmp_path):
    settings = Settings(
        model_dir=tmp_path,
        embedding_model=mpnet,
        embedding_backend="torch",
        lora_backbone=mpnet,
        lora_min_labels=30,
        lora_every=30,
        lora_epochs=2,
        lora_min_steps=0,
        max_length=16,
        device="cpu",
    )
    projects = Projects(settings)
    assert projects.encoder.dim == DIM
    project = projects.project(1)
    project.setup(CONFIG)
    for i in range(40):
        label = "AB"[i % 2]
        event = annotation_event(
            i, 100 + i, [label], text=f"{WORDS[label]} film {i}", config=CONFIG
        )
        project.store.apply(event)
    unlabeled = [(500 + i, {"text": f"{WORDS['AB'[i % 2]]} show {i}"}, False) for i in range(30)]
    project.store.replace_tasks(
        [(100 + i, {"text": f"{WORDS['AB'[i % 2]]} film {i}"}, True) for i in range(40)] + unlabeled
    )
    lanes = lanes_for(projects)
    for lane in ("head", "lora"):
        status = run_once(project, lanes[lane])
        assert status.state == "done", status.last_error
        assert status.last_result["version"].endswith(f"-{lane}")
    adapter = project.registry.path(status.last_result["version"]) / "lora"
    assert sorted(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == [
        "q",
        "v",
    ]
    batch = project.predict([{"id": 9, "data": {"text": "great film"}}])
    assert batch.results[0]["result"][0]["value"]["choices"][0] in ("A", "B")

    # What a sync does with the serving model: embed the mirror's tasks, rank the unlabeled.
    pool = TaskPool(projects.encoder.dim)
    labeled, waiting = pool.refresh(
        project.store, project.config(), projects.encoder, projects.pacer
    )
    assert waiting == 0 and pool.embeddings.shape == (70, DIM)
    front = rank_front(project.model(), project.config(), pool, labeled, settings)
    assert len(front.tasks) == 30 and set(front.tasks) <= {500 + i for i in range(30)}


def test_the_bench_embeds_with_embedding_model(mpnet, tmp_path, monkeypatch):
    from ls_backend.bench import cli

    seen: dict[str, object] = {}

    def load_data(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise SystemExit("stop here")

    monkeypatch.setenv("EMBEDDING_MODEL", mpnet)
    monkeypatch.setattr(cli, "load_data", load_data)
    train = tmp_path / "t.jsonl"
    train.write_text('{"text": "x", "label": "a"}\n')
    with pytest.raises(SystemExit, match="stop here"):
        cli.run_bench(cli.BenchOptions(train=train, test=train, out=tmp_path / "o"))
    assert seen["model"] == mpnet
