"""The embedding cache on disk: what one process embedded, the next finds (per model)."""

import numpy as np

from ls_backend.store.databases import Databases


def test_the_cache_survives_a_restart_and_is_per_model(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    vector = np.arange(4, dtype=np.float32)
    Databases.embedding_cache_at(path).put_many("model", {b"key": vector})
    again = Databases.embedding_cache_at(path)  # a new process opens the same file
    assert np.array_equal(again.get_many("model", [b"key"])[b"key"], vector)
    assert again.get_many("another-model", [b"key"]) == {}
