"""Entity-level metrics (seqeval-style: a predicted entity counts only when its offsets and
type both match a gold one exactly) and the per-sentence figure the promotion rule pairs.

The metrics match on character offsets, not on tags, so they judge what a user sees in Label
Studio and do not depend on the tokenizer or the tag scheme.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.spans.types import Span

#: Per sentence: true positives, false positives, false negatives (columns of ``counts``).
TP, FP, FN = 0, 1, 2


def _f1(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """(precision, recall, F1); 0 where undefined, as seqeval with zero_division=0."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return precision, recall, f1


def counts(
    predicted: Sequence[Sequence[Span]], gold: Sequence[Sequence[Span]], label: str | None = None
) -> NDArray[np.int64]:
    """``[N, 3]``: TP, FP, FN per sentence (of one ``label`` only, if given)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold ones")
    out = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (pred, true) in enumerate(zip(predicted, gold, strict=True)):
        p = {s.key() for s in pred if label is None or s.label == label}
        g = {s.key() for s in true if label is None or s.label == label}
        hit = len(p & g)
        out[i] = (hit, len(p) - hit, len(g) - hit)
    return out


@dataclass(frozen=True)
class TypeMetrics:
    precision: float
    recall: float
    f1: float
    support: int  # gold entities of this type


@dataclass(frozen=True)
class SpanMetrics:
    f1: float  # entity-level micro F1: the headline figure, in place of accuracy
    precision: float
    recall: float
    n: int  # sentences evaluated
    entities: int  # gold entities
    per_type: dict[str, TypeMetrics] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def evaluate_spans(
    predicted: Sequence[Sequence[Span]],
    gold: Sequence[Sequence[Span]],
    labels: Sequence[str] | None = None,
) -> SpanMetrics:
    """Micro P/R/F1 over all entities, and per type (``labels``, default: every type seen)."""
    if not gold:
        raise ValueError("nothing to evaluate on")
    total = counts(predicted, gold).sum(axis=0)
    names = (
        list(labels)
        if labels is not None
        else sorted({s.label for row in (*predicted, *gold) for s in row})
    )
    by_type = {name: [0, 0, 0] for name in names}  # one pass: TP, FP, FN per type
    for pred, true in zip(predicted, gold, strict=True):
        p, g = {s.key() for s in pred}, {s.key() for s in true}
        for column, keys in ((TP, p & g), (FP, p - g), (FN, g - p)):
            for key in keys:
                if key[2] in by_type:
                    by_type[key[2]][column] += 1
    per_type = {}
    for name, (tp, fp, fn) in by_type.items():
        per_type[name] = TypeMetrics(*_f1(tp, fp, fn), tp + fn)
    precision, recall, f1 = _f1(*total.tolist())
    return SpanMetrics(f1, precision, recall, len(gold), int(total[TP] + total[FN]), per_type)


def micro_f1(sentence_counts: NDArray[np.int64]) -> float:
    tp, fp, fn = sentence_counts.sum(axis=0).tolist()
    return _f1(tp, fp, fn)[2]


def paired_f1_terms(
    candidate: NDArray[np.int64], baseline: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-sentence figures ``(c, b)`` of two models on the same sentences (``counts``) whose
    paired difference ``d = c - b`` has ``mean(d) == F1(candidate) - F1(baseline)`` exactly.

    Micro F1 is a ratio A / B over sentences (A = 2 TP, B = 2 TP + FP + FN), so it has no
    per-sentence share of its own. With the baseline's F1 as reference, sentence i scores
    ``n * (a_i - F1_b * b_i) / B_c`` for each model: the baseline's terms sum to 0, the
    candidate's to ``n * (F1_c - F1_b)``. So the sign of mean(d) is the sign of the F1 change,
    and its standard error over sentences is the delta-method one of that change: the same
    paired test as per-item correctness for classification, with a sentence that has many
    entities weighing as much as its entities do in micro F1. (Per-sentence F1 would weigh a
    one-entity sentence like a ten-entity one, and is undefined on sentences with neither
    gold nor predicted entities.)
    """
    if candidate.shape != baseline.shape:
        raise ValueError("both models must be counted on the same sentences")
    n = candidate.shape[0]

    def parts(c: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        a = np.asarray(2.0 * c[:, TP], dtype=np.float64)
        return a, np.asarray(a + c[:, FP] + c[:, FN], dtype=np.float64)

    a_c, b_c = parts(candidate)
    a_b, b_b = parts(baseline)
    denominator = float(b_c.sum())
    if denominator == 0:  # no gold entity and nothing predicted anywhere: nothing differs
        return np.zeros(n), np.zeros(n)
    f1_b = micro_f1(baseline)
    scale = n / denominator
    c: NDArray[np.float64] = scale * (a_c - f1_b * b_c)
    b: NDArray[np.float64] = scale * (a_b - f1_b * b_b)
    return c, b


def judged_f1(
    judge: Sequence[Sequence[Span]], versions: Sequence[Sequence[Sequence[Span]]]
) -> NDArray[np.float64]:
    """Expected entity F1 of each version's spans on a set of unlabeled sentences, judged by
    another model's spans (``judge``, the newest version's, with their scores): a judge's
    span is a true entity with probability its score, and nothing else is one. So a
    version's expected true positives are the scores of the judge's spans it predicts
    exactly, the expected gold entities the judge's scores summed, and its F1 is
    ``2 E[TP] / (predicted + E[gold])`` (a ratio of expectations, as the stopping signal's
    judged accuracy is a mean of them). 1.0 where nobody predicts any span."""
    scores = [{s.key(): float(s.score or 0.0) for s in row} for row in judge]
    expected_gold = sum(sum(row.values()) for row in scores)
    out = np.zeros(len(versions))
    for k, version in enumerate(versions):
        if len(version) != len(judge):
            raise ValueError(f"{len(version)} sentences for the judge's {len(judge)}")
        pairs = zip(scores, version, strict=True)
        hit = sum(row.get(s.key(), 0.0) for row, spans in pairs for s in spans)
        predicted = sum(len(spans) for spans in version)
        total = predicted + expected_gold
        out[k] = 2.0 * hit / total if total else 1.0
    return out
