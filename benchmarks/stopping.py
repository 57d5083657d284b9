"""The plateau signal (core.stopping) against stabilizing predictions: the table in RESULTS.md.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/stopping.py \\
        --out bench_out/stopping --cache /tmp/stop_cache/embeddings.sqlite [--seeds 5] \\
        [--budget 500] [--datasets trec,sms_spam] [--table-only]

Runs `ls-backend bench --model served` (the server's head lane, random and default, budget
500) on each shared classification set, then prints per dataset and strategy: where the mean
learning curve first comes within a point of its budget accuracy, where the plateau signal
stops (a seed that never stops counts at the budget), the accuracy left on the table (test
accuracy at the budget minus at the stop), the labels saved, and the goal (left <= 1 point,
stop <= 1.5x the within-a-point labels); today's rule (stabilizing predictions) beside it.
`--table-only` reads the folders of an earlier run. `--risk`/`--log-sd` re-decide the stops
from the forecasts each run recorded per round (no rerun): the rule is
P(next 100 labels buy more than a point) < risk, with log(true / forecast) ~ N(0, log_sd^2).

The pool is the bench's 4,000-item stratified subsample and the test split is cut to 2,000
(stratified), except reuters_r52: one of its classes has a single training text, so the
stratified cuts cannot be made and it runs on its whole train (6,532) and test (2,568) splits.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from ls_backend.core import stopping

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = (
    "trec",
    "movie_review_snippets",
    "sms_spam",
    "reuters_r8",
    "reuters_r52",
    "20newsgroups",
)
#: (pool size, test size) where the defaults (4,000, 2,000) cannot be stratified.
SIZES = {"reuters_r52": (7000, None)}
STRATEGIES = ("random", "default")


def split(dataset: str, name: str) -> Path:
    plain = DATA / dataset / f"{name}.jsonl"
    return plain if plain.exists() else plain.with_suffix(".jsonl.gz")


def run(dataset: str, out: Path, cache: Path, seeds: int, budget: int) -> None:
    pool, test = SIZES.get(dataset, (4000, 2000))
    command = [
        sys.executable,
        "-m",
        "ls_backend.cli",
        "bench",
        "--model",
        "served",
        "--train",
        str(split(dataset, "train")),
        "--test",
        str(split(dataset, "test")),
        "--strategies",
        ",".join(STRATEGIES),
        "--seeds",
        str(seeds),
        "--budget",
        str(budget),
        "--pool-size",
        str(pool),
        "--out",
        str(out / dataset),
        "--cache",
        str(cache),
    ]
    if test is not None:
        command += ["--test-size", str(test)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def redecide(
    stop: dict[str, Any], labels: list[int], accuracy: list[list[float]], limit: float
) -> dict[str, Any]:
    """The plateau stops again from the recorded forecasts, with stop <=> forecast < limit."""
    at = [
        next((i for i, g in enumerate(gains) if g is not None and g < limit), len(labels) - 1)
        for gains in stop["gain_per_seed"]
    ]
    left = [acc[-1] - acc[i] for acc, i in zip(accuracy, at, strict=True)]
    return {
        **stop,
        "stopped_seeds": sum(i < len(labels) - 1 for i in at),
        "labels": [labels[i] for i in at],
        "accuracy_left": left,
        "mean_labels": float(np.mean([labels[i] for i in at])),
        "mean_accuracy_left": float(np.mean(left)),
        "mean_labels_saved": float(labels[-1] - np.mean([labels[i] for i in at])),
    }


def table(out: Path, datasets: list[str], risk: float | None, log_sd: float | None) -> str:
    limit = None
    if risk is not None or log_sd is not None:
        sd = stopping.FORECAST_LOG_SD if log_sd is None else log_sd
        chosen = stopping.RISK if risk is None else risk
        limit = stopping.POINT * math.exp(-sd * float(norm.isf(chosen)))
    lines = [
        "| dataset | strategy | final acc. | within a point at | plateau: stopped "
        "| labels at the stop | stop / within | accuracy left | labels saved | goal "
        "| stabilizing predictions: stopped | labels | accuracy left |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        details = json.loads((out / dataset / "details.json").read_text())
        seeds = details["seeds"]
        for name in STRATEGIES:
            d = details["strategies"][name]
            accuracy = d["accuracy_per_seed"]
            stop, sp = d["stop"], d["stop_stabilizing"]
            if limit is not None:
                stop = redecide(stop, d["labels"], accuracy, limit)
            within = stop["within_point_labels"]
            ratio = stop["mean_labels"] / within
            left = stop["mean_accuracy_left"]
            goal = "met" if left <= stopping.POINT and ratio <= 1.5 else "missed"
            sp_labels = "-" if sp["mean_labels"] is None else f"{sp['mean_labels']:.0f}"
            sp_left = sp["mean_accuracy_left"]
            sp_left = "-" if sp_left is None else f"{sp_left:+.3f}"
            lines.append(
                f"| {dataset} | {name} | {np.mean([a[-1] for a in accuracy]):.3f} | {within} "
                f"| {stop['stopped_seeds']} of {seeds} | {stop['mean_labels']:.0f} "
                f"({', '.join(map(str, stop['labels']))}) | {ratio:.2f}x | {left:+.3f} "
                f"| {stop['mean_labels_saved']:.0f} | {goal} "
                f"| {sp['stopped_seeds']} of {seeds} | {sp_labels} | {sp_left} |"
            )
    return "\n".join(lines)


def cost(cache: Path, sizes: tuple[int, ...] = (300, 1000, 3000)) -> str:
    """Seconds the signal costs the server at each label count, on 20newsgroups' embeddings
    (20 classes): the labels' out-of-fold probabilities (5 light-head fits), every version's
    decisions on a 2,000-task stop set (one matrix product each; the report makes them for
    stabilizing predictions already) and ``plateau_signal`` itself."""
    import time

    from ls_backend.bench import load_data
    from ls_backend.core.heads import LinearHead
    from ls_backend.core.report import out_of_fold_probs
    from ls_backend.report import STOP_SET, STOP_VERSIONS

    dataset = "20newsgroups"
    data = load_data(split(dataset, "train"), split(dataset, "test"), 4000, cache, False, 2000)
    rng = np.random.default_rng(0)
    stop_x = data.pool_x[rng.choice(data.pool_y.size, STOP_SET, replace=False)]
    lines = [
        "| labels | versions | out-of-fold probabilities | versions' decisions | signal | total |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        rows = rng.choice(data.pool_y.size, n, replace=False)
        x, y = data.pool_x[rows], data.pool_y[rows]
        started = time.perf_counter()
        oof = out_of_fold_probs(data.space, x, y, 10.0)
        oof_s = time.perf_counter() - started
        head = LinearHead.fit(data.space, x, y)
        versions = min(STOP_VERSIONS, n // 10)
        started = time.perf_counter()
        probs = [head.predict_proba(stop_x)[:, :, 0] for _ in range(versions)]
        decisions = [p.argmax(axis=1) for p in probs]
        predict_s = time.perf_counter() - started
        counts = np.linspace(10, n, versions).round().astype(int).tolist()
        started = time.perf_counter()
        stopping.plateau_signal(counts, decisions, probs[-1], oof, y)
        signal_s = time.perf_counter() - started
        total = oof_s + predict_s + signal_s
        lines.append(
            f"| {n:,} | {versions} | {oof_s:.2f} | {predict_s:.2f} | {signal_s:.3f} | {total:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True, help="embedding cache (outside the repo)")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=500)
    p.add_argument("--table-only", action="store_true", help="only print the table of --out")
    p.add_argument("--risk", type=float, default=None, help="re-decide with this risk")
    p.add_argument("--log-sd", type=float, default=None, help="re-decide with this spread")
    p.add_argument("--cost", action="store_true", help="only time the signal (20newsgroups)")
    args = p.parse_args()
    if args.cost:
        print(cost(args.cache))
        return
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not args.table_only:
        for dataset in datasets:
            print(f"running {dataset}", file=sys.stderr, flush=True)
            run(dataset, args.out, args.cache, args.seeds, args.budget)
    print(table(args.out, datasets, args.risk, args.log_sd))


if __name__ == "__main__":
    main()
