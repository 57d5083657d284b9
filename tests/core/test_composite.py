"""Several controls on one text as one task kind: a part per control, fitted on the annotations
that label it, saved and loaded in one version, scored together, compared by one rule."""

from pathlib import Path

import numpy as np
import pytest

from ls_backend.core.composite import CompositeModel, CompositeSpace, Part
from ls_backend.core.configs import RoundConfig
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import LabelSpace
from ls_backend.core.registry import Registry
from ls_backend.core.spans.types import Span, SpanLabelSpace
from ls_backend.core.task_registry import task_of
from ls_backend.core.tasks import LabeledData, NotEnoughLabels, ScoredParts, TaskKind, joined
from ls_backend.core.training import run_round, save_prototype

MULTI = task_of(TaskKind.MULTI)
TOPIC = Part("topic", TaskKind.CLASSIFICATION, LabelSpace(("travel", "weather")))
ENTITIES = Part("entities", TaskKind.SPANS, SpanLabelSpace(("PER", "LOC")))
SPACE = CompositeSpace((TOPIC, ENTITIES))
PEOPLE = ["Alice", "Bob", "Carol", "David", "Emma", "Frank"]
PLACES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna"]
DIM = 8


def embedding(topic: int, i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    x = rng.normal(0, 0.1, DIM)
    x[topic] += 1.0
    return (x / np.linalg.norm(x)).astype(np.float32)


def row(i: int) -> tuple[str, int, list[Span]]:
    """A travel sentence with a person and a place, or a weather one without any."""
    if i % 3 == 2:
        return f"It rained on day {i} .", 1, []
    person, place = PEOPLE[i % 6], PLACES[(2 * i + 1) % 5]
    text = f"{person} drove to {place} on day {i} ."
    at = text.index(place)
    return text, 0, [Span(0, len(person), "PER"), Span(at, at + len(place), "LOC")]


def data(n: int, say=lambda i: (True, True)) -> LabeledData:
    """``n`` annotations; ``say(i)``: whether annotation ``i`` labels the topic, the spans."""
    texts, targets, x = [], [], []
    for i in range(n):
        text, topic, spans = row(i)
        topic_said, spans_said = say(i)
        texts.append(text)
        targets.append(
            (["travel", "weather"][topic:][:1] if topic_said else None,
             spans if spans_said else None)
        )  # fmt: skip
        x.append(embedding(topic, i))
    keys = list(range(n))
    return LabeledData(keys, keys, texts, MULTI.targets(SPACE, targets), np.stack(x))


def names() -> np.ndarray:
    return np.stack([embedding(0, 1000), embedding(1, 1001), np.zeros(DIM), np.zeros(DIM)])


def score(model, texts):
    x = np.stack([embedding(0, 5000 + i) for i in range(len(texts))])
    return MULTI.score(model, texts, x, mc_samples=1, star_decay=0.5)


def test_a_prototype_serves_every_part_before_any_label() -> None:
    model = MULTI.prototype(SPACE, names().astype(np.float32))
    assert model.kind is ModelKind.PROTOTYPE and model.space == SPACE
    scored = score(model, ["Alice drove to Rome ."])
    topic, entities = scored.predictions
    assert topic.predictions.shape == (1, 2, 1)  # zero-shot probabilities
    assert entities.predictions[0].spans == []  # no span before the first entity
    assert 0.0 <= scored.uncertainty[0] <= 1.0


def test_a_round_fits_every_part_saves_it_and_it_loads_back_the_same(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    prototype = MULTI.prototype(SPACE, names().astype(np.float32))
    prototype.version = save_prototype(registry, prototype, "test", MULTI.kind)
    config = RoundConfig(eval_min_labels=30)
    result = run_round(MULTI, "head", registry, SPACE, data(45), lambda: prototype, config,
                       label_embeddings=names().astype(np.float32))  # fmt: skip
    assert result.promoted and result.kind is ModelKind.HEAD
    info = registry.info(result.version)
    assert info["task"] == "multi" and info["evaluation"] == "held-out"
    parts = info["metrics"]["parts"]
    assert set(parts) == {"topic", "entities"}
    assert "accuracy" in parts["topic"] and "entity_f1" in parts["entities"]
    assert info["metrics"]["score"] == pytest.approx(
        (parts["topic"]["accuracy"] + parts["entities"]["entity_f1"]) / 2
    )
    model = MULTI.load(registry.path(result.version), result.version)
    assert isinstance(model, CompositeModel) and model.space == SPACE
    assert [p.kind for p in model.parts] == [ModelKind.HEAD, ModelKind.HEAD]
    text = "Carol drove to Vienna on day 99 ."
    scored = score(model, [text, "It rained on day 98 ."])
    topic, entities = scored.predictions
    assert topic.predictions[0, :, 0].argmax() == 0  # travel
    found = {(text[s.start : s.end], s.label) for s in entities.predictions[0].spans}
    assert ("Carol", "PER") in found and ("Vienna", "LOC") in found
    assert {"topic.margin", "entities.entropy_sum", "combined"} <= set(scored.figures)
    assert np.all((scored.uncertainty >= 0) & (scored.uncertainty <= 1))


def test_an_annotation_that_says_nothing_for_a_part_does_not_train_it() -> None:
    # Topic on every annotation, spans on none: the span part cannot fit, the topic part does.
    only_topic = data(12, say=lambda i: (True, False))
    model = MULTI.fit_head(SPACE, only_topic, RoundConfig(), names().astype(np.float32))
    assert [p.kind for p in model.parts] == [ModelKind.HEAD, ModelKind.PROTOTYPE]
    assert score(model, ["Bob drove to Paris ."]).predictions[1].predictions[0].spans == []
    # Spans on every third annotation only: the span part learns from those 4.
    some = data(12, say=lambda i: (True, i % 3 == 0))
    targets = some.targets
    assert sum(t[1] is not None for t in targets) == 4
    model = MULTI.fit_head(SPACE, some, RoundConfig(), names().astype(np.float32))
    assert [p.kind for p in model.parts] == [ModelKind.HEAD, ModelKind.HEAD]


def test_not_enough_labels_only_when_no_part_can_fit() -> None:
    nothing_to_learn = data(3, say=lambda i: (i == 0, False))  # one class, no span
    with pytest.raises(NotEnoughLabels, match="topic"):
        MULTI.fit_head(SPACE, nothing_to_learn, RoundConfig(), names().astype(np.float32))
    # Without label names (HEAD_PRIOR off), a part that cannot fit keeps a prototype too.
    spans_only = data(6, say=lambda i: (False, True))
    model = MULTI.fit_head(SPACE, spans_only, RoundConfig(), None)
    assert [p.kind for p in model.parts] == [ModelKind.PROTOTYPE, ModelKind.HEAD]
    scored = score(model, ["Emma drove to Rome ."])
    assert np.allclose(scored.predictions[0].predictions[0, :, 0], 0.5)  # says nothing


def test_the_paired_terms_are_the_parts_terms_one_after_another() -> None:
    few = data(45)
    good = MULTI.fit_head(SPACE, few, RoundConfig(), names().astype(np.float32))
    cold = MULTI.prototype(SPACE, names().astype(np.float32))
    held = data(45).take(np.arange(30, 45))
    a, b = MULTI.evaluate(good, SPACE, held), MULTI.evaluate(cold, SPACE, held)
    assert a is not None and b is not None
    ours, theirs = MULTI.paired(a, b)
    assert ours.shape == theirs.shape == (30,)  # 15 per part
    assert ours.mean() > theirs.mean()
    other = CompositeSpace((ENTITIES, TOPIC))  # another config: nothing compares
    assert MULTI.evaluate(good, other, held) is None


def test_scores_of_chunks_join_part_by_part() -> None:
    model = MULTI.prototype(SPACE, names().astype(np.float32))
    one, two = score(model, ["a b ."]), score(model, ["c d .", "e f ."])
    both = joined([one, two])
    assert isinstance(both.predictions, ScoredParts) and len(both) == 3
    assert both.predictions[0].predictions.shape[0] == 3
    assert len(both.predictions[1].predictions) == 3


def test_a_lora_round_gives_each_part_an_adapter_that_loads_back(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ls_backend.core.embeddings import resolve_model_path
    from ls_backend.core.lora import LoraTrainConfig

    backbone = tmp_path / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("embedded"))
    tokenizer.save_pretrained(backbone)
    torch.manual_seed(0)
    tiny = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    BertModel(tiny).save_pretrained(backbone)
    lora = LoraTrainConfig(backbone=str(backbone), max_length=16, epochs=2, min_steps=0,
                           batch_size=8)  # fmt: skip
    registry = Registry(tmp_path / "models")
    labels = names().astype(np.float32)
    prototype = MULTI.prototype(SPACE, labels)
    prototype.version = save_prototype(registry, prototype, "test", MULTI.kind)
    config = RoundConfig(eval_min_labels=30)
    head = run_round(MULTI, "head", registry, SPACE, data(45), lambda: prototype, config,
                     label_embeddings=labels)  # fmt: skip
    serving = MULTI.load(registry.path(head.version), head.version)
    result = run_round(MULTI, "lora", registry, SPACE, data(45), lambda: serving,
                       RoundConfig(eval_min_labels=30, lora=lora), label_embeddings=labels)  # fmt: skip
    assert result.kind is ModelKind.LORA
    model = MULTI.load(registry.path(result.version), result.version)
    assert all(p.lora is not None for p in model.parts)
    assert model.family == f"lora:{backbone}+lora:{backbone}"
    assert model.without_adapter().kind is ModelKind.HEAD
    scored = score(model, ["Carol drove to Vienna on day 99 ."])
    assert scored.uncertainty.shape == (1,)
