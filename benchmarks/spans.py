"""Span (NER) active learning, measured: a simulated annotator on the shared span sets.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/spans.py curves --dataset conll2003
    python benchmarks/spans.py speed

Token vectors are cached under ``--cache`` (default /tmp/spans_cache), one npz per
dataset, split and runtime, so reruns skip the encoder.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ls_backend.core import learning_curves as lc
from ls_backend.core.ranking import rank_pool
from ls_backend.core.spans.alignment import decode_spans, spans_to_tags
from ls_backend.core.spans.features import SHAPE_FEATURES, shape_features
from ls_backend.core.spans.head import SpanHead, SpanHeadConfig
from ls_backend.core.spans.metrics import evaluate_spans
from ls_backend.core.spans.tokens import LAYER
from ls_backend.core.spans.types import (
    DEFAULT_SCHEME,
    Span,
    SpanLabelSpace,
    TagScheme,
    TokenProbs,
    offsets_of,
    space_from_spans,
)
from ls_backend.core.spans.uncertainty import SPAN_MEASURES, span_scores

ROOT = Path(__file__).resolve().parents[1]
#: The shared data sets beside the checkout (or beside the folder of worktrees).
DATA = next(
    (p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
    ROOT.parent / "shared" / "data",
)
CACHE = Path("/tmp/spans_cache")


def read_rows(path: Path) -> list[dict[str, Any]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_path(data: Path, name: str, split: str) -> Path:
    path = data / name / f"{split}.jsonl"
    return path if path.exists() else path.with_suffix(".jsonl.gz")


@dataclass
class Split:
    texts: list[str]
    gold: list[list[Span]]
    units: list[NDArray[np.int64]]  # [n_i, 2] per sentence
    vectors: NDArray[np.float32]  # [U, D] all units, in order
    offsets: NDArray[np.int64]  # [N + 1]

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, index: NDArray[np.int64]) -> NDArray[np.int64]:
        """Unit rows of the sentences ``index``."""
        parts = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in index]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def load_split(
    data: Path,
    name: str,
    split: str,
    runtime: str,
    cache: Path,
    size: int | None = None,
) -> Split:
    """A split's texts and gold spans (``size``: a random subset, seed 0, part of the data),
    with each unit's token vector from the cache or the encoder."""
    rows = read_rows(split_path(data, name, split))
    if size is not None and size < len(rows):
        keep = np.sort(np.random.default_rng(0).choice(len(rows), size, replace=False))
        rows = [rows[i] for i in keep]
    texts = [r["text"] for r in rows]
    gold = [[Span(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in rows]
    file = cache / f"{name}-{split}-{size or 'all'}-{runtime}-layer{LAYER}.npz"
    if file.exists():
        with np.load(file) as z:
            offsets, vectors, units = z["offsets"], z["vectors"], z["units"]
    else:
        from ls_backend.core.spans.tokens import TokenEncoder  # torch: only when embedding

        encoder = TokenEncoder(runtime=runtime, export_dir=cache / "export")
        parts, unit_parts = [], []
        started = time.perf_counter()
        for begin in range(0, len(texts), 512):
            for tv in encoder.encode(texts[begin : begin + 512]):
                parts.append(tv.vectors)
                unit_parts.append(tv.tokens.units)
            print(f"  {name}/{split}: {begin + 512}/{len(texts)} embedded", flush=True)
        print(f"  embedded in {time.perf_counter() - started:.1f} s", flush=True)
        lengths = [p.shape[0] for p in parts]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        vectors, units = np.concatenate(parts), np.concatenate(unit_parts)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(file, offsets=offsets, vectors=vectors, units=units)
    unit_list = [units[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
    return Split(texts, gold, unit_list, vectors, offsets)


def sentence_vectors(texts: list[str], runtime: str, cache: Path) -> NDArray[np.float32]:
    """The sentence encoder's vectors (what the server's diversity uses), cached."""
    from ls_backend.core.embeddings import Encoder
    from ls_backend.store.databases import Databases

    encoder = Encoder(
        cache=Databases.embedding_cache_at(cache / "sentences.sqlite"),
        runtime=runtime,
        export_dir=cache / "export",
    )
    return encoder.encode(texts)


@dataclass
class Bench:
    """One data set ready to simulate: pool and test features, gold tags, sentence vectors."""

    name: str
    space: SpanLabelSpace
    pool: Split
    pool_rows: list[NDArray[np.int64]]  # unit rows of each pool sentence in pool_x
    pool_x: NDArray[np.float32]
    pool_tags: NDArray[np.int64]
    pool_sentences: NDArray[np.float32]
    test: Split
    test_x: NDArray[np.float32]


def features(split: Split, index: NDArray[np.int64]) -> NDArray[np.float32]:
    shapes = [shape_features(split.texts[i], split.units[i]) for i in index]
    return np.concatenate([split.vectors[split.rows(index)], np.concatenate(shapes)], axis=1)


def subset(split: Split, index: NDArray[np.int64]) -> Split:
    rows = split.rows(index)
    lengths = [split.units[i].shape[0] for i in index]
    return Split(
        [split.texts[i] for i in index],
        [split.gold[i] for i in index],
        [split.units[i] for i in index],
        split.vectors[rows],
        offsets_of(lengths),
    )


def prepare(
    data: Path, name: str, runtime: str, cache: Path, pool_size: int, scheme: TagScheme
) -> Bench:
    """Pool = ``pool_size`` random train sentences (seed 0), test = the whole test split."""
    train = load_split(data, name, "train", runtime, cache)
    test = load_split(data, name, "test", runtime, cache)
    keep = np.sort(np.random.default_rng(0).choice(len(train), pool_size, replace=False))
    pool = subset(train, keep)
    space = space_from_spans([*pool.gold, *test.gold], scheme)
    every = np.arange(len(pool))
    tags = np.concatenate([spans_to_tags(pool.units[i], pool.gold[i], space)[0] for i in every])
    rows = [np.arange(pool.offsets[i], pool.offsets[i + 1]) for i in every]
    return Bench(
        name,
        space,
        pool,
        rows,
        features(pool, every),
        tags,
        sentence_vectors(pool.texts, runtime, cache),
        test,
        features(test, np.arange(len(test))),
    )


#: Strategies: random, a span measure alone (top of its score order), or the server's
#: ``default`` ranking (exploration, near-duplicate filter) over a measure's scores;
#: ``default:<measure>@<k>`` sets the class count of its exploration share to k.
MEASURE_STRATEGIES = tuple(SPAN_MEASURES)
DEFAULT_PREFIX = "default:"
#: The default ranking's exploration share counts 2 classes for span scores (the ranking's
#: count when it has scores without class probabilities): with every span label counted,
#: ATIS (83 labels) still explored a quarter of each batch at 300 sentences and
#: default:entropy_sum fell from +24.6 to +11.2 RIPL (2 seeds).


@dataclass
class Run:
    labels: list[int] = field(default_factory=list)
    words: list[int] = field(default_factory=list)  # units in the labeled sentences, per round
    f1: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    units: int = 0  # units (words) in the labeled sentences at the end: the reading cost
    entities: int = 0


def labeled_rows(bench: Bench, labeled: NDArray[np.int64]) -> NDArray[np.int64]:
    return np.concatenate([bench.pool_rows[i] for i in labeled])


def simulate(
    bench: Bench,
    strategy: str,
    seed: int,
    init: int,
    batch: int,
    budget: int,
    config: SpanHeadConfig,
    classes: int | None,
) -> Run:
    labeled = np.sort(np.random.default_rng(seed).choice(len(bench.pool), init, replace=False))
    rng = np.random.default_rng([seed, 1])
    run = Run()
    measure, _, suffix = strategy.removeprefix(DEFAULT_PREFIX).partition("@")
    classes = int(suffix) if suffix else classes
    while True:
        started = time.perf_counter()
        last = labeled.size >= budget
        rows = labeled_rows(bench, labeled)
        head = SpanHead.fit_arrays(bench.space, bench.pool_x[rows], bench.pool_tags[rows], config)
        test_probs = TokenProbs(head.predict_arrays(bench.test_x)[:, :, None], bench.test.offsets)
        decoded = decode_spans(test_probs, bench.test.units, bench.space)
        run.labels.append(int(labeled.size))
        run.words.append(int(rows.size))
        run.f1.append(evaluate_spans(decoded.spans, bench.test.gold).f1)
        if not last:
            if strategy == "random":
                unlabeled = np.setdiff1d(np.arange(len(bench.pool)), labeled)
                order = rng.permutation(unlabeled)
            else:
                probs = TokenProbs(
                    head.predict_arrays(bench.pool_x)[:, :, None], bench.pool.offsets
                )
                pool_decoded = decode_spans(probs, bench.pool.units, bench.space)
                scores = span_scores(probs, pool_decoded, measure)
                if strategy.startswith(DEFAULT_PREFIX):
                    order = rank_pool(
                        "default",
                        None,
                        bench.pool_sentences,
                        labeled,
                        rng=rng,
                        scores=scores,
                        classes=classes,
                    )
                else:
                    unlabeled = rng.permutation(np.setdiff1d(np.arange(len(bench.pool)), labeled))
                    order = unlabeled[np.argsort(-scores[unlabeled], kind="stable")]
            picks = order[: min(batch, budget - labeled.size)]
            labeled = np.sort(np.concatenate([labeled, picks]))
        run.seconds.append(time.perf_counter() - started)
        if last:
            run.units = int(sum(bench.pool.units[i].shape[0] for i in labeled))
            run.entities = int(sum(len(bench.pool.gold[i]) for i in labeled))
            return run


def summarise(runs: dict[str, list[Run]], ceiling: float) -> dict[str, Any]:
    """Per strategy: AUC (mean F1 over the rounds), RIPL vs random with its paired SE, final
    F1, labels to reach random's final F1, words and entities labeled; the keys follow the
    classification bench's results.json (``strategies.<name>.ripl``, ``ripl_se``, ...)."""
    out: dict[str, Any] = {"metric": "entity_f1", "ceiling": ceiling, "strategies": {}}
    labels = runs[next(iter(runs))][0].labels
    aucs = {name: [lc.curve_auc(r.f1) for r in rs] for name, rs in runs.items()}
    curves = {name: np.mean([r.f1 for r in rs], axis=0) for name, rs in runs.items()}
    random_auc = float(np.mean(aucs["random"])) if "random" in runs else None
    random_final = float(curves["random"][-1]) if "random" in runs else None
    words = {name: np.mean([r.words for r in rs], axis=0) for name, rs in runs.items()}
    random_words = float(words["random"][-1]) if "random" in runs else None
    for name, rs in runs.items():
        auc = float(np.mean(aucs[name]))
        se = None if random_auc is None else lc.ripl_standard_error(aucs[name], aucs["random"])
        out["strategies"][name] = {
            "auc": auc,
            "auc_std": float(np.std(aucs[name])),
            "ripl": None if random_auc is None else 100 * lc.ripl(auc, random_auc),
            "ripl_se": None if se is None else 100 * se,
            "final_f1": float(curves[name][-1]),
            "final_f1_std": float(np.std([r.f1[-1] for r in rs])),
            "labels_to_random_final": None
            if random_final is None
            else lc.labels_to_reach(labels, curves[name], random_final),
            "units_labeled": float(np.mean([r.units for r in rs])),
            # The same cost counted in words: a sentence budget favours long sentences.
            "words_to_random_final": None
            if random_final is None
            else _words_to_reach(words[name], curves[name], random_final),
            "f1_at_random_words": None
            if random_words is None or random_words > words[name][-1]
            else float(np.interp(random_words, words[name], curves[name])),
            "words": [float(v) for v in words[name]],
            "entities_labeled": float(np.mean([r.entities for r in rs])),
            "seconds_per_round": float(np.mean([np.mean(r.seconds) for r in rs])),
            "labels": labels,
            "curve": [float(v) for v in curves[name]],
            "f1_per_seed": [r.f1 for r in rs],
        }
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _words_to_reach(
    words: NDArray[np.float64], curve: NDArray[np.float64], target: float
) -> float | None:
    hits = np.flatnonzero(curve >= target)
    return float(words[hits[0]]) if hits.size else None


def markdown(title: str, summary: dict[str, Any], seeds: int, budget: int) -> str:
    lines = [
        f"#### {title} (ceiling {summary['ceiling']:.3f}: the head on the whole pool)",
        "",
        "| strategy | AUC (± std) | RIPL % (± SE) | F1 at "
        + str(budget)
        + " | labels to random@"
        + str(budget)
        + " | words labeled | entities labeled | words to random@"
        + str(budget)
        + " | F1 at random's words | s / round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["strategies"].items():
        ripl = "-" if s["ripl"] is None else f"{s['ripl']:+.1f} ± {s['ripl_se'] or 0:.1f}"
        reach = s["labels_to_random_final"]
        lines.append(
            f"| {name} | {s['auc']:.3f} ± {s['auc_std']:.3f} | {ripl} | "
            f"{s['final_f1']:.3f} ± {s['final_f1_std']:.3f} | {reach if reach else '-'} | "
            f"{s['units_labeled']:.0f} | {s['entities_labeled']:.0f} | "
            f"{_fmt(s['words_to_random_final'], '.0f')} | {_fmt(s['f1_at_random_words'], '.3f')} | "
            f"{s['seconds_per_round']:.2f} |"
        )
    lines.append(f"\n({seeds} seeds.)")
    return "\n".join(lines)


def curves_command(args: argparse.Namespace) -> None:
    bench = prepare(args.data, args.dataset, args.runtime, args.cache, args.pool, args.scheme)
    config = SpanHeadConfig(c=args.c, max_iter=args.max_iter, shape=True)
    every = np.arange(len(bench.pool))
    full = SpanHead.fit_arrays(bench.space, bench.pool_x, bench.pool_tags, config)
    probs = TokenProbs(full.predict_arrays(bench.test_x)[:, :, None], bench.test.offsets)
    ceiling = evaluate_spans(
        decode_spans(probs, bench.test.units, bench.space).spans, bench.test.gold
    ).f1
    print(
        f"{bench.name}: pool {len(every)}, test {len(bench.test)}, {bench.space.size} tags, "
        f"ceiling F1 {ceiling:.3f}",
        flush=True,
    )
    runs: dict[str, list[Run]] = {}
    for strategy in args.strategies.split(","):
        runs[strategy] = []
        for seed in range(args.seeds):
            run = simulate(
                bench, strategy, seed, args.init, args.batch, args.budget, config, args.classes
            )
            runs[strategy].append(run)
            print(
                f"  {strategy} seed {seed}: F1 {run.f1[-1]:.3f}, AUC {lc.curve_auc(run.f1):.3f}, "
                f"{np.mean(run.seconds):.2f} s/round",
                flush=True,
            )
    summary = summarise(runs, ceiling)
    summary.update(
        {
            "dataset": bench.name,
            "scheme": args.scheme,
            "pool": len(bench.pool),
            "test": len(bench.test),
            "seeds": args.seeds,
            "budget": args.budget,
            "init": args.init,
            "batch": args.batch,
            "head": {"c": config.c, "max_iter": config.max_iter, "shape": config.shape},
            "explore_classes": args.classes,
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    table = markdown(bench.name, summary, args.seeds, args.budget)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


def head_quality(
    bench: Bench,
    n: int,
    seed: int,
    scheme_space: SpanLabelSpace,
    shape: bool,
    constrained: bool,
    score: str = "mean",
) -> tuple[float, float]:
    """(test entity F1, AUROC of span scores for being right) of the head on ``n`` random pool
    sentences."""
    labeled = np.sort(np.random.default_rng(seed).choice(len(bench.pool), n, replace=False))
    rows = labeled_rows(bench, labeled)
    tags = np.concatenate(
        [spans_to_tags(bench.pool.units[i], bench.pool.gold[i], scheme_space)[0] for i in labeled]
    )
    width = bench.pool_x.shape[1] - (0 if shape else len(SHAPE_FEATURES))
    config = SpanHeadConfig(shape=shape)
    head = SpanHead.fit_arrays(scheme_space, bench.pool_x[rows, :width], tags, config)
    probs = TokenProbs(head.predict_arrays(bench.test_x[:, :width])[:, :, None], bench.test.offsets)
    decoded = decode_spans(probs, bench.test.units, scheme_space, constrained, score)  # type: ignore[arg-type]
    f1 = evaluate_spans(decoded.spans, bench.test.gold).f1
    scores, right = [], []
    for pred, gold in zip(decoded.spans, bench.test.gold, strict=True):
        keys = {g.key() for g in gold}
        for span in pred:
            scores.append(span.score or 0.0)
            right.append(span.key() in keys)
    from sklearn.metrics import roc_auc_score

    auroc = float(roc_auc_score(right, scores)) if 0 < sum(right) < len(right) else float("nan")
    return f1, auroc


def head_command(args: argparse.Namespace) -> None:
    """The head's design choices on random labels: tag scheme, shape features, constrained
    decoding, span score; entity F1 (mean over seeds) at each size."""
    bench = prepare(args.data, args.dataset, args.runtime, args.cache, args.pool, "BIO")
    labels = bench.space.labels
    variants = [
        ("BILOU, shape, constrained (default)", "BILOU", True, True, "mean"),
        ("BIO, shape, constrained", "BIO", True, True, "mean"),
        ("BILOU, no shape, constrained", "BILOU", False, True, "mean"),
        ("BILOU, shape, argmax per unit", "BILOU", True, False, "mean"),
        ("BILOU, shape, constrained, span score = min", "BILOU", True, True, "min"),
    ]
    sizes = [int(v) for v in args.sizes.split(",")]
    print(
        f"| {args.dataset}: variant | "
        + " | ".join(f"F1 @ {n}" for n in sizes)
        + " | span-score AUROC @ 300 |"
    )
    print("|---|" + "---|" * (len(sizes) + 1))
    for name, scheme, shape, constrained, score in variants:
        space = SpanLabelSpace(labels, scheme)  # type: ignore[arg-type]
        cells, auroc = [], float("nan")
        for n in sizes:
            got = [
                head_quality(bench, n, seed, space, shape, constrained, score)
                for seed in range(args.seeds)
            ]
            cells.append(f"{np.mean([g[0] for g in got]):.3f} ± {np.std([g[0] for g in got]):.3f}")
            if n == 300:
                auroc = float(np.mean([g[1] for g in got]))
        print(f"| {name} | " + " | ".join(cells) + f" | {auroc:.3f} |", flush=True)


def layers_command(args: argparse.Namespace) -> None:
    """Entity F1 of the head (300 random pool sentences, shape features, BILOU) on each hidden
    layer of the full encoder (torch), on a fixed random 1,000 test sentences."""
    import torch

    from ls_backend.core.spans.alignment import pool_units
    from ls_backend.core.spans.tokens import TokenEncoder

    torch.set_num_threads(1)
    encoder = TokenEncoder(runtime="torch", layer=None)
    model, tok = encoder.runtime.model, encoder.tokenizer  # type: ignore[attr-defined]

    def every_layer(texts: list[str]) -> list[NDArray[np.float32]]:
        out = []
        for tokens in tok.tokenize(texts):
            ids, mask = tok.batch([(tokens.ids, 0, tokens.ids.size)])
            with torch.inference_mode():
                hidden = model(
                    input_ids=torch.as_tensor(ids),
                    attention_mask=torch.as_tensor(mask),
                    output_hidden_states=True,
                ).hidden_states
            h = torch.stack(hidden)[:, 0, len(tok.prefix) : len(tok.prefix) + tokens.ids.size]
            out.append(np.stack([pool_units(x, tokens.unit_of, tokens.n_units) for x in h.numpy()]))
        return out

    train = load_split(args.data, args.dataset, "train", args.runtime, args.cache)
    test = load_split(args.data, args.dataset, "test", args.runtime, args.cache)
    space = space_from_spans([*train.gold, *test.gold])
    pool = np.sort(np.random.default_rng(0).choice(len(train), args.pool, replace=False))
    test_idx = np.sort(
        np.random.default_rng(1).choice(len(test), min(1000, len(test)), replace=False)
    )
    test_units = [test.units[i] for i in test_idx]
    test_layers = every_layer([test.texts[i] for i in test_idx])
    test_shape = np.concatenate([shape_features(test.texts[i], test.units[i]) for i in test_idx])
    f1 = np.zeros((args.seeds, test_layers[0].shape[0]))
    for seed in range(args.seeds):
        idx = np.random.default_rng(seed).choice(pool, 300, replace=False)
        train_layers = every_layer([train.texts[i] for i in idx])
        shape = np.concatenate([shape_features(train.texts[i], train.units[i]) for i in idx])
        tags = np.concatenate([spans_to_tags(train.units[i], train.gold[i], space)[0] for i in idx])
        for layer in range(f1.shape[1]):
            x = np.concatenate([np.concatenate([a[layer] for a in train_layers]), shape], axis=1)
            head = SpanHead.fit_arrays(space, x, tags)
            xt = np.concatenate([np.concatenate([a[layer] for a in test_layers]), test_shape], 1)
            probs = TokenProbs(
                head.predict_arrays(xt)[:, :, None], offsets_of([u.shape[0] for u in test_units])
            )
            decoded = decode_spans(probs, test_units, space)
            f1[seed, layer] = evaluate_spans(decoded.spans, [test.gold[i] for i in test_idx]).f1
        print(f"  seed {seed}: " + " ".join(f"{v:.3f}" for v in f1[seed]), flush=True)
    print(
        f"| {args.dataset} | "
        + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(f1.mean(0), f1.std(0), strict=True))
        + " |"
    )


def speed_command(args: argparse.Namespace) -> None:
    """Single-text latency and batch-of-64 throughput of the serving path (token vectors,
    head, constrained decoding, every uncertainty figure, Label Studio results), per runtime,
    beside raw torch token embedding (the full encoder's last hidden state, HF tokenizer)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ls_backend.core.embeddings import resolve_model_path
    from ls_backend.core.spans.predict import predict
    from ls_backend.core.spans.tokens import TokenEncoder, TokenVectors
    from ls_backend.labelstudio.config import parse_config
    from ls_backend.labelstudio.predictions import span_regions

    torch.set_num_threads(args.threads)
    bench = prepare(args.data, "conll2003", args.runtime, args.cache, args.pool, DEFAULT_SCHEME)
    labeled = np.sort(np.random.default_rng(0).choice(len(bench.pool), 300, replace=False))
    rows = labeled_rows(bench, labeled)
    head = SpanHead.fit_arrays(bench.space, bench.pool_x[rows], bench.pool_tags[rows])
    test = bench.test.texts
    workloads = {
        "CoNLL sentences (~14 words)": test,
        "CoNLL paragraphs (5 sentences, ~70 words)": [
            " ".join(test[i : i + 5]) for i in range(0, len(test) - 5, 5)
        ],
    }
    n_batch, n_single, batch = args.tasks, args.single, 64
    labels = "".join(f'<Label value="{name}"/>' for name in bench.space.labels)
    config = parse_config(
        f'<View><Labels name="label" toName="text">{labels}</Labels>'
        '<Text name="text" value="$text"/></View>'
    )
    path = resolve_model_path("embedded")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def raw(texts: list[str]) -> None:
        with torch.inference_mode():
            enc = tokenizer(
                texts, padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            model(**enc).last_hidden_state.numpy()

    def serve(encoder: TokenEncoder, texts: list[str]) -> None:
        vectors: list[TokenVectors] = encoder.encode(texts)
        out = predict(head, vectors)
        for text, spans in zip(texts, out.decoded.spans, strict=True):
            span_regions(config, text, spans)

    runners: dict[str, Any] = {"raw torch token embedding (6 layers)": raw}
    for runtime in args.runtimes.split(","):
        for layer in (LAYER, None):
            encoder = TokenEncoder(runtime=runtime, layer=layer, export_dir=args.cache / "export")
            name = f"serve: {encoder.runtime.variant}, layer {layer or 6}"
            runners[name] = lambda texts, e=encoder: serve(e, texts)
    print(f"torch threads {torch.get_num_threads()}")
    print("| texts | path | batch 64: texts/s | vs raw torch | single text p50 / p99 ms |")
    print("|---|---|---|---|---|")
    for label, texts in workloads.items():
        batch_texts, singles = texts[:n_batch], texts[n_batch : n_batch + n_single]
        base = None
        for name, run in runners.items():
            run(batch_texts[:batch])  # warm-up
            started = time.perf_counter()
            for i in range(0, len(batch_texts), batch):
                run(batch_texts[i : i + batch])
            rate = len(batch_texts) / (time.perf_counter() - started)
            base = base or rate
            times = []
            for text in singles:
                t0 = time.perf_counter()
                run([text])
                times.append(time.perf_counter() - t0)
            p50, p99 = (float(np.percentile(np.asarray(times) * 1000, q)) for q in (50, 99))
            print(
                f"| {label} | {name} | {rate:.1f} | {rate / base:.2f}x | {p50:.1f} / {p99:.1f} |",
                flush=True,
            )


def split_tags(split: Split, index: NDArray[np.int64], space: SpanLabelSpace) -> NDArray[np.int64]:
    """Gold tags of every unit of the sentences ``index``."""
    parts = [spans_to_tags(split.units[i], split.gold[i], space)[0] for i in index]
    return np.concatenate(parts)


def round_times_command(args: argparse.Namespace) -> None:
    """A server round's head fits at 100 / 1,000 / 5,000 labeled sentences, as ``run_round``
    makes them with ``Spans.fit_head`` (each fit building its features from cached vectors):
    the evaluated fit on all but a held-out fifth, started from the serving version's
    evaluated fit (here: the same fit ``--new`` sentences earlier), then the served fit on
    every label started from the evaluated one. Beside it, the round before warm starts: the
    same two fits from zero. Medians of ``--repeat``, wall and CPU seconds."""
    print(
        "| data set | labeled sentences | units | tags seen | evaluated fit s | served fit s "
        "| round s (CPU s) | before: two fits from zero s (CPU s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        train = load_split(args.data, name, "train", args.runtime, args.cache)
        space = space_from_spans(train.gold)
        for n in [int(v) for v in args.sizes.split(",")]:
            n = min(n, len(train))
            rng = np.random.default_rng(0)
            idx = np.sort(rng.choice(len(train), n, replace=False))
            kept_order = rng.permutation(idx)[: n - n // 5]  # the held-out fifth left out
            kept = np.sort(kept_order)
            earlier = np.sort(kept_order[: max(1, kept.size - args.new)])
            previous = SpanHead.fit_arrays(
                space, features(train, earlier), split_tags(train, earlier, space)
            )
            times: dict[str, list[float]] = {k: [] for k in ("ev", "served", "cpu", "old", "oc")}
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                x_kept, y_kept = features(train, kept), split_tags(train, kept, space)
                evaluated = SpanHead.fit_arrays(space, x_kept, y_kept, init=previous)
                t1 = time.perf_counter()
                x_all, y_all = features(train, idx), split_tags(train, idx, space)
                served = SpanHead.fit_arrays(space, x_all, y_all, init=evaluated)
                t2 = time.perf_counter()
                times["cpu"].append(time.process_time() - c0)  # a busy machine inflates wall
                times["ev"].append(t1 - t0)
                times["served"].append(t2 - t1)
                t3, c3 = time.perf_counter(), time.process_time()
                SpanHead.fit_arrays(space, features(train, kept), split_tags(train, kept, space))
                SpanHead.fit_arrays(space, features(train, idx), split_tags(train, idx, space))
                times["old"].append(time.perf_counter() - t3)
                times["oc"].append(time.process_time() - c3)
            m = {k: float(np.median(v)) for k, v in times.items()}
            print(
                f"| {name} | {n} | {int(train.rows(idx).size)} | {served.classes.size} | "
                f"{m['ev']:.2f} | {m['served']:.2f} | {m['ev'] + m['served']:.2f} "
                f"({m['cpu']:.2f}) | {m['old']:.2f} ({m['oc']:.2f}) |",
                flush=True,
            )


def lora_command(args: argparse.Namespace) -> None:
    """LoRA token classification on CPU: ``--labels`` random pool sentences, the classifier's
    default LoraTrainConfig (epochs, min_steps, lr, r ...), test entity F1 on a fixed random
    ``--test`` sentences, beside the light head on the same labels."""
    import torch

    from ls_backend.core.configs import LoraTrainConfig
    from ls_backend.core.spans.lora import LoraSpanTagger

    torch.set_num_threads(args.threads)
    bench = prepare(args.data, args.dataset, args.runtime, args.cache, args.pool, DEFAULT_SCHEME)
    test_idx = np.sort(
        np.random.default_rng(1).choice(len(bench.test), min(args.test, len(bench.test)), False)
    )
    test_texts = [bench.test.texts[i] for i in test_idx]
    test_gold = [bench.test.gold[i] for i in test_idx]
    for seed in range(args.seeds):
        labeled = np.sort(np.random.default_rng(seed).choice(len(bench.pool), args.labels, False))
        rows = labeled_rows(bench, labeled)
        head = SpanHead.fit_arrays(bench.space, bench.pool_x[rows], bench.pool_tags[rows])
        sub_rows = bench.test.rows(test_idx)
        probs = TokenProbs(
            head.predict_arrays(bench.test_x[sub_rows])[:, :, None],
            offsets_of([bench.test.units[i].shape[0] for i in test_idx]),
        )
        head_f1 = evaluate_spans(
            decode_spans(probs, [bench.test.units[i] for i in test_idx], bench.space).spans,
            test_gold,
        ).f1
        config = LoraTrainConfig(device="cpu", seed=seed, max_length=args.max_length)
        started = time.perf_counter()
        tagger = LoraSpanTagger.train(
            bench.space,
            [bench.pool.texts[i] for i in labeled],
            [bench.pool.gold[i] for i in labeled],
            config,
        )
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        lora_f1 = evaluate_spans(tagger.predict_spans(test_texts), test_gold).f1
        predict_s = time.perf_counter() - started
        assert tagger.fit_result is not None
        epochs = len(tagger.fit_result.history)
        print(
            f"| {args.dataset} | {args.labels} | {seed} | {head_f1:.3f} | {lora_f1:.3f} | "
            f"{epochs} | {train_s:.0f} | {len(test_texts) / predict_s:.0f} |",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="fill the token-vector cache")
    embed.add_argument("--dataset", action="append", required=True)
    embed.add_argument("--runtime", default="openvino")
    embed.add_argument("--data", type=Path, default=DATA)
    embed.add_argument("--cache", type=Path, default=CACHE)
    curves = sub.add_parser("curves", help="active-learning curves on one data set")
    curves.add_argument("--dataset", required=True)
    curves.add_argument(
        "--strategies",
        default="random,entropy_sum," + ",".join(DEFAULT_PREFIX + m for m in MEASURE_STRATEGIES),
    )
    curves.add_argument("--seeds", type=int, default=5)
    curves.add_argument("--init", type=int, default=10)
    curves.add_argument("--batch", type=int, default=10)
    curves.add_argument("--budget", type=int, default=300)
    curves.add_argument("--pool", type=int, default=4000)
    curves.add_argument("--scheme", default=DEFAULT_SCHEME, choices=["BIO", "BILOU"])
    curves.add_argument("--c", type=float, default=SpanHeadConfig.c)
    curves.add_argument("--max-iter", type=int, default=SpanHeadConfig.max_iter)
    curves.add_argument(
        "--classes",
        type=int,
        default=None,
        help="exploration share's class count (default: 2, the ranking's count for scores alone)",
    )
    curves.add_argument("--runtime", default="openvino")
    curves.add_argument("--data", type=Path, default=DATA)
    curves.add_argument("--cache", type=Path, default=CACHE)
    curves.add_argument("--out", type=Path, required=True)
    head = sub.add_parser("head", help="the head's design choices on random labels")
    head.add_argument("--dataset", required=True)
    head.add_argument("--sizes", default="100,300,1000")
    head.add_argument("--seeds", type=int, default=3)
    layers = sub.add_parser("layers", help="entity F1 per encoder layer (300 random labels)")
    layers.add_argument("--dataset", required=True)
    layers.add_argument("--seeds", type=int, default=2)
    speed = sub.add_parser("speed", help="serving latency and throughput vs raw torch")
    speed.add_argument("--runtimes", default="torch,openvino")
    speed.add_argument("--tasks", type=int, default=640)
    speed.add_argument("--single", type=int, default=200)
    speed.add_argument("--threads", type=int, default=2)
    rounds = sub.add_parser("rounds", help="a server round's head fits by labeled sentences")
    rounds.add_argument("--datasets", default="conll2003,atis_slots")
    rounds.add_argument("--sizes", default="100,1000,5000")
    rounds.add_argument("--repeat", type=int, default=3)
    rounds.add_argument(
        "--new", type=int, default=10, help="sentences labeled since the serving version"
    )
    lora = sub.add_parser("lora", help="LoRA token classification on CPU vs the head")
    lora.add_argument("--dataset", required=True)
    lora.add_argument("--labels", type=int, default=300)
    lora.add_argument("--seeds", type=int, default=1)
    lora.add_argument("--test", type=int, default=500)
    lora.add_argument("--threads", type=int, default=2)
    lora.add_argument("--max-length", type=int, default=128)
    for p in (head, layers, speed, rounds, lora):
        p.add_argument("--pool", type=int, default=4000)
        p.add_argument("--runtime", default="openvino")
        p.add_argument("--data", type=Path, default=DATA)
        p.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args(argv)
    commands = {
        "curves": curves_command,
        "head": head_command,
        "layers": layers_command,
        "speed": speed_command,
        "rounds": round_times_command,
        "lora": lora_command,
    }
    if args.command in commands:
        commands[args.command](args)
    if args.command == "embed":
        for name in args.dataset:
            for split in ("train", "test"):
                load_split(args.data, name, split, args.runtime, args.cache)


if __name__ == "__main__":
    main()
