"""The CPU runtimes embed like torch, export once, keep their vectors apart, and fail clearly."""

import sys

import numpy as np
import pytest
from fakes import DictCache

from ls_backend.core import runtimes
from ls_backend.core.embeddings import Encoder, text_key

TEXTS = [
    "What is the capital of France ?",
    "a man is eating food",
    "",
    "Ünïcödé, emoji 🙂 and punctuation?!",
    # Longer than MAX_LENGTH (128) tokens: truncation must cut where torch cuts.
    "The stock market fell sharply after the announcement of new tariffs. " * 30,
    *(f"question number {i} about topic {i * 7 % 13}" for i in range(70)),  # > one batch
]
#: Cosine to torch, at least: onnx is the same fp32 graph (measured 1 - 1e-7); openvino in
#: bf16 (this CPU has AMX) measured >= 0.99996.
BOUNDS = {"onnx": 0.9999, "openvino": 0.999}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def reference():
    return Encoder(runtime="torch").encode(TEXTS)


@pytest.mark.parametrize("runtime", sorted(BOUNDS))
def test_onnx_embeds_the_same_texts_to_the_same_vectors_as_torch(runtime, export_dir, reference):
    vectors = Encoder(runtime=runtime, export_dir=export_dir).encode(TEXTS)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float((vectors * reference).sum(axis=1).min()) >= BOUNDS[runtime]


def test_the_export_is_made_once_and_reused(export_dir, monkeypatch):
    Encoder(runtime="onnx", export_dir=export_dir)

    def export(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(runtimes, "export_onnx", export)
    assert Encoder(runtime="onnx", export_dir=export_dir).encode(["reused"]).shape == (1, 384)


def test_vectors_of_two_runtimes_never_share_a_cache_entry(export_dir):
    cache = DictCache()
    planted = np.zeros(384, dtype=np.float32)
    cache.put_many(Encoder().cache_key, {text_key("one text"): planted})
    openvino = Encoder(cache=cache, runtime="openvino", export_dir=export_dir)
    assert openvino.runtime.variant in {"openvino-bf16", "openvino-f32"}
    vector = openvino.encode(["one text"])[0]
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4  # computed, not torch's entry


@pytest.mark.parametrize(
    ("runtime", "package"), [("onnx", "onnxruntime"), ("openvino", "openvino")]
)
def test_a_missing_package_is_named_at_start(runtime, package, monkeypatch, export_dir):
    monkeypatch.setitem(sys.modules, package, None)  # import fails
    with pytest.raises(RuntimeError, match=f"EMBEDDING_BACKEND={runtime} .* pip install {package}"):
        Encoder(runtime=runtime, export_dir=export_dir)


def test_a_changed_model_or_max_length_gets_its_own_export(tmp_path, monkeypatch):
    """The export is keyed by the model's files and MAX_LENGTH, not by its path: a model
    replaced at the same path, or another MAX_LENGTH, must not reuse a stale export."""
    import json
    import shutil
    from pathlib import Path

    from ls_backend.core.embeddings import resolve_model_path

    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(Path(resolve_model_path("embedded")) / "tokenizer.json", model)
    (model / "model.safetensors").write_bytes(b"weights one")
    made = []

    def export(path, folder, max_length):
        made.append((path, max_length))
        shutil.copy(Path(path) / "tokenizer.json", folder)
        meta = {"inputs": ["input_ids"], "dim": 4, "pad_id": 0, "pad_token": "[PAD]"}
        (folder / "meta.json").write_text(json.dumps(meta))

    monkeypatch.setattr(runtimes, "export_onnx", export)

    def folder(max_length=128):
        return runtimes.Exported(str(model), max_length, 8, tmp_path / "onnx", "onnx").folder

    first = folder()
    assert folder() == first and len(made) == 1  # same files, same length: reused
    (model / "model.safetensors").write_bytes(b"weights two")  # new weights, same size
    runtimes._digest.cache_clear()  # as in the next process (a file's stamp may not move)
    second = folder()
    assert second != first and len(made) == 2
    assert folder(256) not in {first, second} and made[-1] == (str(model), 256)
    assert folder() == second and len(made) == 3
