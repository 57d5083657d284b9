"""Label Studio label config -> what to read from a task and an annotation, and what to write
back, per control tag: each kind of task registers a reader for its tags (``READERS``).

Parsed with label-studio-sdk's own ``LabelInterface``, so we accept exactly the configs Label
Studio itself accepts.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from label_studio_sdk.label_interface import LabelInterface

from ls_backend.core.labels import LabelSpace
from ls_backend.core.tasks import TaskKind

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

    def result_item(self, value: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "from_name": self.from_name,
            "to_name": self.to_name,
            "type": "choices",
            "value": {"choices": value},
            **extra,
        }


#: Control tag (lower case) -> how to read it, for the object tags it may be bound to
#: (``NotServed`` when this control, as configured, is not one the reader serves).
Reader = Callable[[Any, Any, TextField], LabelConfig]
READERS: dict[str, Reader] = {"choices": ClassificationConfig.read}


@lru_cache(maxsize=64)  # parsed on every /setup and /predict call: Label Studio resends it
def parse_config(label_config: str, max_chars: int | None = None) -> LabelConfig:
    """The first control of ``label_config`` the backend serves (in the config's order)."""
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises assorted errors on bad XML
        raise ConfigError(f"label config could not be parsed: {exc}") from exc
    objects = {obj.name: obj for obj in interface.objects}
    passed: list[str] = []  # why the controls that might have been ours are not
    for control in interface.controls:
        reader = READERS.get(control.tag.lower())
        if reader is None:
            continue
        for target in control.to_name or []:
            obj = objects.get(target)
            if obj is None or obj.tag.lower() not in TEXT_TAGS:
                continue
            try:
                return reader(control, obj, TextField.of(obj, max_chars))
            except NotServed as exc:
                passed.append(str(exc))
    problem = "label config needs a <Choices> tag bound (toName) to a <Text> or <HyperText> tag"
    raise ConfigError(f"{problem} ({'; '.join(dict.fromkeys(passed))})" if passed else problem)
