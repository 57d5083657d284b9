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


#: Control tag (lower case) -> how to read it, for the object tags it may be bound to.
Reader = Callable[[Any, Any, TextField], LabelConfig]
READERS: dict[str, Reader] = {"choices": ClassificationConfig.read}


@lru_cache(maxsize=64)  # parsed on every /setup and /predict call: Label Studio resends it
def parse_config(label_config: str, max_chars: int | None = None) -> LabelConfig:
    """The first control of ``label_config`` the backend serves."""
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises assorted errors on bad XML
        raise ConfigError(f"label config could not be parsed: {exc}") from exc
    objects = {obj.name: obj for obj in interface.objects}
    for control in interface.controls:
        reader = READERS.get(control.tag.lower())
        if reader is None:
            continue
        for target in control.to_name or []:
            obj = objects.get(target)
            if obj is None or obj.tag.lower() not in TEXT_TAGS or not obj.value_name:
                continue
            field = TextField(obj.value_name, obj.tag.lower() == "hypertext", max_chars)
            return reader(control, obj, field)
    raise ConfigError(
        "label config needs a <Choices> tag bound (toName) to a <Text> or <HyperText> tag"
    )
