"""Scored items -> predictions in Label Studio's format, per task kind (``FORMATS``): the
pre-annotation, its confidence as ``score``, the model version, and the figures inside the
result item (where Label Studio keeps extra keys; a prediction-level ``meta`` is dropped)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ls_backend.core.model import decided_labels
from ls_backend.core.spans.types import Span
from ls_backend.core.tasks import Scored, TaskKind
from ls_backend.labelstudio.config import CompositeConfig, LabelConfig

#: Labels whose probability and figures a prediction reports (the most probable ones); with
#: more, ``labels_cut`` says how many there are.
REPORTED_LABELS = 20

Prediction = dict[str, Any]


class Format(Protocol):
    def predictions(
        self, config: LabelConfig, scored: Scored, rows: NDArray[np.int64]
    ) -> list[Prediction]: ...

    def summary(self, prediction: Prediction) -> str:
        """The pre-annotation in a few words (the admin's queue panel)."""
        ...


class ChoicesFormat:
    """``choices`` results with the label probabilities and uncertainty figures."""

    def predictions(
        self, config: LabelConfig, scored: Scored, rows: NDArray[np.int64]
    ) -> list[Prediction]:
        space = scored.model.space
        probs = scored.predictions[rows]
        names, confidence = decided_labels(space, probs)
        mean = probs.mean(axis=2)
        cut = len(space.labels) > REPORTED_LABELS

        def per_label(
            values: NDArray[np.float64] | NDArray[np.float32], shown: NDArray[np.int64]
        ) -> dict[str, float]:
            return {space.labels[j]: round(float(values[j]), 6) for j in shown}

        results = []
        for i, (row, chosen) in enumerate(zip(rows, names, strict=True)):
            # Thousands of labels: figures for the most probable REPORTED_LABELS only.
            shown = np.argsort(-mean[i], kind="stable")[:REPORTED_LABELS]
            figures = {
                name: per_label(values[row], shown)
                if values.ndim == 2
                else round(float(values[row]), 6)
                for name, values in scored.figures.items()
            }
            score = round(float(confidence[i]), 6)
            extra: dict[str, Any] = {"labels_cut": len(space.labels)} if cut else {}
            # Multi-label with no label above 0.5: an empty pre-annotation, not a wrong one.
            result = (
                [
                    config.result_item(
                        chosen,
                        score=score,
                        uncertainty=figures,
                        probabilities=per_label(mean[i], shown),
                        **extra,
                    )
                ]
                if chosen
                else []
            )
            results.append(
                {"result": result, "score": score, "model_version": scored.model.version}
            )
        return results

    def summary(self, prediction: Prediction) -> str:
        result = prediction["result"]
        return ", ".join(result[0]["value"]["choices"]) if result else ""


def span_regions(
    config: LabelConfig, text: str, spans: Sequence[Span], **extra: Any
) -> list[dict[str, Any]]:
    """``labels`` results: one region per span, its text cut from ``text`` at the span's
    offsets (so it always matches them), its score when it has one; ``extra`` on the first."""
    results = []
    for i, span in enumerate(spans):
        value = {
            "start": span.start,
            "end": span.end,
            "text": text[span.start : span.end],
            "labels": [span.label],
        }
        score = {} if span.score is None else {"score": round(float(span.score), 6)}
        results.append(config.result_item(value, **score, **(extra if i == 0 else {})))
    return results


class SpansFormat:
    """``labels`` regions (character offsets into the task's text, a score each); the task's
    ``score`` is its least confident decision (a span, or a word left outside), and its
    uncertainty figures ride on the first region (Label Studio keeps extra keys there)."""

    def predictions(
        self, config: LabelConfig, scored: Scored, rows: NDArray[np.int64]
    ) -> list[Prediction]:
        results = []
        for row in rows:
            item = scored.predictions[row]
            figures = {name: round(float(v[row]), 6) for name, v in scored.figures.items()}
            score = round(1.0 - figures.get("least_confident_span", 0.0), 6)
            regions = span_regions(config, item.text, item.spans, uncertainty=figures)
            results.append(
                {"result": regions, "score": score, "model_version": scored.model.version}
            )
        return results

    def summary(self, prediction: Prediction) -> str:
        return ", ".join(
            f"{r['value']['text']} ({r['value']['labels'][0]})" for r in prediction["result"]
        )


class PartsFormat:
    """Several controls (``CompositeConfig``): each part's result items by its own format, in
    one prediction; the task's ``score`` is the least confident part's (its least confident
    decision, as a span prediction's is), and the parts' combined uncertainty (what the queue
    ranks by) rides on the first item's ``uncertainty`` as ``combined``."""

    def predictions(
        self, config: LabelConfig, scored: Scored, rows: NDArray[np.int64]
    ) -> list[Prediction]:
        assert isinstance(config, CompositeConfig)
        parts = [
            FORMATS[part.kind].predictions(part, part_scored, rows)
            for part, part_scored in zip(config.parts, scored.predictions, strict=True)
        ]
        results = []
        for i, row in enumerate(rows):
            items = [item for part in parts for item in part[i]["result"]]
            if items:
                first = items[0] = dict(items[0])
                combined = round(float(scored.uncertainty[row]), 6)
                first["uncertainty"] = {**first.get("uncertainty", {}), "combined": combined}
            score = min(part[i]["score"] for part in parts)
            results.append({"result": items, "score": score, "model_version": scored.model.version})
        return results

    def summary(self, prediction: Prediction) -> str:
        by_control: dict[str, list[str]] = {}
        for item in prediction["result"]:
            value = item.get("value", {})
            said = value.get("choices") or [
                f"{value.get('text')} ({(value.get('labels') or ['?'])[0]})"
            ]
            by_control.setdefault(str(item.get("from_name")), []).extend(map(str, said))
        return "; ".join(f"{name}: {', '.join(said)}" for name, said in by_control.items())


FORMATS: dict[TaskKind, Format] = {
    TaskKind.CLASSIFICATION: ChoicesFormat(),
    TaskKind.SPANS: SpansFormat(),
    TaskKind.MULTI: PartsFormat(),
}


def predictions(
    config: LabelConfig, scored: Scored, rows: Sequence[int] | None = None
) -> list[Prediction]:
    """Label Studio predictions for ``rows`` of ``scored`` (all of them by default)."""
    picked = np.arange(len(scored)) if rows is None else np.asarray(rows, dtype=np.int64)
    return FORMATS[config.kind].predictions(config, scored, picked)


def summary(config: LabelConfig, prediction: Prediction) -> str:
    return FORMATS[config.kind].summary(prediction)


def empty(model_version: str) -> Prediction:
    """For a task without usable text: Label Studio drops a whole batch whose length is off."""
    return {"result": [], "score": 0.0, "model_version": model_version}
