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
`--table-only` reads the folders of an earlier run; the stops are always decided from the
forecasts each run recorded per round by the core's decision (`stopping.persistent_stop`),
so a run made under an earlier decision rule reads as today's (`--rewrite` writes that
into its details.json and results.md). `--spread` measures the forecast's error
(FORECAST_LOG_SD); `--cost` times the signal.

The pool is the bench's 4,000-item stratified subsample and the test split is cut to 2,000
(stratified), except reuters_r52: one of its classes has a single training text, so the
stratified cuts cannot be made and it runs on its whole train (6,532) and test (2,568) splits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

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


def classes(dataset: str) -> int:
    """Classes of a dataset's label config, as the bench reads it (train and test labels):
    runs recorded before ``stop.classes`` existed."""
    from ls_backend.bench.data import read_jsonl

    return len(
        {label for name in ("train", "test") for label in read_jsonl(split(dataset, name))[1]}
    )


def redecide(
    stop: dict[str, Any],
    labels: list[int],
    accuracy: list[list[float]],
    guards: bool = True,
    covered: int = stopping.COVERED,
) -> dict[str, Any]:
    """The plateau stops from the forecasts a run recorded per round, by the core's decision
    (``stopping.persistent_stop`` from ``stopping.stop_floor``): the same as the bench
    decides, so runs of an earlier decision rule read as today's (the forecasts themselves do
    not depend on it). Runs recorded before the class counts were (``counts_per_seed``) keep
    the floor of ``MIN_STOP``; without ``guards``, each version's forecast decides alone;
    ``covered``: the class count that lowers the floor (for its sensitivity)."""

    def stops(seen: list[int], gains: list[float | None], new: float | None, held: Any) -> bool:
        if not guards:  # each version's forecast alone
            return stopping.persistent_stop(seen, gains, stopping.POINT, 0, 0)
        floor = stopping.stop_floor(stop["classes"], held, covered)
        plateau = stopping.persistent_stop(seen, gains, stopping.POINT, stopping.PERSIST, floor)
        return plateau and (new is None or new < stopping.POINT)

    at = []
    seeds = len(stop["gain_per_seed"])
    # Runs before the Good-Turing check or the counts recorded neither: None (not checked).
    unseen = stop.get("unseen_per_seed") or [[None] * len(g) for g in stop["gain_per_seed"]]
    counts = stop.get("counts_per_seed") or [None] * seeds
    for gains, masses, per_round in zip(stop["gain_per_seed"], unseen, counts, strict=True):
        decided = (
            stops(labels[: i + 1], gains[: i + 1], masses[i], per_round and per_round[i])
            for i in range(len(gains))
        )
        at.append(next((i for i, s in enumerate(decided) if s), len(labels) - 1))
    left = [acc[-1] - acc[i] for acc, i in zip(accuracy, at, strict=True)]
    return {
        **stop,
        "rule": stopping.RULE if guards and covered == stopping.COVERED else "another rule",
        "stopped_seeds": sum(i < len(labels) - 1 for i in at),
        "stopped": [i < len(labels) - 1 for i in at],
        "labels": [labels[i] for i in at],
        "accuracy_left": left,
        "labels_saved": [labels[-1] - labels[i] for i in at],
        "mean_labels": float(np.mean([labels[i] for i in at])),
        "mean_accuracy_left": float(np.mean(left)),
        "mean_labels_saved": float(labels[-1] - np.mean([labels[i] for i in at])),
    }


def table(
    out: Path,
    datasets: list[str],
    rewrite: bool = False,
    guards: bool = True,
    covered: int = stopping.COVERED,
) -> str:
    lines = [
        "| dataset (classes) | strategy | final acc. | within a point at | plateau: stopped "
        "| labels at the stop | stop / within | accuracy left | labels saved | goal "
        "| stabilizing predictions: stopped | labels | accuracy left |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        folder = out / dataset
        details = json.loads((folder / "details.json").read_text())
        seeds = details["seeds"]
        for name in STRATEGIES:
            d = details["strategies"][name]
            accuracy = d["accuracy_per_seed"]
            d["stop"].setdefault("classes", None)
            d["stop"]["classes"] = d["stop"]["classes"] or classes(dataset)
            d["stop"] = stop = redecide(d["stop"], d["labels"], accuracy, guards, covered)
            sp = d["stop_stabilizing"]
            within = stop["within_point_labels"]
            ratio = stop["mean_labels"] / within
            left = stop["mean_accuracy_left"]
            goal = "met" if left <= stopping.POINT and ratio <= 1.5 else "missed"
            sp_labels = "-" if sp["mean_labels"] is None else f"{sp['mean_labels']:.0f}"
            sp_left = sp["mean_accuracy_left"]
            sp_left = "-" if sp_left is None else f"{sp_left:+.3f}"
            lines.append(
                f"| {dataset} ({stop['classes']}) | {name} "
                f"| {np.mean([a[-1] for a in accuracy]):.3f} | {within} "
                f"| {stop['stopped_seeds']} of {seeds} | {stop['mean_labels']:.0f} "
                f"({', '.join(map(str, stop['labels']))}) | {ratio:.2f}x | {left:+.3f} "
                f"| {stop['mean_labels_saved']:.0f} | {goal} "
                f"| {sp['stopped_seeds']} of {seeds} | {sp_labels} | {sp_left} |"
            )
        if rewrite:  # the run's own files, decided by today's rule
            from ls_backend.bench.report import markdown

            summary = json.loads((folder / "results.json").read_text())
            (folder / "details.json").write_text(json.dumps(details, indent=2))
            title = (folder / "results.md").read_text().splitlines()[0].removeprefix("### ")
            title = title.rsplit(" (ceiling", 1)[0]
            (folder / "results.md").write_text(markdown(title, summary, details))
    return "\n".join(lines)


def log_ratios(details: dict[str, Any], name: str, lo: int = 100, hi: int = 400) -> list[float]:
    """log(true gain / forecast gain) of the next HORIZON labels, from ``lo`` to ``hi`` labels:
    the mean test curve's gain against the mean forecast over seeds (one seed's test curve is
    too noisy to compare with), where the true gain is above noise (0.3 points)."""
    d = details["strategies"][name]
    labels, curve = d["labels"], np.mean(d["accuracy_per_seed"], axis=0)
    step = stopping.HORIZON // (labels[1] - labels[0])
    out = []
    for i, n in enumerate(labels):
        if not lo <= n <= hi or i + step >= len(labels):
            continue
        forecasts = [seed[i] for seed in d["stop"]["gain_per_seed"] if seed[i] is not None]
        true = curve[i + step] - curve[i]
        if forecasts and true > 0.003 and np.mean(forecasts) > 0:
            out.append(float(np.log(true / np.mean(forecasts))))
    return out


def spread(out: Path, datasets: list[str]) -> str:
    """The forecast's error on each dataset and pooled: mean and SD of log(true / forecast)."""
    lines = [
        "| dataset | strategy | points | mean log(true / forecast) | SD |",
        "|---|---|---|---|---|",
    ]
    pooled: list[float] = []
    for dataset in datasets:
        details = json.loads((out / dataset / "details.json").read_text())
        for name in STRATEGIES:
            r = log_ratios(details, name)
            pooled += r
            if r:
                lines.append(
                    f"| {dataset} | {name} | {len(r)} | {np.mean(r):+.2f} | {np.std(r):.2f} |"
                )
    lines.append(
        f"| all | | {len(pooled)} | {np.mean(pooled):+.2f} | {np.std(pooled):.2f} "
        f"(RMS {np.sqrt(np.mean(np.square(pooled))):.2f}) |"
    )
    return "\n".join(lines)


def cost(cache: Path, sizes: tuple[int, ...] = (300, 1000, 3000)) -> str:
    """CPU seconds (one thread: the machine is shared, its wall time is not a figure) the
    signal costs the server at each label count, on 20newsgroups' embeddings (20 classes):
    the labels' out-of-fold probabilities (5 light-head fits), every version's decisions on
    a 2,000-task stop set (one matrix product each; the report makes them for stabilizing
    predictions already) and ``plateau_signal`` itself."""
    import time

    from ls_backend.bench.data import load_data
    from ls_backend.core.heads import LinearHead
    from ls_backend.core.report import out_of_fold_probs
    from ls_backend.core.stopping import STOP_SET
    from ls_backend.server.report import STOP_VERSIONS

    dataset = "20newsgroups"
    data = load_data(split(dataset, "train"), split(dataset, "test"), 4000, cache, False, 2000)
    rng = np.random.default_rng(0)
    stop_x = data.pool_x[rng.choice(data.pool_y.size, STOP_SET, replace=False)]
    lines = [
        "| labels | versions | out-of-fold probabilities (s) | versions' decisions (s) "
        "| signal (s) | total (s) |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        rows = rng.choice(data.pool_y.size, n, replace=False)
        x, y = data.pool_x[rows], data.pool_y[rows]
        started = time.process_time()
        oof = out_of_fold_probs(data.space, x, y, 10.0)
        oof_s = time.process_time() - started
        head = LinearHead.fit(data.space, x, y)
        versions = min(STOP_VERSIONS, n // 10)
        started = time.process_time()
        probs = [head.predict_proba(stop_x)[:, :, 0] for _ in range(versions)]
        decisions = [p.argmax(axis=1) for p in probs]
        predict_s = time.process_time() - started
        counts = np.linspace(10, n, versions).round().astype(int).tolist()
        started = time.process_time()
        stopping.plateau_signal(counts, decisions, probs[-1], oof, y)
        signal_s = time.process_time() - started
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
    p.add_argument(
        "--rewrite", action="store_true", help="write today's decision into the runs' files"
    )
    p.add_argument(
        "--no-guards",
        action="store_true",
        help="decide on each version's forecast alone (no persistence, no floor): for comparison",
    )
    p.add_argument(
        "--covered",
        type=int,
        default=stopping.COVERED,
        help="labels every class needs for the lower floor (sensitivity; recorded runs only)",
    )
    p.add_argument("--cost", action="store_true", help="only time the signal (20newsgroups)")
    p.add_argument("--spread", action="store_true", help="only the forecast's measured error")
    args = p.parse_args()
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if args.cost:
        print(cost(args.cache))
        return
    if args.spread:
        print(spread(args.out, datasets))
        return
    if not args.table_only:
        for dataset in datasets:
            print(f"running {dataset}", file=sys.stderr, flush=True)
            run(dataset, args.out, args.cache, args.seeds, args.budget)
    rewrite = args.rewrite and not args.no_guards and args.covered == stopping.COVERED
    print(table(args.out, datasets, rewrite, not args.no_guards, args.covered))


if __name__ == "__main__":
    main()
