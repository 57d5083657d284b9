import numpy as np
import pytest
from fakes import DictCache

from ls_backend.core.embeddings import Encoder, text_key


@pytest.fixture(scope="module")
def encoder():
    return Encoder(cache=DictCache())


def test_a_text_is_embedded_once_per_model(encoder, monkeypatch):
    seen: list[str] = []
    original = encoder.encode_uncached

    def counting(texts, progress=False, background=False):
        seen.extend(texts)
        return original(texts, progress, background)

    monkeypatch.setattr(encoder, "encode_uncached", counting)
    first = encoder.encode(
        ["a man is eating food", "the stock market fell", "a man is eating food"]
    )
    second = encoder.encode(["the stock market fell", "a man is eating bread"])
    assert seen == ["a man is eating food", "the stock market fell", "a man is eating bread"]
    assert np.array_equal(first[1], second[0])
    assert np.array_equal(first[0], first[2])


def test_the_cache_is_keyed_by_model_runtime_and_length(encoder):
    vector = encoder.encode(["cached text"])[0]
    key = text_key("cached text")
    assert np.array_equal(encoder.cache.get_many(encoder.cache_key, [key])[key], vector)
    assert encoder.cache.get_many("another-model", [key]) == {}
    shorter = Encoder(cache=encoder.cache, max_length=16)
    assert shorter.cache_key != encoder.cache_key  # other vectors: never mixed


def test_embeddings_are_normalised_and_meaningful(encoder):
    food, bread, market = encoder.encode(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply.",
        ]
    )
    assert np.allclose(np.linalg.norm([food, bread, market], axis=1), 1.0, atol=1e-5)
    assert food @ bread > 0.5 > food @ market


def test_background_embedding_matches_and_yields_to_live_requests(encoder, monkeypatch):
    texts = [f"background text number {i}" for i in range(40)]
    whole = encoder.encode_uncached(texts)

    calls: list[int] = []
    original = encoder.runtime.forward

    def forward(batch):
        calls.append(len(batch))
        return original(batch)

    monkeypatch.setattr(encoder.runtime, "forward", forward)
    chunked = encoder.encode_uncached(texts, background=True)
    assert np.allclose(chunked, whole, atol=1e-5)
    assert calls == [16, 16, 8]  # the lock is free between chunks for a live request
