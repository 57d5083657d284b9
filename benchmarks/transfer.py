"""PRepAL's transfer claim, measured: labels chosen by the served loop on frozen MiniLM
(``default``) against random labels, each fine-tuned once on other models.

Three phases, resumable (each skips what is done):

    select    the server's head lane in the loop (``bench --model served``, the same code: the
              bench's data, ``ServedFit``, ``run_strategies``, its report under
              OUT/select/DATASET/), recording the labeled set at each --at budget per seed:
              OUT/select/DATASET/selections.json (texts and labels, so later phases need no
              embeddings)
    finetune  every (seed, backbone, dataset, budget, strategy) cell: ``core.finetune`` on that
              selection (LoRA, no evaluation split: the test subsample scores it), one JSON line
              per cell in OUT/finetune.jsonl; --shard I/N splits the cells between processes
    report    the table (markdown) from both

    python benchmarks/transfer.py select --out OUT --datasets trec,sms_spam --seeds 3
    python benchmarks/transfer.py finetune --out OUT --backbones embedded,/tmp/models/mpnet
    python benchmarks/transfer.py report --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ls_backend.bench.data import load_data, read_jsonl, subsample  # noqa: E402
from ls_backend.bench.report import summarise, write  # noqa: E402
from ls_backend.bench.simulate import Predicted, ServedFit, ceiling, run_strategies  # noqa: E402
from ls_backend.core.configs import LoraTrainConfig  # noqa: E402
from ls_backend.core.finetune import FinetuneConfig, Labeled, finetune  # noqa: E402
from ls_backend.core.labels import LabelSpace  # noqa: E402
from ls_backend.settings import Settings  # noqa: E402

DATA = Path(os.environ.get("DATA", ROOT.parent / "shared" / "data"))
DATASETS = ("trec", "movie_review_snippets", "sms_spam", "reuters_r8")
STRATEGIES = ("random", "default")


def split_path(dataset: str, split: str) -> Path:
    path = DATA / dataset / f"{split}.jsonl"
    return path.with_suffix(".jsonl.gz") if not path.exists() else path


class Recording:
    """A ``Fit`` that records the labeled rows at the budgets asked for, around another."""

    def __init__(self, inner: ServedFit, at: tuple[int, ...]) -> None:
        self.inner, self.at = inner, at
        self.picked: dict[int, list[int]] = {}

    @property
    def promotions(self) -> dict[str, int]:
        return self.inner.promotions

    def __call__(self, data: Any, labeled: np.ndarray, pool: bool = True) -> Predicted:
        if labeled.size in self.at:
            self.picked[int(labeled.size)] = [int(i) for i in labeled]
        return self.inner(data, labeled, pool)


def select(args: argparse.Namespace) -> None:
    for dataset in args.datasets.split(","):
        if (args.out / "select" / dataset / "selections.json").is_file():
            print(f"{dataset}: selections there already")
        else:
            select_one(args, dataset)


def select_one(args: argparse.Namespace, dataset: str) -> None:
    settings = Settings()
    at = tuple(int(a) for a in args.at.split(","))
    out = args.out / "select" / dataset
    data = load_data(
        split_path(dataset, "train"),
        split_path(dataset, "test"),
        args.pool_size,
        args.cache,
        runtime=settings.resolved_embedding_backend(),
        max_length=settings.max_length,
        model=settings.embedding_model,
    )
    recorders: list[Recording] = []
    with tempfile.TemporaryDirectory() as registries:

        def fit_for(seed: int) -> Recording:
            root = Path(tempfile.mkdtemp(dir=registries))
            recorders.append(Recording(ServedFit(root, data, settings.round_config()), at))
            return recorders[-1]

        runs = run_strategies(
            data, STRATEGIES, args.seeds, args.init, 10, max(at), fit_for, f"{dataset} served"
        )
    report = summarise(runs, ceiling(data), max(at), "served")
    write(out, f"{dataset}: the served model (selections for transfer)", report)
    # run_strategies makes fits seed by seed, strategy by strategy (in STRATEGIES order).
    selections: dict[str, Any] = {"labels": list(data.space.labels), "strategies": {}}
    for i, rec in enumerate(recorders):
        seed, name = divmod(i, len(STRATEGIES))
        strategy = STRATEGIES[name]
        run = runs[strategy][seed]
        entry = {}
        for budget, rows in rec.picked.items():
            index = run.labels.index(budget)
            entry[str(budget)] = {
                "texts": [data.pool_texts[r] for r in rows],
                "labels": [data.space.labels[int(data.pool_y[r])] for r in rows],
                "served_accuracy": run.accuracy[index],
            }
        selections["strategies"].setdefault(strategy, {})[str(seed)] = entry
    (out / "selections.json").write_text(json.dumps(selections))
    print(f"{dataset}: selections written")


def cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell, in the order they run: seed-major, so a partial run has whole seeds."""
    out = []
    for seed in range(args.seeds):
        for backbone in args.backbones.split(","):
            for dataset in args.datasets.split(","):
                for budget in (int(a) for a in args.at.split(",")):
                    for strategy in STRATEGIES:
                        out.append(
                            {
                                "seed": seed,
                                "backbone": backbone,
                                "dataset": dataset,
                                "budget": budget,
                                "strategy": strategy,
                            }
                        )
    return out


def key(cell: dict[str, Any]) -> str:
    return "|".join(str(cell[k]) for k in ("seed", "backbone", "dataset", "budget", "strategy"))


def done_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {key(json.loads(line)) for line in path.read_text().splitlines() if line.strip()}


def run_cell(args: argparse.Namespace, cell: dict[str, Any], picked: dict[str, Any]) -> dict:
    space = LabelSpace(tuple(picked["labels_space"]))
    texts, labels = picked["texts"], picked["labels"]
    data = Labeled(texts, space.encode([[label] for label in labels]), list(range(len(texts))))
    test_texts, test_labels = subsample(
        *read_jsonl(split_path(cell["dataset"], "test")), args.test_size
    )
    test = Labeled(
        test_texts, space.encode([[label] for label in test_labels]), list(range(len(test_texts)))
    )
    train = replace(
        LoraTrainConfig(),
        backbone=cell["backbone"],
        max_length=args.max_length,
        epochs=args.epochs,
        min_steps=args.min_steps,
        seed=cell["seed"],
        device="cpu",
    )
    # A class random labels missed stays in the model (and is never predicted), as the
    # served head's does.
    config = FinetuneConfig(train, evaluation="none", min_per_class=0)
    started = time.perf_counter()
    done = finetune(space, data, config, test=test)
    assert done.test_metrics is not None
    return {
        **cell,
        "accuracy": done.test_metrics["accuracy"],
        "macro_f1": done.test_metrics["macro_f1"],
        "test_items": done.test_metrics["n"],
        "epochs": done.epochs,
        "served_accuracy": picked["served_accuracy"],
        "seconds": round(time.perf_counter() - started, 1),
        "config": {
            "max_length": args.max_length,
            "epochs": args.epochs,
            "min_steps": args.min_steps,
        },  # fmt: skip
    }


def finetune_cells(args: argparse.Namespace) -> None:
    results = args.out / "finetune.jsonl"
    shard, shards = (int(x) for x in args.shard.split("/"))
    todo = [c for i, c in enumerate(cells(args)) if i % shards == shard]
    while True:
        done = done_keys(results)
        waiting = 0
        for cell in todo:
            if key(cell) in done:
                continue
            path = args.out / "select" / cell["dataset"] / "selections.json"
            if not path.is_file():
                waiting += 1
                continue
            selections = json.loads(path.read_text())
            picked = selections["strategies"][cell["strategy"]][str(cell["seed"])][
                str(cell["budget"])
            ]
            picked = {**picked, "labels_space": selections["labels"]}
            print(f"{time.strftime('%H:%M:%S')} {key(cell)}", flush=True)
            row = run_cell(args, cell, picked)
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"  accuracy {row['accuracy']:.3f} in {row['seconds']:.0f} s", flush=True)
            done.add(key(cell))
        if not waiting:
            return
        time.sleep(60)  # the select phase is still writing selections


def report(args: argparse.Namespace) -> None:
    rows = [json.loads(x) for x in (args.out / "finetune.jsonl").read_text().splitlines() if x]
    by: dict[tuple[str, str, int, str], dict[int, float]] = {}
    served: dict[tuple[str, int, str], dict[int, float]] = {}
    for r in rows:
        name = "MiniLM" if r["backbone"] == "embedded" else Path(r["backbone"]).name
        by.setdefault((r["dataset"], name, r["budget"], r["strategy"]), {})[r["seed"]] = r[
            "accuracy"
        ]
        served.setdefault((r["dataset"], r["budget"], r["strategy"]), {})[r["seed"]] = r[
            "served_accuracy"
        ]
    lines = [
        "| dataset | labels | model | random | default (MiniLM's picks) | default - random "
        "(paired, ± SE) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-"

    def diff(a: dict[int, float], b: dict[int, float]) -> tuple[str, int]:
        seeds = sorted(set(a) & set(b))
        if not seeds:
            return "-", 0
        d = np.array([b[s] - a[s] for s in seeds])
        se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
        return f"{100 * d.mean():+.1f} ± {100 * se:.1f} pts", len(seeds)

    models = sorted({k[1] for k in by}, key=lambda m: (m != "MiniLM", m))
    for dataset in [d for d in DATASETS if any(k[0] == d for k in by)]:
        for budget in sorted({k[2] for k in by if k[0] == dataset}):
            head_r = served.get((dataset, budget, "random"), {})
            head_d = served.get((dataset, budget, "default"), {})
            text, n = diff(head_r, head_d)
            lines.append(
                f"| {dataset} | {budget} | frozen MiniLM head (served, selects) "
                f"| {cell(list(head_r.values()))} | {cell(list(head_d.values()))} | {text} | {n} |"
            )
            for model in models:
                rand = by.get((dataset, model, budget, "random"), {})
                dflt = by.get((dataset, model, budget, "default"), {})
                text, n = diff(rand, dflt)
                lines.append(
                    f"| {dataset} | {budget} | {model} + LoRA | {cell(list(rand.values()))} "
                    f"| {cell(list(dflt.values()))} | {text} | {n} |"
                )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["select", "finetune", "report"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--at", default="100,300", help="budgets to fine-tune at")
    parser.add_argument("--init", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=4000)
    parser.add_argument("--cache", type=Path, default=None, help="default OUT/embeddings.sqlite")
    parser.add_argument("--backbones", default="embedded")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--min-steps", type=int, default=100)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th cell from I")
    args = parser.parse_args()
    args.cache = args.cache or args.out / "embeddings.sqlite"
    args.out.mkdir(parents=True, exist_ok=True)
    {"select": select, "finetune": finetune_cells, "report": report}[args.phase](args)


if __name__ == "__main__":
    main()
