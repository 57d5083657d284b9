"""The head's zero-shot prior (HEAD_PRIOR) against the plain head: the table in RESULTS.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/head_prior.py --dataset trec \
        --cache bench_out/cache/trec.sqlite [--seeds 5] [--modes head,served]

Same protocol as `ls-backend bench` (4,000-item pool, 10 random initial labels, batches of 10
up to 300, `bench.simulate`), both arms in one process so each seed is paired: `plain` is the
head as it was (HEAD_PRIOR=false), `prior` the head shrunk toward the label names with the
strength cross-validation chooses. `head` mode fits a head on every label each round;
`served` runs the server's head lane (`bench.ServedFit`: zero-shot first, promotions).
RIPL and labels-to-random@300 are against random with the *plain* model of the same mode
(today's random); `vs own random` is against random with the same arm's model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.bench import data as bench_data
from ls_backend.bench import simulate as bench
from ls_backend.core import learning_curves as lc
from ls_backend.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def split(name: str, part: str) -> Path:
    path = DATA / name / f"{part}.jsonl"
    return path if path.exists() else path.with_suffix(".jsonl.gz")


def fits(mode: str, prior: bool, data: bench_data.BenchData, root: Path) -> bench.Fit:
    """A fresh ``Fit`` for one run."""
    if mode == "head":
        return partial(bench.fit_predict, prior=prior)
    config = replace(Settings().round_config(), head_prior=prior)  # the server's round
    return bench.ServedFit(Path(tempfile.mkdtemp(dir=root)), data, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1")
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--modes", default="head,served")
    parser.add_argument("--strategies", default="random,default")
    parser.add_argument("--embedding-backend", default="openvino")
    parser.add_argument("--out", type=Path, default=Path("bench_out/head_prior"))
    parser.add_argument(
        "--merge", type=Path, nargs="*", help="print the table of these runs' JSON, seeds pooled"
    )
    args = parser.parse_args()
    name = args.dataset
    if args.merge:
        print(table(name, merged([json.loads(p.read_text()) for p in args.merge]), args.budget))
        return
    data = bench_data.load_data(
        split(name, "train"), split(name, "test"), 4000, args.cache, False,
        runtime=args.embedding_backend,
    )  # fmt: skip
    strategies = args.strategies.split(",")
    results: dict[str, dict[str, list[list[float]]]] = {}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as root:
            for arm in ("plain", "prior"):
                for strategy in strategies:
                    curves = [
                        bench.simulate(
                            data,
                            strategy,
                            seed,
                            10,
                            10,
                            args.budget,
                            fits(mode, arm == "prior", data, Path(root)),
                        ).accuracy  # fmt: skip
                        for seed in range(args.first_seed, args.first_seed + args.seeds)
                    ]
                    results.setdefault(mode, {})[f"{arm}:{strategy}"] = curves
                    print(f"{name} {mode} {arm}:{strategy} done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results))
    print(table(name, results, args.budget))


def merged(parts: list[dict[str, dict[str, list[list[float]]]]]) -> dict[str, Any]:
    """Runs of several seed ranges as one: each arm's curves concatenated, in order."""
    out: dict[str, dict[str, list[list[float]]]] = {}
    for part in parts:
        for mode, runs in part.items():
            for key, curves in runs.items():
                out.setdefault(mode, {}).setdefault(key, []).extend(curves)
    return out


def table(name: str, results: dict[str, dict[str, list[list[float]]]], budget: int) -> str:
    lines = [
        "| dataset | mode | arm:strategy | AUC | RIPL vs today's random | vs own random "
        "| prior - plain (RIPL points) | final acc. | labels to today's random@300 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = list(range(10, budget + 1, 10))
    for mode, runs in results.items():
        aucs = {k: [lc.curve_auc(c) for c in v] for k, v in runs.items()}
        today = aucs["plain:random"]
        target = float(np.mean(runs["plain:random"], axis=0)[-1])
        for key, values in aucs.items():
            arm, strategy = key.split(":")
            own = aucs[f"{arm}:random"]
            plain = aucs[f"plain:{strategy}"]
            curve = np.mean(runs[key], axis=0)
            reach = lc.labels_to_reach(labels, curve, target)
            share = "-" if reach is None else f"{reach} ({100 * reach / budget:.0f}%)"
            lines.append(
                f"| {name} | {mode} | {key} | {np.mean(values):.3f} "
                f"| {ripl(values, today)} | {ripl(values, own)} | {gain(values, plain, today)} "
                f"| {curve[-1]:.3f} | {share} |"
            )
    return "\n".join(lines)


def ripl(values: list[float], reference: list[float]) -> str:
    """RIPL of ``values`` against ``reference`` in %, ± its paired standard error."""
    if values is reference:
        return "-"
    gain = 100 * lc.ripl(float(np.mean(values)), float(np.mean(reference)))
    se = lc.ripl_standard_error(values, reference)
    return f"{gain:+.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def gain(values: list[float], plain: list[float], random: list[float]) -> str:
    """The arm's RIPL minus the plain arm's, both against ``random``, ± its paired standard
    error (seed s against seed s)."""
    if values is plain:
        return "-"
    diff = 100 * (np.asarray(values) - np.asarray(plain)) / (1 - float(np.mean(random)))
    return f"{diff.mean():+.1f} ± {diff.std(ddof=1) / np.sqrt(diff.size):.1f}"


if __name__ == "__main__":
    main()
