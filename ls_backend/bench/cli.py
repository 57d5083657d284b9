"""``ls-backend bench``: its options (one object, ``BenchOptions``), the run of every strategy
and seed, and the command's flags (the LoRA ones made from ``LoraTrainConfig``)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

from ls_backend.bench.data import BenchData, load_data
from ls_backend.bench.report import (
    DEFAULT_STRATEGY,
    Report,
    compare,
    comparison_markdown,
    read_report,
    summarise,
    write,
)
from ls_backend.bench.simulate import (
    Fit,
    LoraFit,
    ServedFit,
    ServedLoraFit,
    ceiling,
    fit_predict,
    lora_once,
    run_strategies,
)
from ls_backend.core.configs import LoraTrainConfig, help_of
from ls_backend.core.ranking import STRATEGIES
from ls_backend.settings import Settings

Model = Literal["head", "served", "served-lora", "lora", "prepal-then-lora"]
MODELS: tuple[str, ...] = get_args(Model)
#: The LoRA knobs the bench may change (LoraTrainConfig field -> flag); the rest are the
#: server's (Settings).
LORA_FLAGS = {
    "backbone": "--backbone",
    "epochs": "--lora-epochs",
    "min_steps": "--lora-min-steps",
    "max_length": "--max-length",
    "mc_samples": "--mc-samples",
    "b_decay": "--b-decay",
}


@dataclass
class BenchOptions:
    """One bench run: the data, the protocol, the model and its settings."""

    train: Path
    test: Path
    out: Path
    strategies: Sequence[str] = ("random", "margin", DEFAULT_STRATEGY)
    init: int = 10
    batch: int = 10
    budget: int = 300
    seeds: int = 5
    model: Model = "head"
    pool_size: int = 4000
    test_size: int | None = None
    #: The embedding cache (default: OUT/embeddings.sqlite).
    cache: Path | None = None
    #: The embedding runtime (default: the server's, EMBEDDING_BACKEND).
    embedding_backend: str | None = None
    #: LoRA training (default: the server's) for the models that train adapters.
    lora: LoraTrainConfig | None = None
    #: prepal-then-lora: an earlier ``--model lora`` output to compare with, instead of
    #: running LoRA every round again.
    compare_with: Path | None = None
    #: served-lora: labels between LoRA rounds (default: the server's LORA_EVERY).
    lora_every: int | None = None
    #: served-lora: rank by STAR's mix while an adapter serves (else the adapter's margin).
    star_mix: bool = True
    #: The server's settings the bench runs with (rounds, LoRA, max length).
    settings: Settings = field(default_factory=Settings)

    def check(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {MODELS}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; known: {sorted(STRATEGIES)}")
        if not self.init < self.budget:
            raise ValueError("--init must be below --budget")

    @property
    def lora_config(self) -> LoraTrainConfig:
        return self.lora or self.settings.lora_config()


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run every strategy for every seed; write results.json, details.json, results.md and
    curves.png under ``options.out`` and return the results.json content.

    ``prepal-then-lora`` adds the comparison (results.json key ``prepal_then_lora``, a table in
    results.md) against LoRA every round, which it runs into ``out/lora`` unless
    ``compare_with`` names the folder of an earlier ``--model lora`` run.
    """
    o = options
    o.check()
    o.out.mkdir(parents=True, exist_ok=True)
    runtime = o.embedding_backend or o.settings.resolved_embedding_backend()
    max_length = o.lora.max_length if o.lora else o.settings.max_length
    data = load_data(
        o.train,
        o.test,
        o.pool_size,
        o.cache or o.out / "embeddings.sqlite",
        test_size=o.test_size,
        runtime=runtime,
        max_length=max_length,
        model=o.settings.embedding_model,  # EMBEDDING_MODEL, as the server embeds
    )
    if o.init > data.pool_y.size or o.budget > data.pool_y.size:
        raise ValueError("--init and --budget must not exceed the pool")
    full_pool = ceiling(data)
    title = o.train.parent.name or o.train.stem
    loop = partial(run_strategies, data, o.strategies, o.seeds, o.init, o.batch, o.budget)

    def lora_fit(seed: int) -> Fit:
        return LoraFit(replace(o.lora_config, seed=seed))

    if o.model == "lora":
        report = summarise(loop(lora_fit, "lora"), full_pool, o.budget, o.model)
        write(o.out, f"{title}: LoRA every round", report)
        return report[0]
    if o.model in ("served", "served-lora"):
        return _served(o, data, full_pool, title, loop)
    head_fit = partial(fit_predict, prior=o.settings.head_prior)
    runs = loop(lambda _: head_fit, "head")
    report = summarise(runs, full_pool, o.budget, o.model)
    write(o.out, title, report)
    if o.model == "prepal-then-lora":
        once = lora_once(data, runs, lora_fit)
        every_round: Report
        if o.compare_with is None:
            every_round = summarise(loop(lora_fit, "lora"), full_pool, o.budget, "lora")
            write(o.out / "lora", f"{title}: LoRA every round", every_round)
        else:
            every_round = read_report(o.compare_with, o.budget)
        table = compare(report, runs, once, every_round)
        report[0]["prepal_then_lora"] = table
        write(o.out, title, report, "\n" + comparison_markdown(table, o.budget, o.seeds))
    return report[0]


def _served(
    o: BenchOptions, data: BenchData, full_pool: float, title: str, loop: Any
) -> dict[str, Any]:
    """``--model served`` / ``served-lora``: the server's own lanes in the loop."""
    settings = o.settings
    config = settings.round_config()
    every = o.lora_every or settings.lora_every

    def served_fit(registries: str, seed: int) -> Fit:
        root = Path(tempfile.mkdtemp(dir=registries))
        if o.model == "served":
            return ServedFit(root, data, config)
        lane = replace(settings.round_config(lora=True), lora=replace(o.lora_config, seed=seed))
        return ServedLoraFit(root, data, config, lane, every, settings.lora_min_labels, o.star_mix)

    with tempfile.TemporaryDirectory() as registries:
        served = loop(partial(served_fit, registries), o.model)
    report = summarise(served, full_pool, o.budget, o.model)
    title += ": the served model (the server's head lane"
    if o.model == "served-lora":
        mix = "STAR's mix" if o.star_mix else "the adapter's margin"
        title += f", LoRA every {every} labels, ranked by {mix})"
        report[1]["served_lora"] = {
            "lora_every": every,
            "lora_min_labels": settings.lora_min_labels,
            "star_mix": o.star_mix,
            "star_lambda_decay": settings.star_lambda_decay,
            "lora": asdict(o.lora_config),
        }
    else:
        title += ")"
    write(o.out, title, report)
    return report[0]


def _main(args: argparse.Namespace) -> None:
    settings = Settings()
    given = {name: getattr(args, name) for name in LORA_FLAGS}
    lora = replace(settings.lora_config(), **{k: v for k, v in given.items() if v is not None})
    options = BenchOptions(
        train=args.train,
        test=args.test,
        out=args.out,
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
        init=args.init,
        batch=args.batch,
        budget=args.budget,
        seeds=args.seeds,
        model=args.model,
        pool_size=args.pool_size,
        test_size=args.test_size,
        cache=args.cache,
        embedding_backend=args.embedding_backend,
        lora=lora,
        compare_with=args.compare,
        lora_every=args.lora_every,
        star_mix=args.star_mix,
        settings=settings,
    )
    run_bench(options)
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
    p.add_argument(
        "--model",
        choices=MODELS,
        default="head",
        help="head: light head every round, on every label; served: the server's head lane "
        "(zero-shot first, held-out evaluation, promotions); served-lora: that and the server's "
        "LoRA lane every --lora-every labels; lora: LoRA every round; "
        "prepal-then-lora: select with the head, fine-tune LoRA once, compare with LoRA every "
        "round",
    )
    p.add_argument("--pool-size", type=int, default=4000, help="stratified pool subsample size")
    p.add_argument(
        "--test-size", type=int, default=None, help="stratified test subsample (default: all)"
    )
    p.add_argument(
        "--cache", type=Path, default=None, help="embedding cache (default OUT/embeddings.sqlite)"
    )
    p.add_argument(
        "--embedding-backend",
        choices=["torch", "onnx", "openvino"],
        default=None,
        help="embedding runtime (default: the server's, EMBEDDING_BACKEND)",
    )
    lora = p.add_argument_group(
        "LoRA (--model served-lora / lora / prepal-then-lora; default: the server's settings)"
    )
    types = {f.name: type(f.default) for f in fields(LoraTrainConfig)}
    for name, flag in LORA_FLAGS.items():
        lora.add_argument(
            flag, dest=name, type=types[name], default=None, help=help_of(LoraTrainConfig, name)
        )
    lora.add_argument(
        "--lora-every",
        type=int,
        default=None,
        help="served-lora: labels between LoRA rounds (default: the server's LORA_EVERY)",
    )
    lora.add_argument(
        "--star-mix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="served-lora: rank by STAR's dynamic uncertainty while an adapter serves "
        "(--no-star-mix: by the adapter's margin alone)",
    )
    lora.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="prepal-then-lora: compare with this --model lora output folder instead of "
        "running LoRA every round again",
    )
    p.set_defaults(func=_main)
    return p
