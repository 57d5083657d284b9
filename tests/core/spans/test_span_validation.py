"""Bad regions are found and named, one problem per fault; good ones become spans."""

from __future__ import annotations

from ls_backend.core.spans.types import Span
from ls_backend.core.spans.validation import check_regions, usable

TEXT = "Anna lives in New York 🙂."
LABELS = ["PER", "LOC"]


def region(start, end, label="PER", text=None):
    value = {"start": start, "end": end, "labels": [label] if isinstance(label, str) else label}
    if text is not None:
        value["text"] = text
    return value


def problems_of(values):
    return [(p.index, p.problem) for p in check_regions(TEXT, values, LABELS)[1]]


def test_good_regions_become_sorted_spans() -> None:
    spans, problems = check_regions(
        TEXT, [region(14, 22, "LOC", "New York"), region(0, 4, "PER", "Anna")], LABELS
    )
    assert problems == []
    assert spans == [Span(0, 4, "PER"), Span(14, 22, "LOC")]
    assert usable(TEXT, [region(23, 24, "PER", "🙂")], LABELS) == [Span(23, 24, "PER")]


def test_offsets_outside_the_text_and_empty_regions_are_named() -> None:
    assert problems_of([region(-1, 3)]) == [(0, "out_of_bounds")]
    assert problems_of([region(20, 99)]) == [(0, "out_of_bounds")]
    assert problems_of([region(5, 5), region(6, 2)]) == [(0, "empty"), (1, "empty")]


def test_text_that_does_not_match_the_offsets_is_named() -> None:
    assert problems_of([region(0, 4, "PER", "anna")]) == [(0, "text_mismatch")]


def test_overlapping_and_nested_regions_are_each_named() -> None:
    got = problems_of([region(0, 10), region(5, 13, "LOC"), region(14, 22, "LOC")])
    assert got == [(0, "overlap"), (1, "overlap")]
    nested = problems_of([region(14, 22, "LOC"), region(18, 22, "LOC"), region(0, 4)])
    assert nested == [(0, "overlap"), (1, "overlap")]


def test_the_same_region_twice_is_one_span_not_an_overlap() -> None:
    spans, problems = check_regions(TEXT, [region(0, 4), region(0, 4)], LABELS)
    assert problems == [] and spans == [Span(0, 4, "PER")]


def test_unknown_several_and_malformed_labels_are_named() -> None:
    assert problems_of([region(0, 4, "ORG")]) == [(0, "unknown_label")]
    assert problems_of([region(0, 4, ["PER", "LOC"])]) == [(0, "several_labels")]
    assert problems_of([{"start": "0", "end": 4, "labels": ["PER"]}]) == [(0, "malformed")]
    assert problems_of([{"start": 0, "end": 4}]) == [(0, "malformed")]
    assert problems_of([{"start": True, "end": 4, "labels": ["PER"]}]) == [(0, "malformed")]


def test_one_bad_region_makes_the_annotation_unusable_but_the_good_ones_still_parse() -> None:
    values = [region(0, 4), region(14, 22, "ORG")]
    spans, problems = check_regions(TEXT, values, LABELS)
    assert spans == [Span(0, 4, "PER")] and [p.index for p in problems] == [1]
    assert usable(TEXT, values, LABELS) is None
    assert usable(TEXT, [], LABELS) == []  # no region: "no entity here" is a label
