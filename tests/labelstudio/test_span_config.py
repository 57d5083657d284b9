"""``<Labels>`` on a ``<Text>``: the reader, what an annotation trains, the region format."""

import numpy as np
import pytest

from ls_backend.core.spans.task import SpanItem
from ls_backend.core.spans.types import Span, SpanLabelSpace
from ls_backend.core.tasks import Scored, TaskKind
from ls_backend.labelstudio.config import ConfigError, parse_config
from ls_backend.labelstudio.predictions import predictions, summary

NER = """<View>
  <Labels name="label" toName="text">
    <Label value="PER" background="red"/><Label value="ORG"/><Label value="LOC"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""


def test_the_ner_template_is_a_span_project_in_config_order():
    config = parse_config(NER)
    assert config.kind is TaskKind.SPANS
    assert (config.from_name, config.to_name) == ("label", "text")
    assert config.space == SpanLabelSpace(("PER", "ORG", "LOC"))
    assert config.text_of({"id": 1, "data": {"text": "Ann met Bo"}}) == "Ann met Bo"


@pytest.mark.parametrize(
    "xml",
    [
        '<View><Labels name="l" toName="h"><Label value="A"/></Labels>'
        '<HyperText name="h" value="$html"/></View>',
        '<View><Labels name="l" toName="i"><Label value="A"/></Labels>'
        '<Image name="i" value="$img"/></View>',
    ],
)
def test_labels_on_anything_but_a_text_are_refused(xml):
    with pytest.raises(ConfigError):
        parse_config(xml)


def region(source, start, end, label, from_name="label", **override):
    value = {"start": start, "end": end, "text": source[start:end], "labels": [label], **override}
    return {"from_name": from_name, "to_name": "text", "type": "labels", "value": value}


def test_an_annotation_trains_its_spans_or_nothing_and_says_what_is_wrong():
    config = parse_config(NER)
    text = "Ann works at Acme in Oslo"
    good = [region(text, 21, 25, "LOC"), region(text, 0, 3, "PER")]
    spans, problems = config.check(text, config.labels_of(good))
    assert spans == [Span(0, 3, "PER"), Span(21, 25, "LOC")] and problems == []
    # Zero regions: "no entity here" is a label.
    assert config.check(text, config.labels_of([])) == ([], [])
    relation = {"type": "relation", "from_id": "a", "to_id": "b"}
    spans, problems = config.check(text, config.labels_of([*good, relation]))
    assert len(spans) == 2 and [p.split(":")[0] for p in problems] == ["other_result"]
    mismatch = [region(text, 0, 3, "PER", text="Bob")]
    spans, problems = config.check(text, config.labels_of(mismatch))
    assert spans is None and problems[0].startswith("text_mismatch")
    assert config.labels_of("not a list") is None


def test_predicted_regions_are_label_studio_spans_with_exact_offsets_and_scores():
    config = parse_config(NER)
    texts = ["🙂  Ann  works at Acme", "nothing here"]
    items = [
        SpanItem(texts[0], [Span(3, 6, "PER", 0.91), Span(17, 21, "ORG", 0.6)]),
        SpanItem(texts[1], []),
    ]
    figures = {
        "entropy_sum": np.array([1.5, 0.1]),
        "least_confident_span": np.array([0.4, 0.05]),
    }
    model = type("M", (), {"version": "v0002-head"})()
    scored = Scored(model, items, figures, figures["entropy_sum"])
    first, second = predictions(config, scored)
    assert first["model_version"] == "v0002-head" and first["score"] == pytest.approx(0.6)
    values = [r["value"] for r in first["result"]]
    assert values == [
        {"start": 3, "end": 6, "text": "Ann", "labels": ["PER"]},
        {"start": 17, "end": 21, "text": "Acme", "labels": ["ORG"]},
    ]
    assert [r["score"] for r in first["result"]] == [0.91, 0.6]
    assert all(r["type"] == "labels" and r["from_name"] == "label" for r in first["result"])
    assert first["result"][0]["uncertainty"]["entropy_sum"] == 1.5
    # What we send is what Label Studio sends back: it trains as is.
    spans, problems = config.check(texts[0], config.labels_of(first["result"]))
    assert problems == [] and [s.key() for s in spans] == [s.key() for s in items[0].spans]
    assert second["result"] == [] and second["score"] == pytest.approx(0.95)
    assert summary(config, first) == "Ann (PER), Acme (ORG)"
