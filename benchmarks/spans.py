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
from ls_backend.core.spans.features import shape_features
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

    encoder = Encoder(
        cache=cache / "sentences.sqlite", runtime=runtime, export_dir=cache / "export"
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
#: ``default`` ranking (exploration, near-duplicate filter) over a measure's scores.
MEASURE_STRATEGIES = tuple(SPAN_MEASURES)
DEFAULT_PREFIX = "default:"


@dataclass
class Run:
    labels: list[int] = field(default_factory=list)
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
    measure = strategy.removeprefix(DEFAULT_PREFIX)
    while True:
        started = time.perf_counter()
        last = labeled.size >= budget
        rows = labeled_rows(bench, labeled)
        head = SpanHead.fit_arrays(bench.space, bench.pool_x[rows], bench.pool_tags[rows], config)
        test_probs = TokenProbs(head.predict_arrays(bench.test_x)[:, :, None], bench.test.offsets)
        decoded = decode_spans(test_probs, bench.test.units, bench.space)
        run.labels.append(int(labeled.size))
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
                        classes=classes or len(bench.space.labels),
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
            "entities_labeled": float(np.mean([r.entities for r in rs])),
            "seconds_per_round": float(np.mean([np.mean(r.seconds) for r in rs])),
            "labels": labels,
            "curve": [float(v) for v in curves[name]],
            "f1_per_seed": [r.f1 for r in rs],
        }
    return out


def markdown(title: str, summary: dict[str, Any], seeds: int, budget: int) -> str:
    lines = [
        f"#### {title} (ceiling {summary['ceiling']:.3f}: the head on the whole pool)",
        "",
        "| strategy | AUC (± std) | RIPL % (± SE) | F1 at "
        + str(budget)
        + " | labels to random@"
        + str(budget)
        + " | words labeled | entities labeled | s / round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["strategies"].items():
        ripl = "-" if s["ripl"] is None else f"{s['ripl']:+.1f} ± {s['ripl_se'] or 0:.1f}"
        reach = s["labels_to_random_final"]
        lines.append(
            f"| {name} | {s['auc']:.3f} ± {s['auc_std']:.3f} | {ripl} | "
            f"{s['final_f1']:.3f} ± {s['final_f1_std']:.3f} | {reach if reach else '-'} | "
            f"{s['units_labeled']:.0f} | {s['entities_labeled']:.0f} | "
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
            "explore_classes": args.classes or len(bench.space.labels),
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    table = markdown(bench.name, summary, args.seeds, args.budget)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


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
        default="random,mnlp,least_confident_span,entropy,entropy_sum,"
        + ",".join(DEFAULT_PREFIX + m for m in MEASURE_STRATEGIES),
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
        help="exploration share's class count (default: the number of span labels)",
    )
    curves.add_argument("--runtime", default="openvino")
    curves.add_argument("--data", type=Path, default=DATA)
    curves.add_argument("--cache", type=Path, default=CACHE)
    curves.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "curves":
        curves_command(args)
    if args.command == "embed":
        for name in args.dataset:
            for split in ("train", "test"):
                load_split(args.data, name, split, args.runtime, args.cache)


if __name__ == "__main__":
    main()
