"""Embedding runtimes: the forward pass behind ``Encoder``, registered by name in ``RUNTIMES``.

- ``torch``: sentence-transformers on torch, on any device; the reference the others match.
- ``onnx``: the same model exported once with ``torch.onnx`` (transformer, pooling and L2
  norm in one graph) and run by ONNX Runtime on the CPU, tokenized by ``tokenizers``.
- ``openvino``: that export run by OpenVINO on the CPU, in bf16 where the CPU computes bf16
  natively (AMX, AVX512-BF16: cosine to torch >= 0.9999, 3-4x the throughput), else fp32.

int8 (ONNX Runtime dynamic quantization) was measured and left out: 2x the throughput, but
zero-shot accuracy fell up to 6 points (benchmarks/RESULTS.md, "Embedding runtimes").

The export is written atomically to ``<export_dir>/<model>-<weights>-<max length>/`` at first
use, from the local model (no hub): keyed by a hash of the model's files and by MAX_LENGTH, so
a model replaced at the same path, or another MAX_LENGTH, never reuses a stale export. The
folder is safe to delete (the next start exports again).
sentence-transformers' own ``backend="onnx"`` is not used: it goes through optimum, whose
ONNX support requires transformers < 4.58.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.files import write_dir_atomic
from ls_backend.core.labels import Embeddings

#: Inputs a BERT-like tokenizer may produce, in the order the exported graph takes them.
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Runtime(Protocol):
    dim: int
    variant: str  # what the vectors depend on besides the model (runtime, precision)

    def forward(self, texts: list[str]) -> Embeddings:
        """L2-normalized float32 embeddings ``[N, dim]``, in the order of ``texts``."""
        ...


#: (model path, max tokens, batch size, device, export folder) -> a loaded runtime.
RuntimeFactory = Callable[[str, int, int, "str | None", "Path | None"], Runtime]


def require(module: str, runtime: str) -> Any:
    """Import an optional dependency, or fail at start-up naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise RuntimeError(
            f"EMBEDDING_BACKEND={runtime} needs the Python package {package!r}: "
            f"pip install {package}"
        ) from error


class TorchRuntime:
    variant = "torch"

    def __init__(
        self, path: str, max_length: int, batch_size: int, device: str | None, _: Path | None
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.batch_size = batch_size
        self.model: Any = SentenceTransformer(path, device=device)
        self.model.max_seq_length = max_length
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"{path}: the model does not report an embedding size")
        self.dim: int = dim

    def forward(self, texts: list[str]) -> Embeddings:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def export_onnx(path: str, folder: Path, max_length: int) -> None:
    """Write ``model.onnx``, ``tokenizer.json`` and ``meta.json`` for the model at ``path``."""
    import torch
    from sentence_transformers import SentenceTransformer

    # Eager attention traces to plain ops; SDPA's fused kernel does not export everywhere.
    model = SentenceTransformer(
        path, device="cpu", model_kwargs={"attn_implementation": "eager"}
    ).eval()
    sample = model.tokenize(["a sentence to trace the graph with", "short"])
    names = [name for name in _INPUTS if name in sample]

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            features = dict(zip(names, inputs, strict=True))
            embedding = self.model(features)["sentence_embedding"]
            return torch.nn.functional.normalize(embedding, dim=-1)

    graph = folder / "model.onnx"
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with torch.no_grad():
        torch.onnx.export(
            Pipeline(),
            tuple(sample[name] for name in names),
            str(graph),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    tokenizer = model.tokenizer
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    import onnx

    # The graph keeps only the inputs the model reads (an MPNet ignores token types that a
    # BERT tokenizer still gives): feed those.
    kept = {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}
    meta = {
        "source": path,
        "weights": model_digest(path),
        "max_length": max_length,
        "inputs": [name for name in names if name in kept],
        "dim": model.get_embedding_dimension(),
        "pad_id": tokenizer.pad_token_id,
        "pad_token": tokenizer.pad_token,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _model_root(path: str) -> Path | None:
    """The folder holding the model's files: ``path`` itself, or a Hugging Face id's snapshot
    in the local cache (None when it is in neither)."""
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # not a hub id, or not cached: the hub is never asked
        return None


def model_digest(path: str) -> str:
    """A hash of the model's files (names and contents; hidden files left out): another model
    at the same path has another digest. Hashed once per process while no file changes."""
    root = _model_root(path)
    if root is None:
        return "name-" + hashlib.blake2b(path.encode(), digest_size=8).hexdigest()
    files = sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)
    )
    stamp = tuple((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _digest(root, stamp)


@lru_cache(maxsize=8)
def _digest(root: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for name, size, _mtime in stamp:
        digest.update(f"{name}\0{size}\0".encode())
        with (root / name).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def export_folder(export_dir: Path, path: str, max_length: int) -> Path:
    """Where the export of the model at ``path`` for ``max_length`` tokens lives: a readable
    name, the hash of the model's files and the length."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).name)[:60]
    return export_dir / f"{name}-{model_digest(path)}-{max_length}"


class Exported:
    """The ONNX export of a model, tokenized with ``tokenizers``; subclasses run the graph."""

    def __init__(
        self, path: str, max_length: int, batch_size: int, export_dir: Path | None, name: str
    ) -> None:
        from tokenizers import Tokenizer

        if export_dir is None:
            raise ValueError(f"the {name} runtime needs a folder to keep its export in")
        self.folder = export_folder(export_dir, path, max_length)
        if not (self.folder / "meta.json").is_file():
            require("onnx", name)  # torch.onnx.export writes through it
            write_dir_atomic(self.folder, lambda tmp: export_onnx(path, tmp, max_length))
        meta = json.loads((self.folder / "meta.json").read_text())
        self.dim: int = int(meta["dim"])
        self.inputs: list[str] = list(meta["inputs"])
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=meta["pad_id"], pad_token=meta["pad_token"])

    def infer(self, feeds: dict[str, NDArray[np.int64]]) -> Embeddings:
        raise NotImplementedError

    def forward(self, texts: list[str]) -> Embeddings:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Texts of similar length share a batch: less padding to compute.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            encodings = self.tokenizer.encode_batch([texts[i] for i in rows])
            columns = {
                "input_ids": [e.ids for e in encodings],
                "attention_mask": [e.attention_mask for e in encodings],
                "token_type_ids": [e.type_ids for e in encodings],
            }
            feeds = {name: np.asarray(columns[name], dtype=np.int64) for name in self.inputs}
            out[rows] = self.infer(feeds)
        return out


class OnnxRuntime(Exported):
    """ONNX Runtime on the CPU, fp32: the same numbers as torch."""

    variant = "onnx"

    def __init__(
        self, path: str, max_length: int, batch_size: int, _: str | None, export_dir: Path | None
    ) -> None:
        ort = require("onnxruntime", "onnx")
        super().__init__(path, max_length, batch_size, export_dir, "onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        # Idle threads sleep instead of spinning: Label Studio and training need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def infer(self, feeds: dict[str, NDArray[np.int64]]) -> Embeddings:
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)


class OpenVinoRuntime(Exported):
    """OpenVINO on the CPU: bf16 where the CPU computes it natively (AMX, AVX512-BF16), else
    fp32; the precision is part of ``variant``, so the cache never mixes the two."""

    def __init__(
        self, path: str, max_length: int, batch_size: int, _: str | None, export_dir: Path | None
    ) -> None:
        ov = require("openvino", "openvino")
        super().__init__(path, max_length, batch_size, export_dir, "openvino")
        compiled = ov.Core().compile_model(
            str(self.folder / "model.onnx"), "CPU", {"PERFORMANCE_HINT": "LATENCY"}
        )
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.variant = f"openvino-{precision}"
        self.request = compiled.create_infer_request()

    def infer(self, feeds: dict[str, NDArray[np.int64]]) -> Embeddings:
        return np.asarray(self.request.infer(feeds)[0], dtype=np.float32)


RUNTIMES: dict[str, RuntimeFactory] = {
    "torch": TorchRuntime,
    "onnx": OnnxRuntime,
    "openvino": OpenVinoRuntime,
}
