"""The kind of labeling task, as a registered object: what differs between kinds lives behind
``Task``; the round (``core.training``), the registry, the promotion rule, the store, the
scheduler and the sync never branch on a kind.

A kind supplies, in the core: its model family (zero-shot, the light head, the adapter; fit,
load), how predictions become figures and the uncertainty a queue ranks by (``score``), the
evaluation metric and the per-item terms the paired promotion rule compares. Its Label
Studio half (how a label config and an annotation are read, the result format) registers
beside it in ``labelstudio.config`` and ``labelstudio.predictions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.configs import RoundConfig
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings

#: ``(fraction done, stage)``: how a run reports its progress.
Progress = Callable[[float, str], None]


class NotEnoughLabels(Exception):
    """The round cannot run yet (too few labels or classes); not a failure."""


class TaskKind(str, Enum):
    #: ``<Choices>`` on a text: one label, or several (``choice="multiple"``).
    CLASSIFICATION = "classification"
    #: ``<Labels>`` on a text: spans of characters, one label each (named entities).
    SPANS = "spans"
    #: Several controls on one text (``<Choices>`` and ``<Labels>``, two ``<Labels>``): a model
    #: of its kind per control, predicted and trained together (``core.composite``).
    MULTI = "multi"


class Model(Protocol):
    """A model version as it serves, whatever the task kind."""

    version: str
    space: Any  # the kind's label space: models of other spaces never compare
    lora_round: int  # LoRA versions promoted before this one (STAR's t)

    @property
    def kind(self) -> ModelKind: ...

    @property
    def lora(self) -> Any: ...  # the adapter (with its ``fit_result``), or None

    @property
    def family(self) -> str:
        """What decides its predictions, for the promotion rule: more labels make a better
        model within a family; another family must be clearly better to replace it."""
        ...

    def save(self, path: Path) -> None: ...

    def without_adapter(self) -> Model:
        """The same version's light head alone (STAR's base model; itself without adapter)."""
        ...


@dataclass
class Evaluation:
    """A model's figures on some labels (``metrics``, recorded with the version) and what the
    paired promotion rule compares per item (``items``: the kind's own record)."""

    metrics: Mapping[str, Any]
    items: Any


@dataclass
class Scored:
    """Items predicted by a model: the kind's predictions (what its result format renders)
    and per-item figures; ``uncertainty`` is what a queue ranks by (higher: less sure)."""

    model: Any
    predictions: Any
    figures: dict[str, NDArray[np.float64]]
    uncertainty: NDArray[np.float64]
    #: Class probabilities ``[N, C, T]`` for the single-measure strategies (margin, entropy,
    #: ...); None where the kind has none.
    probs: Any = None
    #: Several labels may apply at once (how ``probs`` read).
    multi_label: bool = False

    def __len__(self) -> int:
        return int(self.uncertainty.shape[0])


class ScoredParts(tuple[Scored, ...]):
    """The predictions of a model made of parts (``core.composite``): each part's ``Scored``
    of the same items, in part order."""


def _joined(values: Sequence[Any]) -> Any:
    if values[0] is None:
        return None
    if isinstance(values[0], ScoredParts):
        return ScoredParts(joined([v[j] for v in values]) for j in range(len(values[0])))
    if isinstance(values[0], np.ndarray):
        return np.concatenate(values)
    return [item for value in values for item in value]


def joined(parts: Sequence[Scored]) -> Scored:
    """One model's scores of several chunks of items, as one."""
    first = parts[0]
    return Scored(
        first.model,
        _joined([p.predictions for p in parts]),
        {k: np.concatenate([p.figures[k] for p in parts]) for k in first.figures},
        np.concatenate([p.uncertainty for p in parts]),
        _joined([p.probs for p in parts]),
        first.multi_label,
    )


class LabeledLike(Protocol):
    """The labels a round trains on (``core.training.LabeledData``)."""

    keys: list[int]
    strata_keys: list[int]
    texts: list[str]
    targets: Any
    embeddings: Embeddings

    def take(self, index: NDArray[np.int64]) -> LabeledLike: ...

    def __len__(self) -> int: ...


@dataclass
class LabeledData:
    """The labels a round trains on, in one order: a ``LabeledLike``."""

    keys: list[int]  # annotation ids: what each version records it saw
    strata_keys: list[int]  # task ids: the held-out side is decided per task
    texts: list[str]
    targets: Any  # the kind's: class indices [N] or a 0/1 matrix [N, C] for classification
    embeddings: Embeddings

    def take(self, index: NDArray[np.int64]) -> LabeledData:
        targets = (
            self.targets[index]
            if isinstance(self.targets, np.ndarray)
            else [self.targets[i] for i in index]
        )
        return LabeledData(
            [self.keys[i] for i in index],
            [self.strata_keys[i] for i in index],
            [self.texts[i] for i in index],
            targets,
            self.embeddings[index],
        )

    def __len__(self) -> int:
        return len(self.keys)


class Task(Protocol):
    kind: TaskKind
    #: The metric the paired promotion rule's per-item figures add up to (for its reason).
    metric: str
    #: ``score`` reads the texts' sentence embeddings (else a prediction need not compute
    #: them; the queue's diversity still does).
    uses_embeddings: bool

    # --- the model family ------------------------------------------------------------------

    def prototype(self, space: Any, label_embeddings: Embeddings) -> Model:
        """What serves before any label (zero-shot, or a model that predicts nothing)."""
        ...

    def load(self, path: Path, version: str, device: str | None = None) -> Model: ...

    def fit_head(
        self,
        space: Any,
        data: LabeledLike,
        config: RoundConfig,
        label_embeddings: Embeddings | None,
        like: Model | None = None,
        *,
        start: Model | None = None,
    ) -> Model:
        """The light head on ``data`` (raises ``NotEnoughLabels`` when it cannot fit yet);
        ``like``: the evaluated fit whose choices (a prior's strength) the served fit keeps;
        ``start``: a fit on some of ``data``'s labels and none outside them (the serving
        version's evaluated fit) that an iterative fit may start from (or ignore)."""
        ...

    def fit_lora(
        self,
        space: Any,
        base: Model,
        train: LabeledLike,
        held: LabeledLike | None,
        lora_round: int,
        config: RoundConfig,
        on_epoch: Callable[[int, int], None],
    ) -> Model:
        """An adapter beside ``base``'s head; ending on its best epoch on ``held`` if given."""
        ...

    # --- figures ----------------------------------------------------------------------------

    def targets(self, space: Any, labels: Sequence[Any]) -> Any:
        """What a round trains on, from each annotation's labels as the label config read
        them (``LabeledData.targets``)."""
        ...

    def strata(self, space: Any, targets: Any) -> Sequence[int]:
        """What held-out splits and folds stratify by."""
        ...

    def evaluate(self, model: Model, space: Any, data: LabeledLike) -> Evaluation | None:
        """``model``'s figures on ``data``; None when it predicts another label space."""
        ...

    def cross_validate(
        self,
        space: Any,
        data: LabeledLike,
        config: RoundConfig,
        label_embeddings: Embeddings | None,
    ) -> Evaluation | None:
        """Out-of-fold figures of the light head (too few labels to hold any out)."""
        ...

    def paired(
        self, candidate: Evaluation, baseline: Evaluation
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per-item figures of two models on the same items whose paired difference the
        promotion rule tests (its mean is the change in the kind's metric)."""
        ...

    def score(
        self,
        model: Model,
        texts: Sequence[str],
        embeddings: Embeddings,
        *,
        mc_samples: int,
        star_decay: float,
    ) -> Scored: ...
