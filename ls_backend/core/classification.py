"""Text classification as a task kind (``<Choices>``, single or multi-label): zero-shot from
the label names, the light head on frozen embeddings (with the names as a prior), a LoRA
sequence classifier; accuracy, macro-F1 and ECE; per-item correctness for the paired rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.core import uncertainty
from ls_backend.core.configs import RoundConfig
from ls_backend.core.evaluation import evaluate, item_correct, strata_of, stratified_folds
from ls_backend.core.heads import LinearHead, PrototypeHead, choose_prior_strength
from ls_backend.core.labels import Embeddings, LabelSpace, Probs
from ls_backend.core.model import ModelVersion
from ls_backend.core.tasks import (
    Evaluation,
    LabeledLike,
    Model,
    NotEnoughLabels,
    Scored,
    TaskKind,
)

#: Folds of the out-of-fold figures below EVAL_MIN_LABELS, at most.
KFOLD = 5


def _figures(space: LabelSpace, probs: Probs, targets: NDArray[np.int64]) -> Evaluation:
    return Evaluation(
        evaluate(space, probs, targets).as_dict(), item_correct(space, probs, targets)
    )


class Classification:
    kind = TaskKind.CLASSIFICATION
    metric = "accuracy"
    uses_embeddings = True

    def prototype(self, space: LabelSpace, label_embeddings: Embeddings) -> ModelVersion:
        return ModelVersion("", space, PrototypeHead(space, label_embeddings))

    def load(self, path: Path, version: str, device: str | None = None) -> ModelVersion:
        return ModelVersion.load(path, version, device=device)

    def _head(
        self,
        space: LabelSpace,
        data: LabeledLike,
        c: float,
        prior: Embeddings | None,
        strength: float | None = None,
    ) -> LinearHead:
        """The light head; with ``prior`` (label-name embeddings), shrunk toward them with
        ``strength``, or as strongly as cross-validation on these labels says
        (``choose_prior_strength``; 0 is the plain head)."""
        x, y = data.embeddings, data.targets
        try:
            if strength is None:
                strength = 0.0 if prior is None else choose_prior_strength(space, x, y, prior, c)
            return LinearHead.fit(space, x, y, c=c, prior=prior, strength=strength)
        except ValueError as exc:
            raise NotEnoughLabels(str(exc)) from exc

    def fit_head(
        self,
        space: LabelSpace,
        data: LabeledLike,
        config: RoundConfig,
        label_embeddings: Embeddings | None,
        like: Model | None = None,
        *,
        start: Model | None = None,  # a closed-form-ish fit: nothing to start from
    ) -> ModelVersion:
        prior = label_embeddings if config.head_prior else None
        # The served fit keeps the prior strength its evaluated fit chose (as the adapter
        # keeps its epochs): one cross-validation per round.
        strength = (
            getattr(like.head, "prior_strength", None) if isinstance(like, ModelVersion) else None
        )
        head = self._head(space, data, config.head_c, prior, strength)
        return ModelVersion("", space, head)

    def fit_lora(
        self,
        space: LabelSpace,
        base: Model,
        train: LabeledLike,
        held: LabeledLike | None,
        lora_round: int,
        config: RoundConfig,
        on_epoch: Callable[[int, int], None],
    ) -> ModelVersion:
        from ls_backend.core.lora import LoraClassifier

        assert isinstance(base, ModelVersion) and config.lora is not None
        lora = LoraClassifier.train(
            space,
            train.texts,
            train.targets,
            config.lora,
            eval_texts=held.texts if held is not None else (),
            eval_targets=held.targets if held is not None else None,
            progress=lambda epoch, total, _metrics: on_epoch(epoch, total),
        )
        return ModelVersion("", space, base.head, lora, lora_round=lora_round)

    def targets(self, space: LabelSpace, labels: Sequence[Any]) -> NDArray[np.int64]:
        """Class indices ``[N]`` (single-label) or a 0/1 matrix ``[N, C]`` (multi-label)."""
        if not labels:
            shape = (0, space.size) if space.multi_label else (0,)
            return np.zeros(shape, dtype=np.int64)
        return space.encode(labels)

    def strata(self, space: LabelSpace, targets: NDArray[np.int64]) -> list[int]:
        return strata_of(space, targets)

    def evaluate(self, model: Model, space: LabelSpace, data: LabeledLike) -> Evaluation | None:
        assert isinstance(model, ModelVersion)
        if model.space != space:
            return None
        probs = model.predict(data.texts, data.embeddings, mc_samples=1).probs
        return _figures(space, probs, data.targets)

    def cross_validate(
        self,
        space: LabelSpace,
        data: LabeledLike,
        config: RoundConfig,
        label_embeddings: Embeddings | None,
    ) -> Evaluation | None:
        strata = strata_of(space, data.targets)
        k = int(min(KFOLD, min(np.unique(strata, return_counts=True)[1])))
        if k < 2:
            return None
        prior = label_embeddings if config.head_prior else None
        probs = np.zeros((len(data), space.size, 1), dtype=np.float32)
        for train, test in stratified_folds(strata, k):
            head = self._head(space, data.take(train), config.head_c, prior)
            probs[test] = head.predict_proba(data.embeddings[test])
        return _figures(space, probs, data.targets)

    def paired(
        self, candidate: Evaluation, baseline: Evaluation
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Correct (1) or not (0), item by item: the mean difference is the accuracy change."""
        return (
            np.asarray(candidate.items, dtype=np.float64),
            np.asarray(baseline.items, dtype=np.float64),
        )

    def score(
        self,
        model: Model,
        texts: Sequence[str],
        embeddings: Embeddings,
        *,
        mc_samples: int,
        star_decay: float,
    ) -> Scored:
        """Probabilities and uncertainty figures; STAR's mix of the base head's and the
        adapter's uncertainty is what ranks while an adapter serves (else margin)."""
        assert isinstance(model, ModelVersion)
        prediction = model.predict(texts, embeddings, mc_samples=mc_samples)
        multi = model.space.multi_label
        figures = uncertainty.uncertainty_figures(prediction.probs, multi)
        if model.lora is not None:
            figures["star"] = uncertainty.star_scores(
                prediction.base_probs, prediction.probs, model.lora_round, star_decay, multi
            )
        ranked_by = figures.get("star", figures["margin"])
        return Scored(model, prediction.probs, figures, ranked_by, prediction.probs, multi)


CLASSIFICATION = Classification()
