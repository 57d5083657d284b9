"""A model's predictions turned into what serves and what ranks: probabilities and the
uncertainty figures (STAR's mix of the base head's and the adapter's while an adapter serves)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ls_backend.core import uncertainty
from ls_backend.core.labels import Embeddings, Probs
from ls_backend.core.model import ModelVersion


@dataclass
class Scored:
    model: ModelVersion
    probs: Probs
    figures: dict[str, NDArray[np.float64]]

    @property
    def uncertainty(self) -> NDArray[np.float64]:
        """What ranking orders by: STAR's mixed uncertainty when an adapter serves, else margin."""
        return self.figures.get("star", self.figures["margin"])


def joined(parts: Sequence[Scored]) -> Scored:
    """One model's scores of several chunks of items, as one."""
    first = parts[0]
    return Scored(
        first.model,
        np.concatenate([p.probs for p in parts]),
        {k: np.concatenate([p.figures[k] for p in parts]) for k in first.figures},
    )


def score(
    model: ModelVersion,
    texts: Sequence[str],
    embeddings: Embeddings,
    *,
    mc_samples: int,
    star_decay: float,
) -> Scored:
    """Predict ``texts`` (already embedded) with ``model``: probabilities and uncertainty."""
    prediction = model.predict(texts, embeddings, mc_samples=mc_samples)
    multi = model.space.multi_label
    figures = uncertainty.uncertainty_figures(prediction.probs, multi)
    if model.lora is not None:
        figures["star"] = uncertainty.star_scores(
            prediction.base_probs, prediction.probs, model.lora_round, star_decay, multi
        )
    return Scored(model, prediction.probs, figures)
