"""Token embeddings of the frozen encoder: one vector per unit (word) of each text.

The sentence ``Encoder`` mean-pools a text into one vector; a span model needs the encoder's
last hidden state per token. ``TokenEncoder`` tokenizes once with the fast tokenizer (its
offsets point into the original text), cuts texts longer than the model window into
overlapping windows, runs them through a registered runtime (``TOKEN_RUNTIMES``), takes each
token from the window where it has the most context (``alignment.owners``) and averages
each unit's sub-word vectors.

Runtimes, as for sentences: ``torch`` (the reference, any device) and ``openvino`` (the
ONNX export of the encoder run by OpenVINO on the CPU, bf16 where the CPU has it natively).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.embeddings import EMBEDDED_MODEL, resolve_model_path
from ls_backend.core.files import write_dir_atomic
from ls_backend.core.runtimes import export_folder, require
from ls_backend.core.spans.alignment import (
    Index,
    TokenizedText,
    group_units,
    owners,
    pool_units,
    windows,
)

#: The hidden layer whose output is the token vector, counted from the embeddings (0); the
#: encoder runs only up to it. MiniLM-L6's last layer is tuned for mean-pooled sentence
#: similarity: with 300 random labeled sentences and the light head, entity F1 by layer
#: (0-6) was .63 .68 .71 .73 .72 .71 .64 on CoNLL and .64 .77 .79 .83 .82 .80 .73 on ATIS
#: (benchmarks/RESULTS.md, "Spans"). Layer 3 also halves the encoder's cost.
LAYER = 3
#: Tokens per window, special tokens included (what the sentence encoder uses too).
MAX_LENGTH = 128
#: Tokens two consecutive windows share: a token near a cut takes its vector from the
#: window where it has at least this many / 2 tokens of context on both sides.
OVERLAP = 32
#: The ONNX graph's inputs, in order.
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TokenVectorsArray = NDArray[np.float32]


class TokenRuntime(Protocol):
    dim: int
    variant: str  # what the vectors depend on besides the model (runtime, precision)

    def forward(self, ids: Index, mask: Index) -> TokenVectorsArray:
        """Last hidden states ``[B, L, dim]`` for padded ``ids`` and ``mask`` ``[B, L]``."""
        ...


#: (model path, layer, device, export folder) -> a loaded runtime.
TokenRuntimeFactory = Callable[[str, "int | None", "str | None", "Path | None"], TokenRuntime]


def load_encoder(path: str, layer: int | None, **kwargs: Any) -> Any:
    """The bare encoder (no head), cut after hidden layer ``layer`` (None: all layers), so
    its last hidden state is that layer's output and the layers above never run."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, **kwargs).eval()
    if layer is None:
        return model
    blocks = getattr(getattr(model, "encoder", None), "layer", None)
    if blocks is None or not 0 < layer <= len(blocks):
        raise ValueError(f"{path}: cannot cut the encoder after layer {layer}")
    model.encoder.layer = blocks[:layer]
    model.config.num_hidden_layers = layer
    return model


class TorchTokenRuntime:
    variant = "torch"

    def __init__(self, path: str, layer: int | None, device: str | None, _: Path | None) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model: Any = load_encoder(path, layer).to(self.device)
        self.dim: int = int(self.model.config.hidden_size)

    def forward(self, ids: Index, mask: Index) -> TokenVectorsArray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.as_tensor(ids, device=self.device),
                attention_mask=torch.as_tensor(mask, device=self.device),
            ).last_hidden_state
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)


def export_token_onnx(path: str, layer: int | None, folder: Path) -> None:
    """Write ``model.onnx`` (inputs -> hidden state of ``layer``) and ``meta.json``."""
    import torch
    from transformers import AutoTokenizer

    # Eager attention traces to plain ops; SDPA's fused kernel does not export everywhere.
    model = load_encoder(path, layer, attn_implementation="eager")
    sample = AutoTokenizer.from_pretrained(path)(
        ["a sentence to trace the graph with", "short"], padding=True, return_tensors="pt"
    )
    names = [name for name in _INPUTS if name in sample]

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.model(**dict(zip(names, inputs, strict=True)))[0]
            return hidden

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with torch.no_grad():
        torch.onnx.export(
            Hidden(),
            tuple(sample[name] for name in names),
            str(folder / "model.onnx"),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes={**axes, "hidden": {0: "batch", 1: "tokens"}},
            opset_version=17,
            dynamo=False,
        )
    meta = {"source": path, "layer": layer, "inputs": names, "dim": int(model.config.hidden_size)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


class OpenVinoTokenRuntime:
    """The encoder's ONNX export (``<export_dir>/tokens/``) on OpenVINO, CPU."""

    def __init__(
        self, path: str, layer: int | None, _: str | None, export_dir: Path | None
    ) -> None:
        ov = require("openvino", "openvino")
        if export_dir is None:
            raise ValueError("the openvino token runtime needs a folder to keep its export in")
        # The graph takes any length (dynamic axes): the window in the name only keys it.
        folder = export_folder(export_dir / f"tokens-layer{layer}", path, MAX_LENGTH)
        if not (folder / "meta.json").is_file():
            require("onnx", "openvino")  # torch.onnx.export writes through it
            folder.parent.mkdir(parents=True, exist_ok=True)
            write_dir_atomic(folder, lambda tmp: export_token_onnx(path, layer, tmp))
        meta = json.loads((folder / "meta.json").read_text())
        self.dim: int = int(meta["dim"])
        self.inputs: list[str] = list(meta["inputs"])
        compiled = ov.Core().compile_model(
            str(folder / "model.onnx"), "CPU", {"PERFORMANCE_HINT": "LATENCY"}
        )
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.variant = f"openvino-{precision}"
        self.request = compiled.create_infer_request()

    def forward(self, ids: Index, mask: Index) -> TokenVectorsArray:
        columns = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds = {name: np.ascontiguousarray(columns[name], dtype=np.int64) for name in self.inputs}
        return np.asarray(self.request.infer(feeds)[0], dtype=np.float32)


TOKEN_RUNTIMES: dict[str, TokenRuntimeFactory] = {
    "torch": TorchTokenRuntime,
    "openvino": OpenVinoTokenRuntime,
}


@dataclass(frozen=True)
class TokenVectors:
    """One text's units and a vector per unit."""

    tokens: TokenizedText
    vectors: TokenVectorsArray  # [n_units, dim]


def _load_tokenizer(path: str) -> Any:
    """The fast tokenizer behind the model (``tokenizers``), without truncation or padding."""
    from tokenizers import Tokenizer

    file = Path(path) / "tokenizer.json"
    if file.is_file():
        tokenizer = Tokenizer.from_file(str(file))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path).backend_tokenizer
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the model expects before and after a single text (``[CLS]``, ``[SEP]``)."""
    content = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for k in range(len(full) - len(content) + 1):
        if full[k : k + len(content)] == content:
            return full[:k], full[k + len(content) :]
    return [], []


class UnitTokenizer:
    """The model's fast tokenizer, without truncation: texts -> ``TokenizedText``, and
    windows of at most ``max_length`` tokens (special tokens included) ready for the model."""

    def __init__(self, path: str, max_length: int = MAX_LENGTH, overlap: int = OVERLAP) -> None:
        self.tokenizer = _load_tokenizer(path)
        self.prefix, self.suffix = _specials(self.tokenizer)
        self.window = max_length - len(self.prefix) - len(self.suffix)
        if not 0 <= overlap < self.window:
            raise ValueError(f"overlap must lie in [0, {self.window})")
        self.overlap = overlap

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        out = []
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for text, enc in zip(texts, encodings, strict=True):
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            unit_of, units = group_units(offsets, enc.word_ids)
            ids = np.asarray(enc.ids, dtype=np.int64)
            out.append(TokenizedText(text, ids, offsets, unit_of, units))
        return out

    def windows(self, tokens: TokenizedText) -> list[tuple[int, int]]:
        """Token ranges of ``tokens``' windows (none for a text without tokens)."""
        return windows(tokens.ids.size, self.window, self.overlap) if tokens.ids.size else []

    def batch(self, pieces: Sequence[tuple[Index, int, int]]) -> tuple[Index, Index]:
        """Padded ``(ids, attention mask)`` ``[B, L]`` of windows ``(ids, start, stop)``, each
        wrapped in the special tokens; a window's token j sits at column ``len(prefix) + j``."""
        width = max(b - a for _, a, b in pieces) + len(self.prefix) + len(self.suffix)
        ids = np.zeros((len(pieces), width), dtype=np.int64)
        mask = np.zeros((len(pieces), width), dtype=np.int64)
        for row, (tokens, a, b) in enumerate(pieces):
            seq = [*self.prefix, *tokens[a:b].tolist(), *self.suffix]
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return ids, mask


def merge_windows(
    n: int, spans: Sequence[tuple[int, int]], outputs: Sequence[NDArray[np.float32]]
) -> NDArray[np.float32]:
    """Per-token rows ``[n, ...]`` from per-window rows (window w's ``outputs[w]`` covers
    tokens ``spans[w]``): each token from the window where it has the most context."""
    if not spans:
        return np.zeros((0, *outputs[0].shape[1:]) if outputs else (0, 0), dtype=np.float32)
    out = np.zeros((n, *outputs[0].shape[1:]), dtype=np.float32)
    owner = owners(n, spans)
    for w, (a, _b) in enumerate(spans):
        mine = np.flatnonzero(owner[a:_b] == w)
        out[a + mine] = outputs[w][mine]
    return out


class TokenEncoder:
    """The frozen encoder's token vectors, pooled per unit, for texts of any length."""

    def __init__(
        self,
        model_name: str = EMBEDDED_MODEL,
        runtime: str = "torch",
        layer: int | None = LAYER,
        max_length: int = MAX_LENGTH,
        overlap: int = OVERLAP,
        batch_size: int = 64,
        device: str | None = None,
        export_dir: Path | None = None,
    ) -> None:
        if runtime not in TOKEN_RUNTIMES:
            raise ValueError(f"unknown token runtime {runtime!r}; one of {sorted(TOKEN_RUNTIMES)}")
        self.model_name = model_name
        self.path = resolve_model_path(model_name)
        self.tokenizer = UnitTokenizer(self.path, max_length, overlap)
        self.batch_size = batch_size
        self.runtime: TokenRuntime = TOKEN_RUNTIMES[runtime](self.path, layer, device, export_dir)
        self.dim: int = self.runtime.dim
        #: What the vectors depend on: cache keys and saved heads record it.
        self.variant = (
            f"{model_name}#{self.runtime.variant}#layer{layer}#window{max_length}-{overlap}"
        )

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return self.tokenizer.tokenize(texts)

    def encode(self, texts: Sequence[str]) -> list[TokenVectors]:
        """Per text: its units and their vectors ``[n_units, dim]`` (float32)."""
        return self.encode_tokenized(self.tokenize(texts))

    def encode_tokenized(self, tokenized: Sequence[TokenizedText]) -> list[TokenVectors]:
        cuts = [self.tokenizer.windows(tok) for tok in tokenized]
        pieces = [(t, a, b) for t, spans in enumerate(cuts) for a, b in spans]
        hidden: list[TokenVectorsArray] = [np.zeros((0, self.dim), np.float32)] * len(pieces)
        # Similar lengths in a batch: less padding to compute.
        order = sorted(range(len(pieces)), key=lambda p: pieces[p][2] - pieces[p][1])
        head = len(self.tokenizer.prefix)
        for begin in range(0, len(order), self.batch_size):
            batch = order[begin : begin + self.batch_size]
            ids, mask = self.tokenizer.batch(
                [(tokenized[pieces[p][0]].ids, pieces[p][1], pieces[p][2]) for p in batch]
            )
            out = self.runtime.forward(ids, mask)
            for row, p in enumerate(batch):
                _, a, b = pieces[p]
                hidden[p] = out[row, head : head + b - a]
        result = []
        piece = 0
        for tok, spans in zip(tokenized, cuts, strict=True):
            parts = hidden[piece : piece + len(spans)]
            piece += len(spans)
            vectors = merge_windows(tok.ids.size, spans, parts)
            if not spans:
                vectors = np.zeros((0, self.dim), dtype=np.float32)
            result.append(TokenVectors(tok, pool_units(vectors, tok.unit_of, tok.n_units)))
        return result
