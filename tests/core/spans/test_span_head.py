"""The light span head learns from a few sentences, serves nothing before, and round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ls_backend.core.spans.alignment import TokenizedText, decode_spans
from ls_backend.core.spans.features import SHAPE_FEATURES, shape_features
from ls_backend.core.spans.head import SpanHead, SpanHeadConfig, unit_features
from ls_backend.core.spans.tokens import TokenVectors
from ls_backend.core.spans.types import Span, SpanLabelSpace

SPACE = SpanLabelSpace(("PER", "LOC"))
NAMES = {"anna": "PER", "bob": "PER", "paris": "LOC", "rome": "LOC"}


def sentence(words: list[str], rng: np.random.Generator) -> tuple[TokenVectors, list[Span]]:
    """Whitespace units; a word's vector says what it is (plus noise): a stand-in encoder."""
    text = " ".join(words)
    units, spans, pos = [], [], 0
    for w in words:
        units.append((pos, pos + len(w)))
        if w.lower() in NAMES:
            spans.append(Span(pos, pos + len(w), NAMES[w.lower()]))
        pos += len(w) + 1
    kinds = {"PER": 0, "LOC": 1}
    vectors = rng.normal(scale=0.3, size=(len(words), 6)).astype(np.float32)
    for i, w in enumerate(words):
        vectors[i, kinds.get(NAMES.get(w.lower(), ""), 2)] += 2.0
    unit_arr = np.asarray(units, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    tokens = TokenizedText(text, empty, empty.reshape(0, 2), empty, unit_arr)
    return TokenVectors(tokens, vectors), spans


def corpus(n: int, seed: int = 0) -> tuple[list[TokenVectors], list[list[Span]]]:
    rng = np.random.default_rng(seed)
    fillers = ["went", "to", "see", "the", "old", "market", "with", "friends"]
    out = []
    for _ in range(n):
        words = list(rng.choice(fillers, size=4))
        words.insert(int(rng.integers(0, 4)), str(rng.choice(list(NAMES))).title())
        out.append(sentence(words, rng))
    return [v for v, _ in out], [s for _, s in out]


def test_the_head_learns_entities_from_a_few_sentences() -> None:
    vectors, spans = corpus(30)
    head = SpanHead.fit(SPACE, vectors, spans)
    test_vectors, test_spans = corpus(20, seed=1)
    probs = head.predict_proba(test_vectors)
    assert probs.probs.shape == (sum(v.tokens.n_units for v in test_vectors), SPACE.size, 1)
    assert np.allclose(probs.probs.sum(axis=1), 1.0, atol=1e-5)
    decoded = decode_spans(probs, [v.tokens.units for v in test_vectors], SPACE)
    assert [[s.key() for s in row] for row in decoded.spans] == [
        [s.key() for s in row] for row in test_spans
    ]
    assert all(0.5 < (s.score or 0) <= 1 for row in decoded.spans for s in row)


@pytest.mark.parametrize("labels", [0, 3], ids=["no labels", "only no-entity sentences"])
def test_before_any_entity_is_labeled_the_head_serves_nothing(labels: int) -> None:
    rng = np.random.default_rng(0)
    vectors = [sentence(["nothing", "here"], rng)[0] for _ in range(labels)]
    head = SpanHead.fit(SPACE, vectors, [[] for _ in vectors])
    assert not head.trained
    test_vectors, _ = corpus(3)
    probs = head.predict_proba(test_vectors)
    decoded = decode_spans(probs, [v.tokens.units for v in test_vectors], SPACE)
    assert decoded.spans == [[], [], []]
    assert head.predict_proba([]).probs.shape == (0, SPACE.size, 1)


def test_tags_never_seen_get_probability_zero() -> None:
    vectors, spans = corpus(20)
    only_per = [[s for s in row if s.label == "PER"] for row in spans]
    head = SpanHead.fit(SPACE, vectors, only_per)
    probs = head.predict_proba(vectors).probs[:, :, 0]
    loc = [SPACE.tag(p, 1) for p in SPACE.prefixes]
    assert not probs[:, loc].any()


def test_save_and_load_give_the_same_probabilities_without_pickle(tmp_path: Path) -> None:
    vectors, spans = corpus(20)
    head = SpanHead.fit(SPACE, vectors, spans, SpanHeadConfig(c=0.5, max_iter=20))
    head.save(tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [
        "span_head.json",
        "span_head.npz",
    ]
    loaded = SpanHead.load(tmp_path / "head")
    assert loaded.space == SPACE and loaded.config == head.config
    assert np.array_equal(loaded.predict_proba(vectors).probs, head.predict_proba(vectors).probs)
    SpanHead.empty(SPACE).save(tmp_path / "empty")
    assert not SpanHead.load(tmp_path / "empty").trained


def test_shape_features_see_what_an_uncased_encoder_cannot() -> None:
    text = "NATO met Anna in the U.S. today"
    units = np.array(
        [
            [0, 4],
            [5, 8],
            [9, 13],
            [14, 16],
            [17, 20],
            [21, 22],
            [22, 23],
            [23, 24],
            [24, 25],
            [26, 31],
        ]
    )
    f = shape_features(text, units)
    col = {name: i for i, name in enumerate(SHAPE_FEATURES)}
    assert f.shape == (10, len(SHAPE_FEATURES))
    assert f[0, col["all_upper"]] == 1 and f[0, col["first"]] == 1
    assert f[2, col["init_upper"]] == 1 and f[1, col["next_init_upper"]] == 1
    assert f[3, col["all_lower"]] == 1 and f[3, col["prev_init_upper"]] == 1
    assert f[6, col["no_alnum"]] == 1 and f[6, col["glued_to_prev"]] == 1
    assert f[:, col["upper_text"]].sum() == 0
    assert shape_features("BRUSSELS 1996-08-22", np.array([[0, 8], [9, 19]]))[
        :, col["upper_text"]
    ].all()
    assert shape_features("", np.zeros((0, 2), dtype=np.int64)).shape == (0, len(SHAPE_FEATURES))


def test_predict_serves_spans_and_uncertainty() -> None:
    from ls_backend.core.spans.predict import predict
    from ls_backend.core.spans.uncertainty import SPAN_MEASURES

    vectors, spans = corpus(30)
    test_vectors, _ = corpus(5, seed=2)
    out = predict(SpanHead.fit(SPACE, vectors, spans), test_vectors)
    assert set(out.uncertainty) == set(SPAN_MEASURES)
    assert all(v.shape == (5,) for v in out.uncertainty.values())
    assert any(out.decoded.spans) and all(
        0 < s.score <= 1 for row in out.decoded.spans for s in row if s.score is not None
    )
    assert predict(SpanHead.empty(SPACE), test_vectors).decoded.spans == [[]] * 5


def test_a_warm_start_begins_at_the_other_heads_function_and_keeps_its_quality() -> None:
    vectors, spans = corpus(40)
    some = SpanHead.fit(SPACE, vectors[:30], spans[:30])
    # Another standardisation, another tag set: the start is the same function of raw
    # features, and a tag the first head never saw starts unlikely.
    x = unit_features(vectors, True)
    mean, scale = x.mean(axis=0) + 0.5, x.std(axis=0) * 2 + 1e-6
    classes = np.arange(SPACE.size, dtype=np.int64)
    theta = some._start(classes, mean, scale)
    w = theta[: x.shape[1] * classes.size].reshape(x.shape[1], classes.size)
    b = theta[x.shape[1] * classes.size :]
    logits = ((x - mean) / scale) @ w + b
    expected = ((x - some.mean) / some.scale) @ some.coef + some.intercept
    assert np.allclose(logits[:, some.classes], expected, atol=1e-3)

    warm = SpanHead.fit(SPACE, vectors, spans, SpanHeadConfig(warm_iter=3), init=some)
    test_vectors, test_spans = corpus(20, seed=1)
    decoded = decode_spans(
        warm.predict_proba(test_vectors), [v.tokens.units for v in test_vectors], SPACE
    )
    assert [[s.key() for s in row] for row in decoded.spans] == [
        [s.key() for s in row] for row in test_spans
    ]


def test_a_head_of_other_features_is_no_start() -> None:
    vectors, spans = corpus(30)
    plain = SpanHead.fit(SPACE, vectors, spans, SpanHeadConfig(shape=False))
    head = SpanHead.fit(SPACE, vectors, spans, init=plain)  # shape features: 11 more columns
    assert head.coef.shape[0] == plain.coef.shape[0] + len(SHAPE_FEATURES)
