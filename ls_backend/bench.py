"""The simulated annotator: replay a labeled dataset through the core's own head and ranking.

Protocol (AL_REFERENCE.md): the pool is the train split, stratified-subsampled to
``pool_size``; every strategy starts from the same ``init`` random labels per seed, labels the
top ``batch`` items of its order each round up to ``budget``, and is evaluated on the whole
test split after every round. Embeddings come from the cached encoder, so reruns are fast.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from ls_backend.core import learning_curves as lc
from ls_backend.core.heads import LinearHead
from ls_backend.core.labels import Embeddings, LabelSpace, Probs
from ls_backend.core.ranking import STRATEGIES, rank_pool

MODELS = ("head", "lora", "prepal-then-lora")
#: What the server ranks with unless STRATEGY says otherwise (Settings.strategy's default).
DEFAULT_STRATEGY = "default"
#: Share of the full-pool ("ceiling") accuracy that ``labels_to_target`` counts labels to.
TARGET_SHARE = 0.95


@dataclass
class BenchData:
    space: LabelSpace
    pool_x: Embeddings
    pool_y: NDArray[np.int64]
    test_x: Embeddings
    test_y: NDArray[np.int64]


@dataclass
class Run:
    """One strategy, one seed: figures after each round."""

    labels: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["text"] for r in rows], [str(r["label"]) for r in rows]


def load_data(
    train: Path, test: Path, pool_size: int, cache_path: Path, progress: bool = True
) -> BenchData:
    from ls_backend.core.embeddings import Encoder  # torch: only when embedding

    train_texts, train_labels = read_jsonl(train)
    test_texts, test_labels = read_jsonl(test)
    if len(train_texts) > pool_size:
        # Fixed seed: the pool is part of the dataset, not of the experiment's seed.
        keep, _ = train_test_split(
            np.arange(len(train_texts)),
            train_size=pool_size,
            stratify=train_labels,
            random_state=0,
        )
        keep = np.sort(keep)
        train_texts = [train_texts[i] for i in keep]
        train_labels = [train_labels[i] for i in keep]
    space = LabelSpace(tuple(sorted(set(train_labels) | set(test_labels))))
    encoder = Encoder(cache_path=cache_path, max_length=128)
    return BenchData(
        space,
        encoder.encode(train_texts, progress),
        space.encode([[label] for label in train_labels]),
        encoder.encode(test_texts, progress),
        space.encode([[label] for label in test_labels]),
    )


def fit_predict(data: BenchData, labeled: NDArray[np.int64]) -> tuple[Probs, NDArray[np.int64]]:
    """Pool probabilities and test predictions of the light head trained on ``labeled``."""
    targets = data.pool_y[labeled]
    if np.unique(targets).size < 2:
        # One class seen: it is the only answer the model can give.
        probs = np.zeros((data.pool_x.shape[0], data.space.size, 1), dtype=np.float32)
        probs[:, targets[0], 0] = 1.0
        return probs, np.full(data.test_y.size, targets[0], dtype=np.int64)
    head = LinearHead.fit(data.space, data.pool_x[labeled], targets)
    test_pred = head.predict_proba(data.test_x)[:, :, 0].argmax(axis=1)
    return head.predict_proba(data.pool_x), test_pred.astype(np.int64)


def simulate(data: BenchData, strategy: str, seed: int, init: int, batch: int, budget: int) -> Run:
    labeled = np.random.default_rng(seed).choice(data.pool_y.size, init, replace=False)
    rng = np.random.default_rng([seed, 1])  # the strategy's own tie-breaking
    run = Run()
    while True:
        start = time.perf_counter()
        probs, pred = fit_predict(data, labeled)
        run.labels.append(int(labeled.size))
        run.accuracy.append(float((pred == data.test_y).mean()))
        run.macro_f1.append(float(f1_score(data.test_y, pred, average="macro", zero_division=0)))
        if labeled.size >= budget:
            run.seconds.append(time.perf_counter() - start)
            return run
        order = rank_pool(strategy, probs, data.pool_x, labeled, rng=rng)
        # Sorted, so the fit does not depend on the order within a batch: otherwise float
        # rounding alone sends two strategies with the same picks down different paths.
        labeled = np.sort(np.concatenate([labeled, order[: min(batch, budget - labeled.size)]]))
        run.seconds.append(time.perf_counter() - start)


def ceiling(data: BenchData) -> float:
    """Test accuracy of the same head trained on the whole pool."""
    _, pred = fit_predict(data, np.arange(data.pool_y.size))
    return float((pred == data.test_y).mean())


def summarise(
    runs: dict[str, list[Run]], full_pool_accuracy: float, budget: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, details). results: per strategy AUC (mean, std over seeds), RIPL in %, labels
    to reach 95% of the ceiling, savings against random there, and the mean curve. details:
    std bands, macro-F1, labels to match random's final accuracy, time per round."""
    out: dict[str, Any] = {"default": DEFAULT_STRATEGY, "strategies": {}}
    details: dict[str, Any] = {"ceiling": full_pool_accuracy, "strategies": {}}
    target = TARGET_SHARE * full_pool_accuracy
    aucs = {name: [lc.curve_auc(r.accuracy) for r in rs] for name, rs in runs.items()}
    random_auc = float(np.mean(aucs["random"])) if "random" in runs else None
    labels = runs[next(iter(runs))][0].labels
    curves = {name: np.mean([r.accuracy for r in rs], axis=0) for name, rs in runs.items()}
    to_target = {name: lc.labels_to_reach(labels, c, target) for name, c in curves.items()}
    random_final = float(curves["random"][-1]) if "random" in runs else None
    for name, rs in runs.items():
        auc = float(np.mean(aucs[name]))
        out["strategies"][name] = {
            "auc": auc,
            "auc_std": float(np.std(aucs[name])),
            "ripl": None if random_auc is None else 100 * lc.ripl(auc, random_auc),
            "labels_to_target": to_target[name],
            "savings": lc.savings(to_target[name], to_target.get("random")),
            "curve": [float(a) for a in curves[name]],
        }
        f1 = np.array([r.macro_f1 for r in rs])
        acc = np.array([r.accuracy for r in rs])
        details["strategies"][name] = {
            "labels": labels,
            "accuracy_std": acc.std(axis=0).tolist(),
            "macro_f1": f1.mean(axis=0).tolist(),
            "macro_f1_std": f1.std(axis=0).tolist(),
            "labels_to_random_final": None
            if random_final is None
            else lc.labels_to_reach(labels, curves[name], random_final),
            "seconds_per_round": float(np.mean([np.mean(r.seconds) for r in rs])),
        }
    details["budget"] = budget
    return out, details


def markdown(title: str, summary: dict[str, Any], details: dict[str, Any]) -> str:
    budget = details["budget"]
    lines = [
        f"### {title} (ceiling {details['ceiling']:.3f})",
        "",
        "| strategy | AUC | RIPL % | final acc. | final macro-F1 | labels to 95% ceiling "
        "| savings vs random | labels to random@budget | s / round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for name, s in summary["strategies"].items():
        d = details["strategies"][name]
        reach = d["labels_to_random_final"]
        share = "-" if reach is None else f"{reach} ({100 * reach / budget:.0f}%)"
        lines.append(
            f"| {name} | {s['auc']:.3f} ± {s['auc_std']:.3f} | {fmt(s['ripl'], '+.1f')} "
            f"| {s['curve'][-1]:.3f} ± {d['accuracy_std'][-1]:.3f} | {d['macro_f1'][-1]:.3f} "
            f"| {fmt(s['labels_to_target'], 'd')} | {fmt(s['savings'], '.0%')} | {share} "
            f"| {d['seconds_per_round']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(title: str, summary: dict[str, Any], details: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in summary["strategies"].items():
        x = np.array(details["strategies"][name]["labels"])
        mean, std = np.array(s["curve"]), np.array(details["strategies"][name]["accuracy_std"])
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.axhline(details["ceiling"], color="grey", linestyle=":", label="full pool")
    ax.set(title=title, xlabel="labels", ylabel="test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _require_model(model: str) -> None:
    if model == "head":
        return
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {MODELS}")
    if importlib.util.find_spec("ls_backend.core.lora") is None:
        raise RuntimeError(f"--model {model} needs ls_backend.core.lora, which is not available")
    raise NotImplementedError(f"--model {model}: the bench runs only the light head so far")


def run_bench(
    train: Path,
    test: Path,
    out: Path,
    strategies: Sequence[str] = ("random", "margin", DEFAULT_STRATEGY),
    init: int = 10,
    batch: int = 10,
    budget: int = 300,
    seeds: int = 5,
    model: str = "head",
    pool_size: int = 4000,
    cache_path: Path | None = None,
) -> dict[str, Any]:
    """Run every strategy for every seed; write results.json, details.json, results.md and
    curves.png under ``out`` and return the results.json content."""
    _require_model(model)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {sorted(STRATEGIES)}")
    if not init < budget:
        raise ValueError("--init must be below --budget")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(train, test, pool_size, cache_path or out / "embeddings.sqlite")
    if init > data.pool_y.size or budget > data.pool_y.size:
        raise ValueError("--init and --budget must not exceed the pool")
    runs: dict[str, list[Run]] = {name: [] for name in strategies}
    rounds = 1 + -(-(budget - init) // batch)
    with tqdm(total=len(strategies) * seeds * rounds, desc="bench", unit="round") as bar:
        for seed in range(seeds):
            for name in strategies:
                runs[name].append(simulate(data, name, seed, init, batch, budget))
                bar.update(rounds)
    summary, details = summarise(runs, ceiling(data), budget)
    title = train.parent.name or train.stem
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "details.json").write_text(json.dumps(details, indent=2))
    (out / "results.md").write_text(markdown(title, summary, details))
    plot(title, summary, details, out / "curves.png")
    return summary


def _main(args: argparse.Namespace) -> None:
    run_bench(
        args.train,
        args.test,
        args.out,
        [s.strip() for s in args.strategies.split(",") if s.strip()],
        args.init,
        args.batch,
        args.budget,
        args.seeds,
        args.model,
        args.pool_size,
        args.cache,
    )
    print((args.out / "results.md").read_text(), end="")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to an argparse sub-command set; it dispatches through ``args.func``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="simulate an annotator on a labeled dataset and compare strategies"
    )
    p.add_argument("--train", type=Path, required=True, help="JSONL(.gz) of {text, label}: pool")
    p.add_argument("--test", type=Path, required=True, help="JSONL(.gz) of {text, label}: test")
    p.add_argument("--out", type=Path, required=True, help="directory for the results")
    p.add_argument(
        "--strategies",
        default=f"random,margin,{DEFAULT_STRATEGY}",
        help=f"comma-separated, from: {', '.join(sorted(STRATEGIES))}",
    )
    p.add_argument("--init", type=int, default=10, help="random labels to start from")
    p.add_argument("--batch", type=int, default=10, help="labels added per round")
    p.add_argument("--budget", type=int, default=300, help="labels at the last round")
    p.add_argument("--seeds", type=int, default=5, help="repetitions (seeds 0..N-1)")
    p.add_argument("--model", choices=MODELS, default="head", help="model trained each round")
    p.add_argument("--pool-size", type=int, default=4000, help="stratified pool subsample size")
    p.add_argument(
        "--cache", type=Path, default=None, help="embedding cache (default OUT/embeddings.sqlite)"
    )
    p.set_defaults(func=_main)
    return p
