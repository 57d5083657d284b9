"""Several controls on one text: each is served (a part), an annotation trains the parts it
labels, and one prediction carries every part's result items."""

import numpy as np
import pytest

from ls_backend.core.spans.types import Span
from ls_backend.core.task_registry import task_of
from ls_backend.core.tasks import TaskKind
from ls_backend.labelstudio.config import (
    ClassificationConfig,
    CompositeConfig,
    SpanConfig,
    parse_config,
)
from ls_backend.labelstudio.predictions import predictions, summary

BOTH = """<View>
  <Text name="text" value="$text"/>
  <Choices name="topic" toName="text"><Choice value="travel"/><Choice value="weather"/></Choices>
  <Labels name="entities" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>
</View>"""
TWO_LABELS = """<View>
  <Labels name="people" toName="text"><Label value="PER"/></Labels>
  <Labels name="places" toName="text"><Label value="LOC"/><Label value="GPE"/></Labels>
  <Text name="text" value="$text"/>
</View>"""
TEXT = "Ann flew to Rome ."


def choice(name, value="travel"):
    return {"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [value]}}


def region(name, start, end, label):
    value = {"start": start, "end": end, "text": TEXT[start:end], "labels": [label]}
    return {"from_name": name, "to_name": "text", "type": "labels", "value": value}


def test_choices_and_labels_on_one_text_are_both_served():
    config = parse_config(BOTH)
    assert isinstance(config, CompositeConfig) and config.kind is TaskKind.MULTI
    topic, entities = config.parts
    assert isinstance(topic, ClassificationConfig) and isinstance(entities, SpanConfig)
    assert config.space.names() == ["topic", "entities"]
    assert config.space.labels == ("travel", "weather", "PER", "LOC")
    assert config.text_of({"id": 1, "data": {"text": TEXT}}) == TEXT


def test_two_labels_controls_each_get_a_part():
    config = parse_config(TWO_LABELS)
    assert [(p.from_name, p.space.labels) for p in config.parts] == [
        ("people", ("PER",)),
        ("places", ("LOC", "GPE")),
    ]


def test_a_single_control_config_is_read_as_before():
    one = BOTH.replace('<Labels name="entities" toName="text"><Label value="PER"/>'
                       '<Label value="LOC"/></Labels>', "")  # fmt: skip
    assert isinstance(parse_config(one), ClassificationConfig)


def test_a_control_on_another_text_is_not_served_and_says_why():
    xml = """<View>
      <Text name="text" value="$text"/><Text name="title" value="$title"/>
      <Choices name="topic" toName="text"><Choice value="a"/><Choice value="b"/></Choices>
      <Labels name="ents" toName="text"><Label value="PER"/></Labels>
      <Labels name="heads" toName="title"><Label value="ORG"/></Labels>
    </View>"""
    config = parse_config(xml)
    assert [p.from_name for p in config.parts] == ["topic", "ents"]
    assert len(config.not_served) == 1 and "heads" in config.not_served[0]
    # Only one left on the first text: that control alone, as a single-control config.
    alone = xml.replace('<Labels name="ents" toName="text"><Label value="PER"/></Labels>', "")
    assert isinstance(parse_config(alone), ClassificationConfig)


def test_what_an_annotation_labels_per_control():
    config = parse_config(BOTH)
    both = config.labels_of([choice("topic"), region("entities", 0, 3, "PER")])
    assert both[0] == ["travel"] and [v["start"] for v in both[1].values] == [0]
    assert both[1].others == []  # the sibling control's choice is no stray result
    # Only a choice: the span part says nothing ("no entity" is not read into it).
    assert config.labels_of([choice("topic")]) == (["travel"], None)
    # Only regions: the classifier says nothing.
    only_regions = config.labels_of([region("entities", 12, 16, "LOC")])
    assert only_regions[0] is None and len(only_regions[1].values) == 1
    # Nothing at all: "no entity here" for the span part, as in a span-only project.
    empty = config.labels_of([])
    assert empty[0] is None and empty[1].values == []
    assert config.labels_of("not a list") is None
    # An unknown choice alone: nothing usable for any part.
    assert config.labels_of([choice("topic", "sports")]) is None


def test_a_bad_region_drops_that_part_only_and_names_the_control():
    config = parse_config(BOTH)
    labels = config.labels_of([choice("topic"), region("entities", 0, 99, "PER")])
    kept, problems = config.check(TEXT, labels)
    assert kept == (["travel"], None)
    assert len(problems) == 1 and problems[0].startswith("out_of_bounds: entities:")
    bad_only = config.labels_of([region("entities", 0, 99, "PER")])
    assert config.check(TEXT, bad_only)[0] is None


def test_one_prediction_carries_every_part_with_one_score():
    config = parse_config(BOTH)
    task = task_of(config.kind)
    names = np.eye(4, 8, dtype=np.float32)
    model = task.prototype(config.space, names)
    model.version = "v0001-prototype"
    scored = task.score(model, [TEXT], np.eye(1, 8, dtype=np.float32), mc_samples=1,
                        star_decay=0.5)  # fmt: skip
    (prediction,) = predictions(config, scored)
    assert prediction["model_version"] == "v0001-prototype"
    (item,) = prediction["result"]  # zero-shot choice; no span before the first entity
    assert item["from_name"] == "topic" and item["type"] == "choices"
    assert item["uncertainty"]["combined"] == pytest.approx(float(scored.uncertainty[0]), abs=1e-6)
    assert prediction["score"] == item["score"]  # the span part is sure of "nothing"
    assert summary(config, prediction).startswith("topic: ")


def test_the_queue_ranks_a_pool_by_the_combined_uncertainty(tmp_path):
    from ls_backend.core.configs import RoundConfig
    from ls_backend.core.tasks import LabeledData
    from ls_backend.labelstudio.sync import TaskPool, rank_front
    from ls_backend.settings import Settings

    config = parse_config(BOTH)
    task = task_of(config.kind)
    texts = ["Ann flew to Rome .", "Bob flew to Oslo .", "Cy flew to Riga ."]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8)).astype(np.float32)
    targets = [
        (["travel"] if i < 2 else ["weather"],
         [] if i == 2 else [Span(0, len(t.split()[0]), "PER")])
        for i, t in enumerate(texts)
    ]  # fmt: skip
    data = LabeledData([0, 1, 2], [0, 1, 2], texts, task.targets(config.space, targets), x[:3])
    model = task.fit_head(config.space, data, RoundConfig(head_prior=False), None)
    model.version = "v0002-head"
    pool = TaskPool(8)
    pool.ids = np.arange(6, dtype=np.int64)
    pool.texts = texts + ["Dee flew to Kyiv .", "It snowed .", "Eve met Fay in Bern ."]
    pool.embeddings = x
    labeled = np.array([True, True, True, False, False, False])
    front = rank_front(model, config, pool, labeled, Settings(model_dir=tmp_path))
    assert sorted(front.tasks) == [3, 4, 5]
    assert all(p["result"] and p["result"][0]["type"] == "choices" for p in front.results)
    assert all(label.startswith("topic: ") for label in front.labels)
    assert all(0.0 <= u <= 1.0 for u in front.uncertainty)


def test_two_choices_on_one_text_each_get_a_classifier():
    xml = BOTH.replace(
        '<Labels name="entities" toName="text"><Label value="PER"/><Label value="LOC"/></Labels>',
        '<Choices name="mood" toName="text" choice="multiple"><Choice value="calm"/></Choices>',
    )
    config = parse_config(xml)
    assert [(p.from_name, p.kind) for p in config.parts] == [
        ("topic", TaskKind.CLASSIFICATION),
        ("mood", TaskKind.CLASSIFICATION),
    ]
    # Only the topic answered: the multi-label part says nothing (not "none applies").
    assert config.labels_of([choice("topic")]) == (["travel"], None)
