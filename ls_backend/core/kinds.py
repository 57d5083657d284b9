"""The kinds of model a version holds, named once: in version names (``v0007-head``), in
``info.json``, and in every decision that depends on the kind (promotion, re-ranking)."""

from __future__ import annotations

import re
from enum import Enum

_IN_NAME = re.compile(r"v\d{4,}-([a-z]+)")


class ModelKind(str, Enum):
    #: Zero-shot: label-name prototypes in embedding space (before any label).
    PROTOTYPE = "prototype"
    #: The light head on frozen embeddings (PRepAL), refitted after every label.
    HEAD = "head"
    #: A LoRA adapter, with a head beside it as STAR's base model.
    LORA = "lora"

    @classmethod
    def of(cls, name: str) -> ModelKind | None:
        """The kind a model version's name (``v0007-head``) or a ranking version that names
        one (``rank-v0007-head-<time>-<n>``) says; None when it names none."""
        match = _IN_NAME.search(name)
        try:
            return cls(match.group(1)) if match else None
        except ValueError:
            return None
