"""A model version as it serves: the frozen-embedding head, and a LoRA adapter once one wins.

Every version carries a head (zero-shot prototypes or the light head): it gives
the base uncertainty that STAR mixes with the LoRA model's, and serves alone
until an adapter is promoted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.heads import LinearHead, PrototypeHead, load_space, save_space
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings, LabelSpace, Probs

if TYPE_CHECKING:
    from ls_backend.core.lora import LoraClassifier

Head = PrototypeHead | LinearHead
_HEADS: dict[ModelKind, type[PrototypeHead] | type[LinearHead]] = {
    PrototypeHead.kind: PrototypeHead,
    LinearHead.kind: LinearHead,
}


@dataclass
class Prediction:
    probs: Probs  # what serves: the adapter's MC samples when there is one, else the head's
    base_probs: Probs  # the head's, for STAR's base uncertainty


@dataclass
class ModelVersion:
    version: str
    space: LabelSpace
    head: Head
    lora: LoraClassifier | None = None
    lora_round: int = 0  # LoRA versions promoted before this one (STAR's t)

    @property
    def kind(self) -> ModelKind:
        return ModelKind.LORA if self.lora is not None else self.head.kind

    @property
    def family(self) -> str:
        """``head`` (zero-shot or the light head), or the fine-tuned classifier's method and
        backbone (``lora:embedded``, ``full:/models/mpnet``)."""
        if self.lora is None:
            return "head"
        return f"{self.lora.config.method}:{self.lora.config.backbone}"

    def without_adapter(self) -> ModelVersion:
        return ModelVersion(self.version, self.space, self.head) if self.lora else self

    def predict(
        self, texts: Sequence[str], embeddings: Embeddings, mc_samples: int | None = None
    ) -> Prediction:
        base = self.head.predict_proba(embeddings)
        if self.lora is None:
            return Prediction(base, base)
        return Prediction(self.lora.predict_proba(list(texts), mc_samples=mc_samples), base)

    def save(self, path: Path) -> None:
        save_space(self.space, path)
        (path / "head").mkdir()
        self.head.save(path / "head")
        (path / "head" / "kind").write_text(self.head.kind.value)
        if self.lora is not None:
            self.lora.save(path / "lora")
        (path / "serving.json").write_text(json.dumps({"lora_round": self.lora_round}))

    @classmethod
    def load(cls, path: Path, version: str, device: str | None = None) -> ModelVersion:
        space = load_space(path)
        kind = ModelKind((path / "head" / "kind").read_text().strip())
        head = _HEADS[kind].load(path / "head", space)
        lora = None
        if (path / "lora").is_dir():
            from ls_backend.core.lora import LoraClassifier

            lora = LoraClassifier.load(path / "lora", device=device)
        serving = json.loads((path / "serving.json").read_text())
        return cls(version, space, head, lora, int(serving["lora_round"]))


def decided_labels(space: LabelSpace, probs: Probs) -> tuple[list[list[str]], NDArray[np.float32]]:
    """Chosen label names per item, and the confidence of what was chosen."""
    chosen = space.decide(probs)
    mean = probs.mean(axis=2)
    names = [[space.labels[i] for i in row] for row in chosen]
    if space.multi_label:
        # Confidence in the whole decision: every label on or off as chosen.
        certainty = np.where(mean >= 0.5, mean, 1 - mean)
        confidence = certainty.min(axis=1)
    else:
        confidence = mean.max(axis=1)
    return names, confidence.astype(np.float32)
