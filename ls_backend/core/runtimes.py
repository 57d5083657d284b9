"""Embedding runtimes: the forward pass behind ``Encoder``, registered by name in ``RUNTIMES``.

- ``torch``: sentence-transformers on torch, on any device; the reference the others match.
- ``onnx``: the same model exported once with ``torch.onnx`` (transformer, pooling and L2
  norm in one graph) and run by ONNX Runtime on the CPU, tokenized by ``tokenizers``.
- ``onnx-int8``: that export with its weights quantized to int8 (dynamic quantization).

Exports are written atomically to ``<export_dir>/<model>-<variant>/`` at first use, from the
local model (no hub); the folder is safe to delete (the next start exports again).
sentence-transformers' own ``backend="onnx"`` is not used: it goes through optimum, whose
ONNX support requires transformers < 4.58.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ls_backend.core.labels import Embeddings
from ls_backend.core.registry import write_dir_atomic

#: Inputs a BERT-like tokenizer may produce, in the order the exported graph takes them.
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Runtime(Protocol):
    dim: int

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


def export_onnx(path: str, folder: Path, quantize: bool) -> None:
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

    plain = folder / ("fp32.onnx" if quantize else "model.onnx")
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with torch.no_grad():
        torch.onnx.export(
            Pipeline(),
            tuple(sample[name] for name in names),
            str(plain),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            plain, folder / "model.onnx", per_channel=True, weight_type=QuantType.QInt8
        )
        plain.unlink()
    tokenizer = model.tokenizer
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    meta = {
        "source": path,
        "inputs": names,
        "dim": model.get_embedding_dimension(),
        "pad_id": tokenizer.pad_token_id,
        "pad_token": tokenizer.pad_token,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def export_folder(export_dir: Path, path: str, variant: str) -> Path:
    """Where the export of ``path`` as ``variant`` lives: readable name plus a hash of the path."""
    digest = hashlib.blake2b(path.encode(), digest_size=6).hexdigest()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).name)[:60]
    return export_dir / f"{name}-{digest}-{variant}"


class OnnxRuntime:
    def __init__(
        self,
        path: str,
        max_length: int,
        batch_size: int,
        export_dir: Path | None,
        quantize: bool,
    ) -> None:
        name = "onnx-int8" if quantize else "onnx"
        ort = require("onnxruntime", name)
        from tokenizers import Tokenizer

        if export_dir is None:
            raise ValueError(f"the {name} runtime needs a folder to keep its export in")
        folder = export_folder(export_dir, path, "int8" if quantize else "fp32")
        if not (folder / "meta.json").is_file():
            require("onnx", name)  # torch.onnx.export writes through it
            write_dir_atomic(folder, lambda tmp: export_onnx(path, tmp, quantize))
        meta = json.loads((folder / "meta.json").read_text())
        self.dim: int = int(meta["dim"])
        self.inputs: list[str] = list(meta["inputs"])
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=meta["pad_id"], pad_token=meta["pad_token"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

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
            out[rows] = self.session.run(None, feeds)[0]
        return out


def _onnx(quantize: bool) -> RuntimeFactory:
    def load(
        path: str, max_length: int, batch_size: int, _: str | None, export_dir: Path | None
    ) -> Runtime:
        return OnnxRuntime(path, max_length, batch_size, export_dir, quantize)

    return load


RUNTIMES: dict[str, RuntimeFactory] = {
    "torch": TorchRuntime,
    "onnx": _onnx(quantize=False),
    "onnx-int8": _onnx(quantize=True),
}
