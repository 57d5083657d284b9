"""The span task kind through the core's own training round: what serves before labels, a
round that saves and promotes, a version that loads back the same."""

from pathlib import Path

import numpy as np
import pytest

from ls_backend.core.configs import RoundConfig
from ls_backend.core.kinds import ModelKind
from ls_backend.core.registry import Registry
from ls_backend.core.spans.metrics import counts
from ls_backend.core.spans.task import SPANS
from ls_backend.core.spans.types import Span, SpanLabelSpace
from ls_backend.core.tasks import LabeledData, NotEnoughLabels
from ls_backend.core.training import run_round, save_prototype

SPACE = SpanLabelSpace(("PER", "LOC"))
PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank"]
PLACES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna"]


def data(n: int, empty_every: int = 5) -> LabeledData:
    texts, gold = [], []
    for i in range(n):
        if i % empty_every == empty_every - 1:
            texts.append(f"It rained on day {i} .")
            gold.append([])
            continue
        person, place = PEOPLE[i % 6], PLACES[(2 * i + 1) % 5]
        text = f"{person} drove to {place} on day {i} ."
        at = text.index(place)
        texts.append(text)
        gold.append([Span(0, len(person), "PER"), Span(at, at + len(place), "LOC")])
    keys = list(range(n))
    return LabeledData(keys, keys, texts, SPANS.targets(SPACE, gold), np.zeros((n, 4), np.float32))


def test_before_an_entity_is_labeled_nothing_is_served_and_nothing_fails() -> None:
    model = SPANS.prototype(SPACE, np.zeros((2, 4), np.float32))
    scored = SPANS.score(model, ["Alice drove to Rome ."], np.zeros((1, 4)), mc_samples=1,
                         star_decay=0.5)  # fmt: skip
    assert model.kind is ModelKind.PROTOTYPE and scored.predictions[0].spans == []
    assert scored.uncertainty.tolist() == [0.0]  # all alike: the queue orders by diversity
    only_empty = data(4, empty_every=1)
    with pytest.raises(NotEnoughLabels):
        SPANS.fit_head(SPACE, only_empty, RoundConfig(), None)


@pytest.mark.parametrize("n", [12, 40])  # k-fold, then held-out evaluation
def test_a_round_saves_a_head_with_entity_f1_that_loads_back_the_same(
    tmp_path: Path, n: int
) -> None:
    registry = Registry(tmp_path)
    prototype = SPANS.prototype(SPACE, np.zeros((2, 4), np.float32))
    prototype.version = save_prototype(registry, prototype, "test", SPANS.kind)
    labeled = data(n)
    config = RoundConfig(eval_min_labels=30)
    result = run_round(SPANS, "head", registry, SPACE, labeled, lambda: prototype, config)
    assert result.promoted and result.kind is ModelKind.HEAD
    info = registry.info(result.version)
    assert info["task"] == "spans" and info["evaluation"] == ("k-fold" if n < 30 else "held-out")
    assert set(info["metrics"]["per_type"]) == {"PER", "LOC"}
    assert info["metrics"]["entity_f1"] > 0.5
    model = SPANS.load(registry.path(result.version), result.version)
    text = "Carol drove to Vienna on day 99 ."
    spans = SPANS.score(model, [text], np.zeros((1, 4)), mc_samples=1, star_decay=0.5)
    found = {(text[s.start : s.end], s.label) for s in spans.predictions[0].spans}
    assert ("Carol", "PER") in found and ("Vienna", "LOC") in found


def test_the_paired_terms_add_up_to_the_entity_f1_change() -> None:
    gold = [[Span(0, 3, "PER"), Span(5, 9, "LOC")], [Span(0, 2, "PER")], []]
    better = [[Span(0, 3, "PER"), Span(5, 9, "LOC")], [], []]
    worse = [[Span(0, 3, "PER")], [], [Span(0, 1, "LOC")]]
    one = SPANS._figures(SPACE, better, gold)
    two = SPANS._figures(SPACE, worse, gold)
    c, b = SPANS.paired(one, two)
    change = one.metrics["entity_f1"] - two.metrics["entity_f1"]
    assert np.mean(c - b) == pytest.approx(change) and change > 0
    assert counts(better, gold).shape == (3, 3)


def test_a_round_starts_its_fits_from_the_serving_versions_evaluated_fit_and_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ls_backend.core.spans.head import SpanHead

    registry = Registry(tmp_path)
    prototype = SPANS.prototype(SPACE, np.zeros((2, 4), np.float32))
    prototype.version = save_prototype(registry, prototype, "test", SPANS.kind)
    config = RoundConfig(eval_min_labels=30)
    first = run_round(SPANS, "head", registry, SPACE, data(40), lambda: prototype, config)
    serving = SPANS.load(registry.path(first.version), first.version)
    starts: list[SpanHead | None] = []
    fit = SpanHead.fit_arrays.__func__  # type: ignore[attr-defined]

    def recording(cls, space, x, tags, config=None, init=None):  # type: ignore[no-untyped-def]
        starts.append(init)
        return fit(cls, space, x, tags, config, init)

    monkeypatch.setattr(SpanHead, "fit_arrays", classmethod(recording))
    second = run_round(SPANS, "head", registry, SPACE, data(50), lambda: serving, config)
    evaluated_start, served_start = starts
    # The evaluated fit from the serving version's evaluated fit (never a held-out label),
    # the served fit from the evaluated one just made.
    saved = SPANS.load(registry.path(first.version) / "evaluated", first.version)
    assert evaluated_start is not None and np.allclose(evaluated_start.coef, saved.head.coef)
    assert served_start is not None and not np.allclose(served_start.coef, saved.head.coef)
    assert registry.info(second.version)["metrics"]["entity_f1"] > 0.5
