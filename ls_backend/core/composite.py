"""Several controls of one label config on one text (``<Choices>`` and ``<Labels>``, two
``<Labels>``) as one task kind: a model of its own kind per control (a *part*), saved in one
version, predicted on the same texts, trained on the same annotations, ranked by one
uncertainty. The parts' kinds do the work; this module only splits and joins.

- **Labels.** An annotation's target holds, per part, what it says for that control, or None
  where it says nothing for it (the label config decides which: ``labelstudio.config``). A
  part trains and is evaluated on the annotations that label it alone.
- **Fit.** Each part fits on its annotations; a part that cannot fit yet (no label for it, one
  class) keeps its prototype; ``NotEnoughLabels`` only when no part fits.
- **Promotion.** Per-item terms of the parts, concatenated: the unchanged paired rule compares
  the whole version, each part's items weighing as its kind's do alone.
- **Rank.** The mean of the parts' uncertainties, each on [0, 1] (``UNIT``): a task both
  controls are unsure of comes before one that only one is unsure of, and a part that says
  nothing yet (a span model before its first entity: 0 everywhere) leaves the others' order
  as it is. The max would let the noisier part decide alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.configs import RoundConfig
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings
from ls_backend.core.tasks import (
    Evaluation,
    LabeledData,
    LabeledLike,
    Model,
    NotEnoughLabels,
    Scored,
    ScoredParts,
    Task,
    TaskKind,
)

_PARTS = "parts.json"


def _identity(u: NDArray[np.float64]) -> NDArray[np.float64]:
    return u


def _saturating(u: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(1.0 - np.exp(-np.maximum(u, 0.0)), dtype=np.float64)


#: How each kind's ranking uncertainty maps onto [0, 1] before the parts' are averaged: a
#: classifier's (margin, STAR) lies there already; a span model's (tag entropy summed over
#: a sentence's words, in nats) has no upper bound: ``1 - exp(-u)`` keeps its order (one word
#: of two equally likely tags: 0.5; three such words: 0.88).
UNIT: dict[TaskKind, Callable[[NDArray[np.float64]], NDArray[np.float64]]] = {
    TaskKind.CLASSIFICATION: _identity,
    TaskKind.SPANS: _saturating,
}


@dataclass(frozen=True)
class Part:
    """One control of the config: its name (``from_name``), its kind, its label space."""

    name: str
    kind: TaskKind
    space: Any


@dataclass(frozen=True)
class CompositeSpace:
    """The parts, in the label config's served order; two spaces are equal when every part
    (name, kind, labels) is."""

    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        if len(self.parts) < 2:
            raise ValueError("a composite label space needs at least two parts")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate control names in {names}")

    @property
    def labels(self) -> tuple[str, ...]:
        """Every part's labels in part order (what label-name embeddings are made of: the
        parts' zero-shot prototypes are slices of them)."""
        return tuple(label for p in self.parts for label in p.space.labels)

    @property
    def multi_label(self) -> bool:
        return False  # no single decision over all labels

    def names(self) -> list[str]:
        return [p.name for p in self.parts]

    def slices(self) -> list[slice]:
        """Each part's rows of ``labels``."""
        out, at = [], 0
        for p in self.parts:
            out.append(slice(at, at + len(p.space.labels)))
            at += len(p.space.labels)
        return out


@dataclass
class CompositeModel:
    """A version of several parts, one model of its kind per control."""

    version: str
    space: CompositeSpace
    parts: tuple[Model, ...]
    lora_round: int = field(init=False)  # the parts' latest (STAR's t)

    def __post_init__(self) -> None:
        self.lora_round = max(p.lora_round for p in self.parts)

    @property
    def kind(self) -> ModelKind:
        kinds = {p.kind for p in self.parts}
        for kind in (ModelKind.LORA, ModelKind.HEAD):
            if kind in kinds:
                return kind
        return ModelKind.PROTOTYPE

    @property
    def lora(self) -> Any:
        """The first part's adapter (its ``fit_result`` chooses the served fit's epochs)."""
        return next((p.lora for p in self.parts if p.lora is not None), None)

    @property
    def family(self) -> str:
        return "+".join(p.family for p in self.parts)

    def without_adapter(self) -> CompositeModel:
        return CompositeModel(
            self.version, self.space, tuple(p.without_adapter() for p in self.parts)
        )

    def save(self, path: Path) -> None:
        for i, model in enumerate(self.parts):
            folder = path / f"part{i}"
            folder.mkdir()
            model.save(folder)
        record = [{"name": p.name, "kind": p.kind.value} for p in self.space.parts]
        (path / _PARTS).write_text(json.dumps({"parts": record}))


class Composite:
    """The task kind of a config with several served controls; ``tasks``: the parts' kinds."""

    kind = TaskKind.MULTI
    metric = "mean of the controls' metrics"
    uses_embeddings = True  # a classifier part reads them; span parts ignore them

    def __init__(self, tasks: Mapping[TaskKind, Task]) -> None:
        self.tasks = tasks

    def _task(self, part: Part) -> Task:
        return self.tasks[part.kind]

    def _part_data(self, space: CompositeSpace, data: LabeledLike, j: int) -> LabeledData:
        rows = [i for i, target in enumerate(data.targets) if target[j] is not None]
        part = space.parts[j]
        labels = [data.targets[i][j] for i in rows]
        return LabeledData(
            [data.keys[i] for i in rows],
            [data.strata_keys[i] for i in rows],
            [data.texts[i] for i in rows],
            self._task(part).targets(part.space, labels),
            data.embeddings[np.asarray(rows, dtype=np.int64)],
        )

    def _names(
        self, space: CompositeSpace, label_embeddings: Embeddings | None, dim: int, j: int
    ) -> Embeddings:
        """Part ``j``'s label-name embeddings (zeros, a prototype that says nothing, without)."""
        if label_embeddings is not None:
            return label_embeddings[space.slices()[j]]
        return np.zeros((len(space.parts[j].space.labels), dim), dtype=np.float32)

    # --- the model family --------------------------------------------------------------------

    def prototype(self, space: CompositeSpace, label_embeddings: Embeddings) -> CompositeModel:
        dim = label_embeddings.shape[1] if label_embeddings.ndim == 2 else 0
        parts = tuple(
            self._task(p).prototype(p.space, self._names(space, label_embeddings, dim, j))
            for j, p in enumerate(space.parts)
        )
        return CompositeModel("", space, parts)

    def load(self, path: Path, version: str, device: str | None = None) -> CompositeModel:
        record = json.loads((path / _PARTS).read_text())["parts"]
        parts, models = [], []
        for i, entry in enumerate(record):
            kind = TaskKind(entry["kind"])
            model = self.tasks[kind].load(path / f"part{i}", version, device)
            parts.append(Part(str(entry["name"]), kind, model.space))
            models.append(model)
        return CompositeModel(version, CompositeSpace(tuple(parts)), tuple(models))

    def fit_head(
        self,
        space: CompositeSpace,
        data: LabeledLike,
        config: RoundConfig,
        label_embeddings: Embeddings | None,
        like: Model | None = None,
        *,
        start: Model | None = None,
    ) -> CompositeModel:
        dim = int(data.embeddings.shape[1]) if data.embeddings.ndim == 2 else 0
        parts: list[Model] = []
        fitted, why = 0, []
        for j, part in enumerate(space.parts):
            task, names = self._task(part), self._names(space, label_embeddings, dim, j)
            prior = names if label_embeddings is not None else None
            part_like = like.parts[j] if isinstance(like, CompositeModel) else None
            part_start = start.parts[j] if isinstance(start, CompositeModel) else None
            part_data = self._part_data(space, data, j)
            try:
                if not len(part_data):
                    raise NotEnoughLabels("no annotation labels it yet")
                parts.append(
                    task.fit_head(
                        part.space, part_data, config, prior, like=part_like, start=part_start
                    )
                )
                fitted += 1
            except NotEnoughLabels as exc:
                why.append(f"{part.name}: {exc}")
                parts.append(task.prototype(part.space, names))  # serves until it can fit
        if not fitted:
            raise NotEnoughLabels("; ".join(why))
        return CompositeModel("", space, tuple(parts))

    def fit_lora(
        self,
        space: CompositeSpace,
        base: Model,
        train: LabeledLike,
        held: LabeledLike | None,
        lora_round: int,
        config: RoundConfig,
        on_epoch: Callable[[int, int], None],
    ) -> CompositeModel:
        """An adapter per part that has labels and a trained head; the others keep theirs."""
        assert isinstance(base, CompositeModel)
        count = len(space.parts)
        parts: list[Model] = []
        for j, part in enumerate(space.parts):
            own, part_held = self._part_data(space, train, j), None
            if held is not None:
                part_held = self._part_data(space, held, j)
            if len(own) < 2 or base.parts[j].kind is ModelKind.PROTOTYPE:
                parts.append(base.parts[j])
                continue

            def report(epoch: int, total: int, j: int = j) -> None:
                on_epoch(j * total + epoch, count * total)  # one bar over the parts

            parts.append(
                self._task(part).fit_lora(
                    part.space, base.parts[j], own, part_held or None, lora_round, config, report
                )
            )
        if all(p.lora is None for p in parts):
            raise NotEnoughLabels("no control has labels and a trained head for an adapter yet")
        return CompositeModel("", space, tuple(parts))

    # --- figures -------------------------------------------------------------------------------

    def targets(self, space: CompositeSpace, labels: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Per annotation, what it says for each part (None: nothing for that control)."""
        return [tuple(chosen) for chosen in labels]

    def strata(self, space: CompositeSpace, targets: list[tuple[Any, ...]]) -> list[int]:
        """The combination of the parts' strata (a part without a label: its own stratum)."""
        per_part: list[list[Any]] = []
        for j, part in enumerate(space.parts):
            rows = [i for i, t in enumerate(targets) if t[j] is not None]
            task = self._task(part)
            own = task.strata(part.space, task.targets(part.space, [targets[i][j] for i in rows]))
            column: list[Any] = [None] * len(targets)
            for i, stratum in zip(rows, own, strict=True):
                column[i] = stratum
            per_part.append(column)
        combos: dict[tuple[Any, ...], int] = {}
        return [
            combos.setdefault(tuple(c[i] for c in per_part), len(combos))
            for i in range(len(targets))
        ]

    def _joined(self, space: CompositeSpace, parts: dict[str, Evaluation]) -> Evaluation:
        """The parts' figures by control, and the headline ``score``: the mean of their
        metrics (accuracy, entity F1), each on the annotations that label that control. The
        items keep each part's kind (whose paired terms they make)."""
        kinds = {p.name: p.kind for p in space.parts}
        evaluations = list(parts.values())
        macro = [float(e.metrics["macro_f1"]) for e in evaluations if "macro_f1" in e.metrics]
        metrics: dict[str, Any] = {
            "score": float(np.mean([_headline(e.metrics) for e in evaluations])),
            "parts": {name: dict(e.metrics) for name, e in parts.items()},
            "n": sum(int(e.metrics.get("n", 0)) for e in evaluations),
        }
        if macro:
            metrics["macro_f1"] = float(np.mean(macro))
        return Evaluation(metrics, {name: (kinds[name], e) for name, e in parts.items()})

    def evaluate(self, model: Model, space: CompositeSpace, data: LabeledLike) -> Evaluation | None:
        assert isinstance(model, CompositeModel)
        if model.space != space:
            return None
        found: dict[str, Evaluation] = {}
        for j, part in enumerate(space.parts):
            part_data = self._part_data(space, data, j)
            if not len(part_data):
                continue  # no held-out label for this control
            figures = self._task(part).evaluate(model.parts[j], part.space, part_data)
            if figures is not None:
                found[part.name] = figures
        return self._joined(space, found) if found else None

    def cross_validate(
        self,
        space: CompositeSpace,
        data: LabeledLike,
        config: RoundConfig,
        label_embeddings: Embeddings | None,
    ) -> Evaluation | None:
        dim = int(data.embeddings.shape[1]) if data.embeddings.ndim == 2 else 0
        found: dict[str, Evaluation] = {}
        for j, part in enumerate(space.parts):
            part_data = self._part_data(space, data, j)
            if len(part_data) < 2:
                continue
            prior = (
                self._names(space, label_embeddings, dim, j)
                if label_embeddings is not None
                else None
            )
            try:
                figures = self._task(part).cross_validate(part.space, part_data, config, prior)
            except NotEnoughLabels:
                figures = None
            if figures is not None:
                found[part.name] = figures
        return self._joined(space, found) if found else None

    def paired(
        self, candidate: Evaluation, baseline: Evaluation
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The parts' per-item terms, concatenated (parts evaluated on both sides only)."""
        ours, theirs = [], []
        for name, (kind, evaluation) in candidate.items.items():
            other = baseline.items.get(name)
            if other is None:
                continue
            a, b = self.tasks[kind].paired(evaluation, other[1])
            ours.append(a)
            theirs.append(b)
        if not ours:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(ours), np.concatenate(theirs)

    def score(
        self,
        model: Model,
        texts: Sequence[str],
        embeddings: Embeddings,
        *,
        mc_samples: int,
        star_decay: float,
    ) -> Scored:
        """Each part on the same texts; the figures of each under ``<control>.<figure>``, and
        the mean of their uncertainties on [0, 1] (``UNIT``) as what the queue ranks by."""
        assert isinstance(model, CompositeModel)
        parts = ScoredParts(
            self._task(part).score(
                m, texts, embeddings, mc_samples=mc_samples, star_decay=star_decay
            )
            for part, m in zip(model.space.parts, model.parts, strict=True)
        )
        units = [
            UNIT.get(part.kind, _identity)(np.asarray(s.uncertainty, dtype=np.float64))
            for part, s in zip(model.space.parts, parts, strict=True)
        ]
        combined = np.mean(units, axis=0) if len(texts) else np.zeros(0)
        figures = {
            f"{part.name}.{name}": values
            for part, s in zip(model.space.parts, parts, strict=True)
            for name, values in s.figures.items()
            if values.ndim == 1
        }
        figures["combined"] = combined
        return Scored(model, parts, figures, combined)


def _headline(metrics: Mapping[str, Any]) -> float:
    """A part's headline figure: accuracy (classification) or entity F1 (spans)."""
    return float(metrics.get("accuracy", metrics.get("entity_f1", 0.0)))
