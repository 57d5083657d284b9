"""Span labeling as a task kind (``<Labels>`` on a text): the light span head on frozen token
vectors, LoRA token classification, entity F1, and sentence uncertainty for the queue.

Before any entity is labeled the model serves no span (``SpanHead.empty``): every sentence
scores the same uncertainty, so the queue is diversity alone. Annotations with zero spans are
labels ("no entity here"), but a head needs at least one entity to fit.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.configs import RoundConfig
from ls_backend.core.kinds import ModelKind
from ls_backend.core.labels import Embeddings
from ls_backend.core.spans.alignment import decode_spans
from ls_backend.core.spans.head import SpanHead
from ls_backend.core.spans.metrics import counts, evaluate_spans, paired_f1_terms
from ls_backend.core.spans.quality import FOLDS, out_of_fold
from ls_backend.core.spans.tokens import TokenEncoder, TokenVectors
from ls_backend.core.spans.types import Span, SpanLabelSpace, TokenProbs
from ls_backend.core.spans.uncertainty import SPAN_MEASURES, span_uncertainty_figures
from ls_backend.core.tasks import (
    Evaluation,
    LabeledLike,
    Model,
    NotEnoughLabels,
    Scored,
    TaskKind,
)

if TYPE_CHECKING:
    from ls_backend.core.spans.lora import LoraSpanTagger

#: What the queue ranks span tasks by. Tag entropy summed over a sentence's words was the
#: only measure more than 10% above random on both shared sets under the ``default``
#: ranking (RIPL +24.0% on ATIS over 5 seeds, +11.9% on CoNLL over 2; mnlp and the mean
#: entropy fell below random on CoNLL): benchmarks/RESULTS.md, "Spans".
DEFAULT_MEASURE = "entropy_sum"
#: Folds of the out-of-fold figures below ``eval_min_labels``, at most (the dashboard's too).
KFOLD = FOLDS
#: Token vectors kept per process (about 30 kB a sentence): labeled texts are encoded once,
#: not on every round.
VECTOR_CACHE = 5000
_HEAD, _LORA, _SERVING = "span_head", "lora", "serving.json"


@dataclass(frozen=True)
class SpanItem:
    """What a span model predicts for one text: its spans (character offsets into ``text``)."""

    text: str
    spans: list[Span]


class TokenVectorSource:
    """One token encoder per process, loaded on first use, and the vectors of recent texts."""

    def __init__(
        self, make: Callable[[], TokenEncoder] = TokenEncoder, capacity: int | None = VECTOR_CACHE
    ) -> None:
        self._make = make
        self.capacity = capacity  # texts kept (None: all, as the bench keeps its data)
        self._encoder: TokenEncoder | None = None
        self._cache: OrderedDict[str, TokenVectors] = OrderedDict()
        self._lock = threading.Lock()

    def encoder(self) -> TokenEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = self._make()
            return self._encoder

    def cached(self, texts: Sequence[str]) -> list[str]:
        """Those of ``texts`` whose vectors are at hand (what needs no encoder), in order."""
        with self._lock:
            return [t for t in texts if t in self._cache]

    def vectors(self, texts: Sequence[str]) -> list[TokenVectors]:
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            found.update(zip(missing, self.encoder().encode(missing), strict=True))
            with self._lock:
                for text in missing:
                    self._cache[text] = found[text]
                while self.capacity is not None and len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        return [found[t] for t in texts]


@dataclass
class SpanModel:
    """A span model version: the light head (empty before any entity), an adapter once one
    wins."""

    version: str
    space: SpanLabelSpace
    head: SpanHead
    lora: LoraSpanTagger | None = None
    lora_round: int = 0
    fitted: bool = False  # the head came from labels (an empty one too: no entity seen)

    @property
    def kind(self) -> ModelKind:
        if self.lora is not None:
            return ModelKind.LORA
        return ModelKind.HEAD if self.fitted else ModelKind.PROTOTYPE

    @property
    def family(self) -> str:
        return "head" if self.lora is None else f"lora:{self.lora.config.backbone}"

    def without_adapter(self) -> SpanModel:
        if self.lora is None:
            return self
        return SpanModel(self.version, self.space, self.head, fitted=self.fitted)

    def token_probs(
        self, texts: Sequence[str], source: TokenVectorSource, mc_samples: int | None = None
    ) -> tuple[TokenProbs, list[NDArray[np.int64]]]:
        """Tag probabilities of every unit of ``texts``, and each text's unit offsets."""
        if self.lora is not None:
            return self.lora.predict_proba(texts, mc_samples=mc_samples)
        vectors = source.vectors(texts)
        return self.head.predict_proba(vectors), [v.tokens.units for v in vectors]

    def predict(
        self, texts: Sequence[str], source: TokenVectorSource, mc_samples: int | None = None
    ) -> tuple[list[SpanItem], dict[str, NDArray[np.float64]]]:
        if not self.head.trained and self.lora is None:  # nothing learned: no span, no encoder
            zeros: dict[str, NDArray[np.float64]] = {
                name: np.zeros(len(texts)) for name in SPAN_MEASURES
            }
            return [SpanItem(t, []) for t in texts], zeros
        probs, units = self.token_probs(texts, source, mc_samples)
        decoded = decode_spans(probs, units, self.space)
        items = [SpanItem(t, s) for t, s in zip(texts, decoded.spans, strict=True)]
        return items, span_uncertainty_figures(probs, decoded)

    def save(self, path: Path) -> None:
        self.head.save(path / _HEAD)
        if self.lora is not None:
            self.lora.save(path / _LORA)
        serving = {"lora_round": self.lora_round, "fitted": self.fitted}
        (path / _SERVING).write_text(json.dumps(serving))

    @classmethod
    def load(cls, path: Path, version: str, device: str | None = None) -> SpanModel:
        head = SpanHead.load(path / _HEAD)
        lora = None
        if (path / _LORA).is_dir():
            from ls_backend.core.spans.lora import LoraSpanTagger

            lora = LoraSpanTagger.load(path / _LORA, device=device)
        serving = json.loads((path / _SERVING).read_text())
        return cls(
            version, head.space, head, lora, int(serving["lora_round"]), bool(serving["fitted"])
        )


def _gold(data: LabeledLike) -> list[list[Span]]:
    return [list(spans) for spans in data.targets]


class Spans:
    kind = TaskKind.SPANS
    metric = "entity F1"
    uses_embeddings = False  # token vectors of its own: /predict skips the sentence encoder

    def __init__(self, source: TokenVectorSource | None = None) -> None:
        self.source = source or TokenVectorSource()

    def prototype(self, space: SpanLabelSpace, label_embeddings: Embeddings) -> SpanModel:
        return SpanModel("", space, SpanHead.empty(space))

    def load(self, path: Path, version: str, device: str | None = None) -> SpanModel:
        return SpanModel.load(path, version, device)

    def _head(
        self,
        space: SpanLabelSpace,
        texts: Sequence[str],
        gold: list[list[Span]],
        init: SpanHead | None = None,
    ) -> SpanHead:
        if not any(gold):
            raise NotEnoughLabels("no entity labeled yet (only sentences without one)")
        return SpanHead.fit(space, self.source.vectors(texts), gold, init=init)

    def fit_head(
        self,
        space: SpanLabelSpace,
        data: LabeledLike,
        config: RoundConfig,
        label_embeddings: Embeddings | None,
        like: Model | None = None,
        *,
        start: Model | None = None,
    ) -> SpanModel:
        # The served fit starts from the evaluated fit's weights (``like``: the same labels
        # less the held-out fifth), the evaluated fit from the serving version's (``start``):
        # at 1,000 ATIS sentences 15 iterations from there take 0.6 CPU s against 1.1-1.3
        # for 30 from zero, at the same entity F1 (RESULTS, "Spans").
        near = like if like is not None else start
        init = near.head if isinstance(near, SpanModel) else None
        head = self._head(space, data.texts, _gold(data), init)
        return SpanModel("", space, head, fitted=True)

    def fit_lora(
        self,
        space: SpanLabelSpace,
        base: Model,
        train: LabeledLike,
        held: LabeledLike | None,
        lora_round: int,
        config: RoundConfig,
        on_epoch: Callable[[int, int], None],
    ) -> SpanModel:
        from ls_backend.core.spans.lora import LoraSpanTagger

        assert isinstance(base, SpanModel) and config.lora is not None
        lora = LoraSpanTagger.train(
            space,
            train.texts,
            _gold(train),
            config.lora,
            eval_texts=held.texts if held is not None else (),
            eval_spans=_gold(held) if held is not None else None,
            progress=lambda epoch, total, _metrics: on_epoch(epoch, total),
        )
        return SpanModel("", space, base.head, lora, lora_round, fitted=True)

    def targets(self, space: SpanLabelSpace, labels: Sequence[Any]) -> list[list[Span]]:
        """The gold spans of each annotation (already checked by its label config)."""
        return [sorted(spans) for spans in labels]

    def strata(self, space: SpanLabelSpace, targets: list[list[Span]]) -> list[int]:
        """Sentences with an entity apart from those without: both sides get held out."""
        return [int(bool(spans)) for spans in targets]

    def _figures(
        self, space: SpanLabelSpace, predicted: list[list[Span]], gold: list[list[Span]]
    ) -> Evaluation:
        result = evaluate_spans(predicted, gold, space.labels)
        types = [t.f1 for t in result.per_type.values() if t.support]
        metrics = {
            **result.as_dict(),
            "entity_f1": result.f1,
            "macro_f1": float(np.mean(types)) if types else 0.0,
        }
        return Evaluation(metrics, counts(predicted, gold))

    def evaluate(self, model: Model, space: SpanLabelSpace, data: LabeledLike) -> Evaluation | None:
        assert isinstance(model, SpanModel)
        if model.space != space:
            return None
        items, _ = model.predict(data.texts, self.source, mc_samples=1)
        return self._figures(space, [i.spans for i in items], _gold(data))

    def cross_validate(
        self,
        space: SpanLabelSpace,
        data: LabeledLike,
        config: RoundConfig,
        label_embeddings: Embeddings | None,
    ) -> Evaluation | None:
        gold = _gold(data)
        if len(data) < 2 or sum(bool(g) for g in gold) < 2:
            return None
        oof = out_of_fold(space, self.source.vectors(data.texts), gold, KFOLD)
        return self._figures(space, oof.predicted, gold)

    def paired(
        self, candidate: Evaluation, baseline: Evaluation
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per-sentence terms whose mean difference is the entity-F1 change exactly."""
        return paired_f1_terms(candidate.items, baseline.items)

    def score(
        self,
        model: Model,
        texts: Sequence[str],
        embeddings: Embeddings,
        *,
        mc_samples: int,
        star_decay: float,
    ) -> Scored:
        assert isinstance(model, SpanModel)
        items, figures = model.predict(texts, self.source, mc_samples=mc_samples)
        return Scored(model, items, figures, figures[DEFAULT_MEASURE])


SPANS = Spans()
