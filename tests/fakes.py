"""Stand-ins for tests that are about plumbing, not about models."""

import zlib

import numpy as np

from ls_backend.core.embeddings import Encoder


class HashEncoder(Encoder):
    """Deterministic pseudo-embeddings from a text's CRC: instant, no model to load."""

    def __init__(self, dim: int = 16) -> None:
        self.model_name = "hash"
        self.dim = dim
        self.cache = None

    def encode(self, texts, progress=False):
        rows = [
            np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts
        ]
        out = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-9)
