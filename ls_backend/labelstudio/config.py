"""Label Studio label config -> what to read from a task and an annotation, and what to write
back, per control tag: each kind of task registers a reader for its tags (``READERS``).

Parsed with label-studio-sdk's own ``LabelInterface``, so we accept exactly the configs Label
Studio itself accepts.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from label_studio_sdk.label_interface import LabelInterface

from ls_backend.core.composite import CompositeSpace, Part
from ls_backend.core.labels import LabelSpace
from ls_backend.core.spans.types import Span, SpanLabelSpace
from ls_backend.core.spans.validation import check_regions
from ls_backend.core.tasks import TaskKind

log = logging.getLogger(__name__)

TEXT_TAGS = {"text", "hypertext"}
_TAG = re.compile(r"<[^>]+>")


class ConfigError(ValueError):
    """The label config has nothing this backend can predict."""


class TaskError(ValueError):
    """A task lacks the data the label config points at."""


class NotServed(ValueError):
    """A tag the backend does not predict for, and why (a reader or a text field says so)."""


class LabelConfig(Protocol):
    """One control of a label config that the backend predicts and learns."""

    kind: TaskKind
    from_name: str  # the control tag
    to_name: str  # the object tag it is bound to
    space: Any  # the kind's label space

    def text_of(self, task: dict[str, Any]) -> str:
        """The text of a task (``TaskError`` when it has none)."""
        ...

    def labels_of(self, result: Any) -> Any | None:
        """What an annotation's result says for this control; None when it is not a label
        (nothing for our tag, or malformed)."""
        ...

    def check(self, text: str, labels: Any) -> tuple[Any | None, list[str]]:
        """What of ``labels_of``'s answer trains on ``text`` (None: nothing, the annotation is
        skipped) and what is wrong in it, one line each (stored anyway; never an error)."""
        ...

    def result_item(self, value: Any, **extra: Any) -> dict[str, Any]:
        """One prediction result item in Label Studio's format."""
        ...


@dataclass(frozen=True)
class TextField:
    """Where a control's text is: ``task["data"][value_key]``, HTML or plain."""

    value_key: str
    is_html: bool
    max_chars: int | None  # a text is cut to this before anything tokenizes it

    @classmethod
    def of(cls, obj: Any, max_chars: int | None) -> TextField:
        """The task field an object tag shows, as Label Studio reads its ``value``: ``$name``
        is ``task.data.name``; without the ``$`` it is a fixed text, the same for every task
        (the SDK's ``value_name`` drops the first letter of it: ``plain`` -> ``lain``)."""
        value = str(obj.attr.get("value") or "").strip()
        what = f"{obj.tag} '{obj.name}'"
        if not value.startswith("$") or len(value) < 2:
            raise NotServed(f"{what} shows the fixed text {value[:40]!r}, not a task field ($name)")
        if str(obj.attr.get("valueType", "text")).lower() == "url":
            raise NotServed(f"{what} loads its text from a URL (valueType=url): not supported")
        return cls(value[1:], obj.tag.lower() == "hypertext", max_chars)

    def text_of(self, task: dict[str, Any]) -> str:
        data = task.get("data")
        if not isinstance(data, dict) or self.value_key not in data:
            raise TaskError(f"task {task.get('id')} has no data field '{self.value_key}'")
        value = data[self.value_key]
        if not isinstance(value, str):
            raise TaskError(f"task {task.get('id')}: data.{self.value_key} is not a string")
        value = value[: self.max_chars]  # a 10 MB text costs seconds and GBs in the tokenizer
        if self.is_html:
            value = html.unescape(_TAG.sub(" ", value))
        if not value.strip():
            raise TaskError(f"task {task.get('id')}: data.{self.value_key} is empty")
        return value


@dataclass(frozen=True)
class ClassificationConfig:
    """``<Choices>`` bound to a ``<Text>`` or ``<HyperText>``."""

    from_name: str
    to_name: str
    field: TextField
    space: LabelSpace
    kind: TaskKind = TaskKind.CLASSIFICATION

    @classmethod
    def read(cls, control: Any, obj: Any, field: TextField) -> ClassificationConfig:
        """A task-level ``<Choices>``; one with ``perRegion`` labels regions (spans) one by one,
        not the task, so it is not this kind's."""
        if str(control.attr.get("perRegion", "false")).lower() == "true":
            raise NotServed(f"Choices '{control.name}' is per region (perRegion), not per task")
        labels = tuple(control.labels)
        multi = str(control.attr.get("choice", "single")).lower() == "multiple"
        try:
            space = LabelSpace(labels, multi_label=multi)
        except ValueError as exc:
            raise ConfigError(f"Choices '{control.name}': {exc}") from exc
        return cls(control.name, obj.name, field, space)

    def text_of(self, task: dict[str, Any]) -> str:
        return self.field.text_of(task)

    def labels_of(self, result: Any) -> list[str] | None:
        """The choices an annotation's result picked for our Choices tag; anything malformed
        (an item that is not an object, a null value or choices) picks nothing. Picking
        nothing is a label only where several may apply (none does)."""
        chosen: list[str] = []
        for item in result if isinstance(result, list) else []:
            if not isinstance(item, dict):
                continue
            if item.get("from_name") == self.from_name and item.get("type") == "choices":
                value = item.get("value")
                picked = value.get("choices") if isinstance(value, dict) else None
                chosen.extend(c for c in picked or [] if isinstance(c, str))
        known = [c for c in chosen if c in self.space.labels]
        return known if known or self.space.multi_label else None

    def check(self, text: str, labels: list[str]) -> tuple[list[str] | None, list[str]]:
        return labels, []  # ``labels_of`` kept the known choices already

    def result_item(self, value: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "from_name": self.from_name,
            "to_name": self.to_name,
            "type": "choices",
            "value": {"choices": value},
            **extra,
        }


@dataclass(frozen=True)
class Regions:
    """One annotation's ``labels`` regions for a ``<Labels>`` control (their ``value``s),
    and what else it holds that is no region of ours (relations, other result types)."""

    values: list[dict[str, Any]]
    others: list[str]


@dataclass(frozen=True)
class SpanConfig:
    """``<Labels>`` bound to a ``<Text>``: character spans, one label each."""

    from_name: str
    to_name: str
    field: TextField
    space: SpanLabelSpace
    kind: TaskKind = TaskKind.SPANS

    @classmethod
    def read(cls, control: Any, obj: Any, field: TextField) -> SpanConfig:
        if field.is_html:  # HyperText regions are XPath ranges, not offsets into a text
            raise NotServed(f"Labels '{control.name}' on HyperText: only <Text> is served")
        try:
            space = SpanLabelSpace(tuple(control.labels))
        except ValueError as exc:
            raise ConfigError(f"Labels '{control.name}': {exc}") from exc
        return cls(control.name, obj.name, field, space)

    def text_of(self, task: dict[str, Any]) -> str:
        return self.field.text_of(task)

    def labels_of(self, result: Any) -> Regions | None:
        """Our regions (none: "no entity here" is a label too); None for a result that is no
        list. Items of other controls that label our text (relations, other types) are kept
        aside, to be said once."""
        if not isinstance(result, list):
            return None
        values, others = [], []
        for item in result:
            if not isinstance(item, dict):
                others.append("a result item that is not an object")
            elif item.get("from_name") == self.from_name and item.get("type") == "labels":
                value = item.get("value")
                values.append(value if isinstance(value, dict) else {})
            elif item.get("type") == "relation" or item.get("to_name") == self.to_name:
                others.append(f"a {item.get('type')!r} result ({item.get('from_name')!r})")
        return Regions(values, others)

    def check(self, text: str, labels: Regions) -> tuple[list[Span] | None, list[str]]:
        """The annotation's spans, or None when any region is bad (dropping that region alone
        would teach "no entity here" where the annotator marked one); other items are
        skipped alone."""
        spans, problems = check_regions(text, labels.values, self.space.labels)
        lines = [f"{p.problem}: region {p.index}: {p.detail}" for p in problems]
        lines += [f"other_result: {other} skipped" for other in labels.others]
        return (None if problems else spans), lines

    def result_item(self, value: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "from_name": self.from_name,
            "to_name": self.to_name,
            "type": "labels",
            "value": value,
            **extra,
        }


#: Control tag (lower case) -> how to read it, for the object tags it may be bound to
#: (``NotServed`` when this control, as configured, is not one the reader serves).
Reader = Callable[[Any, Any, TextField], LabelConfig]
READERS: dict[str, Reader] = {"choices": ClassificationConfig.read, "labels": SpanConfig.read}


@dataclass(frozen=True)
class CompositeConfig:
    """Several served controls on one text (``<Choices>`` and ``<Labels>``, two ``<Labels>``):
    a part per control, read by its own reader (``parts``), in the served order.

    An annotation labels a part when it holds a result item of that control; one that holds
    items of other controls only says nothing for it: a ``<Labels>`` control without a region
    beside a chosen class is not "no entity here" (the annotator may have answered only the
    choice; read as "no entity", every such annotation would teach the span model to miss
    entities). An annotation with no item of any control reads as each control alone reads
    it: "no entity here" for every ``<Labels>`` (as in a span-only project), nothing for a
    single-choice ``<Choices>``."""

    parts: tuple[LabelConfig, ...]
    space: CompositeSpace
    #: Controls of the config that are not served, and why (bound to another text).
    not_served: tuple[str, ...] = ()
    kind: TaskKind = TaskKind.MULTI

    @classmethod
    def of(cls, parts: list[LabelConfig], not_served: list[str]) -> CompositeConfig:
        space = CompositeSpace(tuple(Part(p.from_name, p.kind, p.space) for p in parts))
        return cls(tuple(parts), space, tuple(not_served))

    @property
    def from_name(self) -> str:
        return self.parts[0].from_name

    @property
    def to_name(self) -> str:
        return self.parts[0].to_name

    def text_of(self, task: dict[str, Any]) -> str:
        return self.parts[0].text_of(task)  # every part reads the same text

    def labels_of(self, result: Any) -> tuple[Any | None, ...] | None:
        """What the annotation says for each part (None: nothing for that control); None when
        it says nothing for any."""
        if not isinstance(result, list):
            return None
        names = {p.from_name for p in self.parts}
        said = {i.get("from_name") for i in result if isinstance(i, dict)} & names
        chosen = []
        for part in self.parts:
            if said and part.from_name not in said:
                chosen.append(None)
                continue
            # A sibling control's items are no stray result of this one.
            own = [
                i
                for i in result
                if not isinstance(i, dict) or i.get("from_name") not in names - {part.from_name}
            ]
            chosen.append(part.labels_of(own))
        return tuple(chosen) if any(c is not None for c in chosen) else None

    def check(
        self, text: str, labels: tuple[Any | None, ...]
    ) -> tuple[tuple[Any | None, ...] | None, list[str]]:
        """Each part's check; a part whose labels are bad does not train (the others do). The
        problem lines name the control after their kind."""
        kept, lines = [], []
        for part, chosen in zip(self.parts, labels, strict=True):
            if chosen is None:
                kept.append(None)
                continue
            good, found = part.check(text, chosen)
            kept.append(good)
            for line in found:
                kind, _, rest = line.partition(":")
                lines.append(f"{kind}: {part.from_name}:{rest}")
        return (tuple(kept) if any(k is not None for k in kept) else None), lines

    def result_item(self, value: Any, **extra: Any) -> dict[str, Any]:
        return self.parts[0].result_item(value, **extra)


def _served(interface: Any, max_chars: int | None) -> tuple[list[LabelConfig], list[str]]:
    """Every control the backend serves, by ``READERS``' order of tags, then the config's
    order (each on the first object tag it may be bound to); and why the others are not."""
    objects = {obj.name: obj for obj in interface.objects}
    served: list[LabelConfig] = []
    passed: list[str] = []  # why the controls that might have been ours are not
    controls = sorted(
        (c for c in interface.controls if c.tag.lower() in READERS),
        key=lambda c: list(READERS).index(c.tag.lower()),
    )  # stable: the config's order within a tag
    for control in controls:
        reader = READERS[control.tag.lower()]
        for target in control.to_name or []:
            obj = objects.get(target)
            if obj is None or obj.tag.lower() not in TEXT_TAGS:
                continue
            try:
                served.append(reader(control, obj, TextField.of(obj, max_chars)))
                break
            except NotServed as exc:
                passed.append(str(exc))
    return served, passed


@lru_cache(maxsize=64)  # parsed on every /setup and /predict call: Label Studio resends it
def parse_config(label_config: str, max_chars: int | None = None) -> LabelConfig:
    """What of ``label_config`` the backend serves: its one control's reader when it has one
    (``<Choices>`` comes first in ``READERS``), a ``CompositeConfig`` of every served control
    that reads the first one's text when it has several; controls on another text are not
    served (logged, and listed in ``not_served``)."""
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises assorted errors on bad XML
        raise ConfigError(f"label config could not be parsed: {exc}") from exc
    served, passed = _served(interface, max_chars)
    if not served:
        problem = (
            "label config needs a <Choices> tag bound (toName) to a <Text> or <HyperText> "
            "tag, or a <Labels> tag bound to a <Text> tag"
        )
        raise ConfigError(f"{problem} ({'; '.join(dict.fromkeys(passed))})" if passed else problem)
    first = served[0]
    same = [c for c in served if c.to_name == first.to_name]
    other = [
        f"{c.from_name} is bound to the text '{c.to_name}', not '{first.to_name}' (several "
        "controls are served on one text only)"
        for c in served
        if c.to_name != first.to_name
    ]
    for line in other:
        log.warning("label config: %s: not served", line)
    if len(same) == 1:
        return first
    return CompositeConfig.of(same, other)
