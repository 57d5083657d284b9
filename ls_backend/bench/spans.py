"""The simulated annotator for span data (JSONL rows of ``text`` and gold ``spans``): the same
loop as ``simulate`` with the span task kind's models, entity F1 in place of accuracy.

Each ``Run`` keeps the classification bench's fields, read for spans: ``accuracy`` is entity
micro F1 on the test split, ``macro_f1`` the mean F1 over entity types, ``ece`` the
calibration error of the predicted regions' scores (a region is right when its offsets and
type match a gold one), and ``kappas`` the entity F1 of each round's test predictions against
the round before's (what the stopping rule watches).

Strategies: ``random``, ``k_center``, ``default`` (the server's ranking over the span task's
uncertainty, entropy summed over words), ``default:<measure>`` and a measure of
``SPAN_MEASURES`` alone (its score order).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.bench.data import read_rows, subsample_rows
from ls_backend.bench.simulate import Judged, Run, run_strategies, simulate
from ls_backend.core.configs import RoundConfig
from ls_backend.core.embeddings import EMBEDDED_MODEL, Encoder
from ls_backend.core.evaluation import expected_calibration_error, paired_gain
from ls_backend.core.ranking import rank_pool
from ls_backend.core.registry import Registry
from ls_backend.core.spans.metrics import counts, paired_f1_terms
from ls_backend.core.spans.task import DEFAULT_MEASURE, SpanModel, Spans, TokenVectorSource
from ls_backend.core.spans.tokens import TokenEncoder
from ls_backend.core.spans.types import Span, SpanLabelSpace, space_from_spans
from ls_backend.core.spans.uncertainty import SPAN_MEASURES
from ls_backend.core.tasks import LabeledData, NotEnoughLabels
from ls_backend.core.training import run_round, save_prototype
from ls_backend.store.databases import Databases

DEFAULT_PREFIX = "default:"
#: What ``--strategies`` may name for span data.
SPAN_STRATEGIES = ("random", "k_center", "default", *SPAN_MEASURES) + tuple(
    DEFAULT_PREFIX + m for m in SPAN_MEASURES
)


@dataclass
class SpanBenchData:
    space: SpanLabelSpace
    pool_texts: list[str]
    pool_gold: list[list[Span]]
    pool_x: NDArray[np.float32]  # sentence embeddings: the ranking's diversity
    test_texts: list[str]
    test_gold: list[list[Span]]


def is_span_data(path: Path) -> bool:
    """Rows with ``spans`` (and no ``label``) are span data (a missing file: the loader says
    so)."""
    if not path.is_file():
        return False
    first = read_rows(path, limit=1)
    return bool(first) and "spans" in first[0] and "label" not in first[0]


def _gold(rows: Sequence[dict[str, Any]]) -> list[list[Span]]:
    return [sorted(Span(s["start"], s["end"], s["label"]) for s in r["spans"]) for r in rows]


def load_span_data(
    train: Path,
    test: Path,
    pool_size: int,
    cache_path: Path,
    test_size: int | None = None,
    runtime: str = "torch",
    max_length: int = 128,
    model: str = EMBEDDED_MODEL,
) -> SpanBenchData:
    pool = subsample_rows(read_rows(train), pool_size)
    tests = read_rows(test)
    if test_size is not None:
        tests = subsample_rows(tests, test_size)
    pool_gold, test_gold = _gold(pool), _gold(tests)
    encoder = Encoder(
        model,
        cache=Databases.embedding_cache_at(cache_path),
        max_length=max_length,
        runtime=runtime,
        export_dir=cache_path.parent / "onnx",
    )
    pool_texts = [r["text"] for r in pool]
    return SpanBenchData(
        space_from_spans(pool_gold + test_gold),
        pool_texts,
        pool_gold,
        encoder.encode(pool_texts, True),
        [r["text"] for r in tests],
        test_gold,
    )


def bench_source(runtime: str, export_dir: Path | None) -> TokenVectorSource:
    """Token vectors of every pool and test text, kept for the whole run."""
    token_runtime = "openvino" if runtime == "openvino" else "torch"
    return TokenVectorSource(
        lambda: TokenEncoder(runtime=token_runtime, export_dir=export_dir), capacity=None
    )


@dataclass
class SpanPredicted:
    test: list[list[Span]]
    pool_scores: NDArray[np.float64] | None = None  # [N] the measure's, when asked


#: ``(data, labeled rows, measure or None)`` -> predictions.
SpanFit = Callable[[SpanBenchData, NDArray[np.int64], "str | None"], SpanPredicted]


class HeadFit:
    """The span task's light head on the labeled rows, refit every round."""

    def __init__(self, task: Spans) -> None:
        self.task = task

    def model(self, data: SpanBenchData, labeled: NDArray[np.int64]) -> SpanModel:
        try:
            head = self.task._head(
                data.space,
                [data.pool_texts[i] for i in labeled],
                [data.pool_gold[i] for i in labeled],
            )
        except NotEnoughLabels:
            return self.task.prototype(data.space, np.zeros((0, 0), np.float32))
        return SpanModel("", data.space, head, fitted=True)

    def __call__(
        self, data: SpanBenchData, labeled: NDArray[np.int64], measure: str | None
    ) -> SpanPredicted:
        return predicted(self.task, self.model(data, labeled), data, measure)


def predicted(
    task: Spans, model: SpanModel, data: SpanBenchData, measure: str | None
) -> SpanPredicted:
    items, _ = model.predict(data.test_texts, task.source)
    scores = None
    if measure is not None:
        _, figures = model.predict(data.pool_texts, task.source)
        scores = figures[measure]
    return SpanPredicted([i.spans for i in items], scores)


class ServedSpanFit:
    """The server's head lane for spans: ``run_round`` with the span task kind on a registry
    of its own (held-out evaluation, the promotion rule), predicting with what serves."""

    def __init__(self, root: Path, data: SpanBenchData, task: Spans, config: RoundConfig) -> None:
        self.registry = Registry(root)
        self.task, self.config = task, config
        #: Rounds, promotions, and the decisions the full test split says were wrong.
        self.promotions = dict.fromkeys(
            ("rounds", "promoted", "worse_promoted", "better_kept_out"), 0
        )
        self._test: dict[str, list[list[Span]]] = {}  # test predictions by version
        self.serving: SpanModel = task.prototype(data.space, np.zeros((0, 0), np.float32))
        self.serving.version = save_prototype(self.registry, self.serving, "bench", task.kind)

    def __call__(
        self, data: SpanBenchData, labeled: NDArray[np.int64], measure: str | None
    ) -> SpanPredicted:
        rows = labeled.tolist()
        labels = LabeledData(
            rows,
            rows,
            [data.pool_texts[i] for i in rows],
            [data.pool_gold[i] for i in rows],
            data.pool_x[labeled],
        )
        before = self.serving
        try:
            result = run_round(
                self.task, "head", self.registry, data.space, labels, lambda: before, self.config
            )
        except NotEnoughLabels:
            result = None
        if result is not None:
            candidate = self.task.load(self.registry.path(result.version), result.version)
            # Judged as the rule judges (paired per-sentence F1 terms), on the whole test
            # split: beyond 2 standard errors.
            gain, se = paired_gain(
                *paired_f1_terms(
                    counts(self._spans(data, candidate), data.test_gold),
                    counts(self._spans(data, before), data.test_gold),
                )
            )
            tally = self.promotions
            tally["rounds"] += 1
            tally["promoted"] += result.promoted
            tally["worse_promoted"] += result.promoted and gain < -2 * se
            tally["better_kept_out"] += not result.promoted and gain > 2 * se
            if result.promoted:
                self.serving = candidate
        out = predicted(self.task, self.serving, data, measure)
        return out

    def _spans(self, data: SpanBenchData, model: SpanModel) -> list[list[Span]]:
        if model.version not in self._test:
            items, _ = model.predict(data.test_texts, self.task.source)
            self._test[model.version] = [i.spans for i in items]
        return self._test[model.version]


def _agreement(a: list[list[Span]], b: list[list[Span]]) -> float:
    """Entity F1 of one round's predictions against another's (1: the same spans)."""
    pa = {(i, s.key()) for i, row in enumerate(a) for s in row}
    pb = {(i, s.key()) for i, row in enumerate(b) for s in row}
    return 1.0 if not pa and not pb else 2 * len(pa & pb) / (len(pa) + len(pb))


def _figures(data: SpanBenchData, spans: list[list[Span]]) -> tuple[float, float, float]:
    """(entity F1, mean F1 over types, ECE of the predicted regions' scores)."""
    from ls_backend.core.spans.metrics import evaluate_spans

    result = evaluate_spans(spans, data.test_gold, data.space.labels)
    types = [t.f1 for t in result.per_type.values() if t.support]
    scores, right = [], []
    for row, gold in zip(spans, data.test_gold, strict=True):
        keys = {g.key() for g in gold}
        for s in row:
            scores.append(1.0 if s.score is None else s.score)
            right.append(s.key() in keys)
    ece = expected_calibration_error(np.asarray(scores), np.asarray(right)) if scores else 0.0
    return result.f1, float(np.mean(types)) if types else 0.0, float(ece)


def _measure(strategy: str) -> tuple[str, str | None]:
    """(the ranking strategy, the span measure it ranks by; None: no predictions needed)."""
    if strategy in ("random", "k_center"):
        return strategy, None
    if strategy == "default":
        return "default", DEFAULT_MEASURE
    if strategy.startswith(DEFAULT_PREFIX):
        return "default", strategy.removeprefix(DEFAULT_PREFIX)
    return "scores", strategy


class SpanData:
    """Span data (``SpanBenchData``) in the one loop: entity F1, the agreement of two
    rounds' spans, the server's ranking over a span measure (or the measure alone)."""

    def first(self, data: SpanBenchData, seed: int, init: int) -> NDArray[np.int64]:
        n = len(data.pool_texts)
        return np.sort(np.random.default_rng(seed).choice(n, init, replace=False))

    def ask(self, strategy: str, last: bool) -> str | None:
        return None if last else _measure(strategy)[1]

    def judge(self, data: SpanBenchData, predicted: SpanPredicted) -> Judged:
        f1, macro, ece = _figures(data, predicted.test)
        return Judged(predicted.test, f1, macro, ece)

    def agreement(self, before: list[list[Span]], now: list[list[Span]]) -> float:
        return _agreement(before, now)

    def order(
        self,
        strategy: str,
        data: SpanBenchData,
        predicted: SpanPredicted,
        labeled: NDArray[np.int64],
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        how, _ = _measure(strategy)
        scores = predicted.pool_scores
        if how == "scores":
            assert scores is not None
            shuffled = rng.permutation(np.setdiff1d(np.arange(len(data.pool_texts)), labeled))
            return shuffled[np.argsort(-scores[shuffled], kind="stable")]
        return rank_pool(how, None, data.pool_x, labeled, rng=rng, scores=scores)


SPAN_DATA = SpanData()


def simulate_spans(
    data: SpanBenchData,
    strategy: str,
    seed: int,
    init: int,
    batch: int,
    budget: int,
    fit: SpanFit,
    on_round: Callable[[], object] | None = None,
) -> Run:
    return simulate(data, strategy, seed, init, batch, budget, fit, on_round, SPAN_DATA)


def run_span_strategies(
    data: SpanBenchData,
    strategies: Sequence[str],
    seeds: int,
    init: int,
    batch: int,
    budget: int,
    fit_for: Callable[[int], SpanFit],
) -> dict[str, list[Run]]:
    return run_strategies(data, strategies, seeds, init, batch, budget, fit_for, "spans", SPAN_DATA)


def span_ceiling(data: SpanBenchData, task: Spans) -> float:
    """Test entity F1 of the head trained on the whole pool."""
    out = HeadFit(task)(data, np.arange(len(data.pool_texts)), None)
    return _figures(data, out.test)[0]


def served_fits(
    data: SpanBenchData, task: Spans, config: RoundConfig, root: str
) -> Callable[[int], SpanFit]:
    def make(_seed: int) -> SpanFit:
        return ServedSpanFit(Path(tempfile.mkdtemp(dir=root)), data, task, config)

    return make
