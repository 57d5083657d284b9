"""Label Studio label config -> what to read from a task and what to write back.

Parsed with label-studio-sdk's own ``LabelInterface``, so we accept exactly the
configs Label Studio itself accepts.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from ls_backend.core.labels import LabelSpace

TEXT_TAGS = {"text", "hypertext"}
_TAG = re.compile(r"<[^>]+>")


class ConfigError(ValueError):
    """The label config has nothing this backend can predict."""


class TaskError(ValueError):
    """A task lacks the data the label config points at."""


@dataclass(frozen=True)
class ClassificationConfig:
    from_name: str  # the Choices tag
    to_name: str  # the Text / HyperText tag it is bound to
    value_key: str  # task["data"][value_key] holds the text
    is_html: bool
    space: LabelSpace
    max_chars: int | None = None  # a text is cut to this before anything tokenizes it

    @classmethod
    @lru_cache(maxsize=64)  # parsed on every /setup and /predict call: Label Studio resends it
    def parse(cls, label_config: str, max_chars: int | None = None) -> ClassificationConfig:
        try:
            interface = LabelInterface(label_config)
        except Exception as exc:  # the SDK raises assorted errors on bad XML
            raise ConfigError(f"label config could not be parsed: {exc}") from exc
        objects = {obj.name: obj for obj in interface.objects}
        for control in interface.controls:
            if control.tag.lower() != "choices":
                continue
            for target in control.to_name or []:
                obj = objects.get(target)
                if obj is None or obj.tag.lower() not in TEXT_TAGS or not obj.value_name:
                    continue
                labels = tuple(control.labels)
                multi = str(control.attr.get("choice", "single")).lower() == "multiple"
                try:
                    space = LabelSpace(labels, multi_label=multi)
                except ValueError as exc:
                    raise ConfigError(f"Choices '{control.name}': {exc}") from exc
                is_html = obj.tag.lower() == "hypertext"
                return cls(control.name, obj.name, obj.value_name, is_html, space, max_chars)
        raise ConfigError(
            "label config needs a <Choices> tag bound (toName) to a <Text> or <HyperText> tag"
        )

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

    def labels_of(self, result: Any) -> list[str]:
        """The choices an annotation's result picked for our Choices tag; anything malformed
        (an item that is not an object, a null value or choices) picks nothing."""
        chosen: list[str] = []
        for item in result if isinstance(result, list) else []:
            if not isinstance(item, dict):
                continue
            if item.get("from_name") == self.from_name and item.get("type") == "choices":
                value = item.get("value")
                picked = value.get("choices") if isinstance(value, dict) else None
                chosen.extend(c for c in picked or [] if isinstance(c, str))
        return [c for c in chosen if c in self.space.labels]

    def result_item(self, choices: list[str], **extra: Any) -> dict[str, Any]:
        """One prediction result item in Label Studio's format."""
        return {
            "from_name": self.from_name,
            "to_name": self.to_name,
            "type": "choices",
            "value": {"choices": choices},
            **extra,
        }
