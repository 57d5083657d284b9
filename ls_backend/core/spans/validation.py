"""Bad span annotations, found before they train anything.

Label Studio stores whatever its frontend or an API client sends. A region can point
outside the text, end before it starts, quote other text than its offsets cover, overlap
another region, or carry a label the config no longer has. ``check_regions`` reads the
``value`` of each ``type: labels`` result and says what is wrong with each; the caller stores
everything and trains only on annotations without problems (``usable``): dropping a bad
region alone would teach "no entity here" where the annotator marked one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ls_backend.core.spans.types import Span

#: What can be wrong with one region.
Problem = Literal[
    "malformed",  # offsets missing or not integers, labels missing or not a list of strings
    "out_of_bounds",  # start < 0 or end > len(text)
    "empty",  # end <= start
    "text_mismatch",  # value.text differs from text[start:end]
    "overlap",  # shares characters with another region (overlapping or nested)
    "unknown_label",  # a label this label space does not have
    "several_labels",  # more than one label on one region: one tag per token cannot say it
]
PROBLEMS: tuple[str, ...] = Problem.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RegionProblem:
    index: int  # position of the region in the list given
    problem: Problem
    detail: str


def _offsets(value: Mapping[str, Any]) -> tuple[int, int] | None:
    start, end = value.get("start"), value.get("end")
    # bool is an int in Python; a JSON true is no offset.
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        return None
    assert isinstance(start, int) and isinstance(end, int)
    return start, end


def _labels(value: Mapping[str, Any]) -> list[str] | None:
    labels = value.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return None
    return labels


def check_regions(
    text: str, values: Sequence[Mapping[str, Any]], labels: Sequence[str]
) -> tuple[list[Span], list[RegionProblem]]:
    """The spans of the well-formed regions, and every problem found (several per region
    possible). ``values``: the ``value`` dicts of one annotation's ``labels`` results for one
    control (``start``, ``end``, ``labels``, optional ``text``); ``labels``: the control's.
    Spans come sorted by position; a region with a problem gives no span."""
    known = set(labels)
    problems: list[RegionProblem] = []
    candidates: list[tuple[int, Span]] = []
    for i, value in enumerate(values):
        offsets, names = _offsets(value), _labels(value)
        if offsets is None or names is None or not names:
            problems.append(RegionProblem(i, "malformed", f"value {dict(value)!r}"))
            continue
        start, end = offsets
        bad = False
        if start < 0 or end > len(text):
            problems.append(
                RegionProblem(i, "out_of_bounds", f"[{start}, {end}) on a text of {len(text)}")
            )
            bad = True
        if end <= start:
            problems.append(RegionProblem(i, "empty", f"end {end} <= start {start}"))
            bad = True
        quoted = value.get("text")
        if not bad and quoted is not None and quoted != text[start:end]:
            problems.append(
                RegionProblem(
                    i, "text_mismatch", f"{quoted!r} != text[{start}:{end}] {text[start:end]!r}"
                )
            )
            bad = True
        unknown = [n for n in names if n not in known]
        if unknown:
            problems.append(RegionProblem(i, "unknown_label", f"{unknown} not in the config"))
            bad = True
        if len(set(names)) > 1:
            problems.append(RegionProblem(i, "several_labels", f"{names}"))
            bad = True
        if not bad:
            candidates.append((i, Span(start, end, names[0])))
    candidates.sort(key=lambda item: item[1])
    # The same region twice (a double click) says nothing new: keep one, no problem.
    unique: dict[tuple[int, int, str], tuple[int, Span]] = {}
    for i, span in candidates:
        unique.setdefault(span.key(), (i, span))
    candidates = list(unique.values())
    clean: list[Span] = []
    overlapping: set[int] = set()
    # Sorted by start: a region overlaps an earlier one iff it starts before the furthest
    # end seen so far.
    reach, reach_owner = -1, -1
    for i, span in candidates:
        if span.start < reach:
            overlapping.update((i, reach_owner))
        if span.end > reach:
            reach, reach_owner = span.end, i
    for i, span in candidates:
        if i in overlapping:
            problems.append(
                RegionProblem(i, "overlap", f"[{span.start}, {span.end}) overlaps another region")
            )
        else:
            clean.append(span)
    problems.sort(key=lambda p: p.index)
    return clean, problems


def usable(
    text: str, values: Sequence[Mapping[str, Any]], labels: Sequence[str]
) -> list[Span] | None:
    """The spans to train on, or None when any region has a problem (skip the annotation)."""
    spans, problems = check_regions(text, values, labels)
    return None if problems else spans
