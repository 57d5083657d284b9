"""A span project's label quality: out-of-fold predictions, the entity types the model
confuses, and the regions it doubts (a wrong type, an entity nobody labeled)."""

from __future__ import annotations

import numpy as np

from ls_backend.core.spans.alignment import TokenizedText
from ls_backend.core.spans.metrics import judged_f1
from ls_backend.core.spans.quality import (
    NO_ENTITY,
    out_of_fold,
    suspected_spans,
    type_confusions,
)
from ls_backend.core.spans.tokens import TokenVectors
from ls_backend.core.spans.types import Span, SpanLabelSpace

SPACE = SpanLabelSpace(("PER", "LOC"))
NAMES = {"Anna": "PER", "Bob": "PER", "Paris": "LOC", "Rome": "LOC"}
FILLERS = ["went", "to", "see", "the", "old", "market", "with", "friends"]


def corpus(n: int, seed: int = 0) -> tuple[list[TokenVectors], list[list[Span]]]:
    """Whitespace units whose vector says what the word is (a stand-in encoder)."""
    rng = np.random.default_rng(seed)
    vectors, gold = [], []
    for _ in range(n):
        words = list(rng.choice(FILLERS, size=4))
        words.insert(int(rng.integers(0, 4)), str(rng.choice(list(NAMES))))
        units, spans, pos = [], [], 0
        for w in words:
            units.append((pos, pos + len(w)))
            if w in NAMES:
                spans.append(Span(pos, pos + len(w), NAMES[w]))
            pos += len(w) + 1
        x = rng.normal(scale=0.3, size=(len(words), 6)).astype(np.float32)
        for i, w in enumerate(words):
            x[i, {"PER": 0, "LOC": 1}.get(NAMES.get(w, ""), 2)] += 2.0
        empty = np.zeros(0, dtype=np.int64)
        unit_arr = np.asarray(units, dtype=np.int64)
        tokens = TokenizedText(" ".join(words), empty, empty.reshape(0, 2), empty, unit_arr)
        vectors.append(TokenVectors(tokens, x))
        gold.append(spans)
    return vectors, gold


def test_out_of_fold_predictions_come_from_heads_that_never_saw_the_sentence() -> None:
    vectors, gold = corpus(40)
    oof = out_of_fold(SPACE, vectors, gold)
    assert len(oof.predicted) == 40 and len(oof.probs) == 40
    assert np.allclose(oof.probs.probs.sum(axis=1), 1.0, atol=1e-5)
    right = sum(p == g for p, g in zip(oof.predicted, gold, strict=True))
    assert right >= 36


def test_type_confusions_count_other_types_boundaries_misses_and_spurious_regions() -> None:
    gold = [
        [Span(0, 4, "PER"), Span(10, 15, "LOC")],
        [Span(0, 4, "PER"), Span(20, 25, "LOC")],
        [Span(0, 4, "LOC")],
    ]
    predicted = [
        [Span(0, 4, "PER"), Span(10, 15, "PER")],  # right; LOC read as PER
        [Span(0, 6, "PER"), Span(30, 33, "LOC")],  # other offsets; LOC missed; spurious LOC
        [Span(0, 4, "PER")],  # LOC read as PER
    ]
    found = type_confusions(predicted, gold)
    assert (found.correct, found.other_type, found.boundary) == (1, 2, 1)
    assert (found.missed, found.spurious) == (1, 1)
    assert found.pairs[0] == ("LOC", "PER", 2)
    assert set(found.pairs[1:]) == {
        ("PER", "PER, other offsets", 1),
        ("LOC", NO_ENTITY, 1),
        (NO_ENTITY, "LOC", 1),
    }


def test_a_wrong_type_and_an_entity_nobody_labeled_are_the_suspects() -> None:
    vectors, gold = corpus(60)
    wrong = next(i for i, g in enumerate(gold) if g[0].label == "LOC")
    gold[wrong] = [Span(gold[wrong][0].start, gold[wrong][0].end, "PER")]
    unlabeled = next(i for i, g in enumerate(gold) if g[0].label == "PER" and i != wrong)
    forgotten = gold[unlabeled][0]
    gold[unlabeled] = []
    oof = out_of_fold(SPACE, vectors, gold)
    suspects = suspected_spans(SPACE, gold, oof, top=5)
    by_index = {s.index: s for s in suspects}
    assert {wrong, unlabeled} <= set(by_index)
    assert {suspects[0].index, suspects[1].index} == {wrong, unlabeled}
    flipped = by_index[wrong]
    assert (flipped.given, flipped.suggested) == ("PER", "LOC")
    assert flipped.quality < 0.5 < flipped.confidence
    missing = by_index[unlabeled]
    assert (missing.given, missing.suggested) == (NO_ENTITY, "PER")
    assert (missing.start, missing.end) == (forgotten.start, forgotten.end)


def test_judged_f1_weighs_each_agreement_by_the_judges_confidence() -> None:
    judge = [[Span(0, 4, "PER", 0.8)], [Span(5, 9, "LOC", 0.6)], []]
    same = [[Span(0, 4, "PER")], [Span(5, 9, "LOC")], []]
    other = [[Span(0, 4, "LOC")], [Span(5, 9, "LOC")], [Span(0, 2, "PER")]]
    f1 = judged_f1(judge, [same, other, [[], [], []]])
    gold = 0.8 + 0.6
    assert np.allclose(f1, [2 * 1.4 / (2 + gold), 2 * 0.6 / (3 + gold), 0.0])
    assert judged_f1([[]], [[[]]])[0] == 1.0
