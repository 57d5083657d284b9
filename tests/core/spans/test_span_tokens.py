"""Token vectors per unit, with offsets into the original text, for texts of any length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ls_backend.core.spans.tokens import TokenEncoder

TRICKY = "  Zürich\u00a0and   İstanbul 👨🏻\u200d🚒 met O'Neil in the U.S.-based café 東京 "
LONG = "The stock market fell sharply after the announcement of new tariffs . " * 25


@pytest.fixture(scope="module")
def torch_encoder() -> TokenEncoder:
    return TokenEncoder(runtime="torch")


def test_units_point_into_the_original_text(torch_encoder: TokenEncoder) -> None:
    (tokens,) = torch_encoder.tokenize([TRICKY])
    words = [TRICKY[a:b] for a, b in tokens.units.tolist()]
    assert words[:3] == ["Zürich", "and", "İstanbul"]
    assert "👨🏻\u200d🚒" in words and "café" in words and "O" in words and "Neil" in words
    assert words[-2:] == ["東", "京"]  # each CJK character is a word of its own
    assert (tokens.units[:, 1] > tokens.units[:, 0]).all()
    assert (np.diff(tokens.units[:, 0]) > 0).all()


def test_every_unit_gets_a_vector_and_empty_texts_get_none(torch_encoder: TokenEncoder) -> None:
    out = torch_encoder.encode([TRICKY, "", "   ", "one"])
    assert [o.vectors.shape for o in out] == [
        (out[0].tokens.n_units, torch_encoder.dim),
        (0, torch_encoder.dim),
        (0, torch_encoder.dim),
        (1, torch_encoder.dim),
    ]
    assert np.linalg.norm(out[0].vectors, axis=1).min() > 1.0


def test_batching_and_padding_do_not_change_the_vectors(torch_encoder: TokenEncoder) -> None:
    together = torch_encoder.encode(["short one", TRICKY])
    alone = torch_encoder.encode([TRICKY])[0]
    assert np.allclose(together[1].vectors, alone.vectors, atol=1e-4)


def test_a_long_text_is_cut_into_overlapping_windows_and_merged() -> None:
    encoder = TokenEncoder(runtime="torch", max_length=32, overlap=8)
    (tokens,) = encoder.tokenize([LONG])
    assert tokens.ids.size > 3 * 30  # several windows
    (out,) = encoder.encode([LONG])
    assert out.vectors.shape == (tokens.n_units, encoder.dim)
    # The first window's first tokens take its vectors: same as encoding that window alone.
    first = encoder.runtime.forward(
        np.asarray(
            [[*encoder.tokenizer.prefix, *tokens.ids[:30].tolist(), *encoder.tokenizer.suffix]]
        ),
        np.ones((1, 32), dtype=np.int64),
    )[0, 1:11]
    assert np.allclose(out.vectors[:10], first, atol=1e-4)
    # ... and the last tokens the last window's (which ends where the text ends).
    last = encoder.runtime.forward(
        np.asarray(
            [[*encoder.tokenizer.prefix, *tokens.ids[-30:].tolist(), *encoder.tokenizer.suffix]]
        ),
        np.ones((1, 32), dtype=np.int64),
    )[0, -11:-1]
    assert np.allclose(out.vectors[-10:], last, atol=1e-4)
    assert np.isfinite(out.vectors).all() and np.linalg.norm(out.vectors, axis=1).min() > 1.0


def test_openvino_gives_the_vectors_torch_gives(
    torch_encoder: TokenEncoder, tmp_path: Path
) -> None:
    encoder = TokenEncoder(runtime="openvino", export_dir=tmp_path)
    assert encoder.variant.startswith("embedded#openvino-") and "layer3" in encoder.variant
    texts = [TRICKY, LONG, "EU rejects German call to boycott British lamb ."]
    for a, b in zip(torch_encoder.encode(texts), encoder.encode(texts), strict=True):
        assert np.array_equal(a.tokens.units, b.tokens.units)
        cos = (
            (a.vectors * b.vectors).sum(1)
            / np.linalg.norm(a.vectors, axis=1)
            / np.linalg.norm(b.vectors, axis=1)
        )
        assert cos.min() > 0.999


def test_unknown_runtime_and_impossible_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown token runtime"):
        TokenEncoder(runtime="tpu")
    with pytest.raises(ValueError, match="overlap"):
        TokenEncoder(max_length=16, overlap=14)


def test_windows_line_endings_and_a_lone_carriage_return_keep_exact_offsets(
    torch_encoder: TokenEncoder,
) -> None:
    # Offsets are Python str indices of the text as sent: "\r\n" counts 2, a lone "\r" 1.
    text = "Alice met Bob.\r\nThen Carol\rwent to Paris.\r\n\r\nBye"
    (tokens,) = torch_encoder.tokenize([text])
    words = [text[a:b] for a, b in tokens.units.tolist()]
    assert words == [
        "Alice", "met", "Bob", ".", "Then", "Carol", "went", "to", "Paris", ".", "Bye"
    ]  # fmt: skip
    assert tokens.units[words.index("Paris")].tolist() == [
        text.index("Paris"),
        text.index("Paris") + 5,
    ]
