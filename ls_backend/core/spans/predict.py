"""From token vectors to what a span project serves: spans with scores, and uncertainty.

``predict`` is the whole serving path after the encoder (the light head, constrained
decoding, the sentence figures); Label Studio's region format lives in
``labelstudio.predictions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ls_backend.core.spans.alignment import Decoded, SpanScore, decode_spans
from ls_backend.core.spans.head import SpanHead
from ls_backend.core.spans.tokens import TokenVectors
from ls_backend.core.spans.types import TokenProbs
from ls_backend.core.spans.uncertainty import Scores, span_uncertainty_figures


@dataclass(frozen=True)
class SpanPrediction:
    probs: TokenProbs  # per unit, [U, K, T]
    decoded: Decoded  # tags, their confidence, spans per text
    uncertainty: dict[str, Scores]  # every measure of ``SPAN_MEASURES``, [N] each


def predict(
    head: SpanHead, vectors: Sequence[TokenVectors], score: SpanScore = "mean"
) -> SpanPrediction:
    probs = head.predict_proba(vectors)
    decoded = decode_spans(probs, [v.tokens.units for v in vectors], head.space, score=score)
    return SpanPrediction(probs, decoded, span_uncertainty_figures(probs, decoded))
