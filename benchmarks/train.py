"""Training figures: round times, webhook acks during training, held-out accuracy.

    .venv/bin/python benchmarks/train.py [--part all|head-time|webhook-ack|lora-time|
                                          lora-precision|lora-accuracy] [--quick] [--threads N]

- head-time: one light-head round, as the worker runs it, at 100, 500 and 1,000 labels.
- webhook-ack: /webhook latency through `ls-backend serve`, idle and during a LoRA run.

- lora-time: one LoRA round on the embedded MiniLM (max_length 64, `trec`) at 100, 500 and
  1,000 labels: seconds per round, seconds per epoch, training samples/s.
- lora-precision: training samples/s in fp32 and in mixed precision (CUDA only).
- lora-accuracy: test accuracy of the adapter a round would promote, on `trec` and
  `movie_review_snippets`, for a few random label counts, with 20 % of the labels held out to
  pick the epoch (as the worker does); the light head on the same labels for comparison.

Labels are random (no active learning): these are per-round costs and ceilings.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from ls_backend.core.configs import LoraTrainConfig
from ls_backend.core.labels import LabelSpace
from ls_backend.core.lora import LoraClassifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(name: str, split: str) -> tuple[list[str], list[str]]:
    path = DATA / name / f"{split}.jsonl"
    if not path.exists():
        path = path.with_suffix(".jsonl.gz")
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as f:
        rows = [json.loads(line) for line in f]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def sample(size: int, n: int, seed: int = 0) -> list[int]:
    """``n`` random row indices out of ``size``, the same for every run."""
    return random.Random(seed).sample(range(size), n)


def lora_time(args: argparse.Namespace) -> None:
    texts, labels = load("trec", "train")
    space = LabelSpace(tuple(sorted(set(labels))))
    epochs = 1 if args.quick else 3
    print(f"\n## LoRA time per round (trec, max_length 64, {epochs} epochs, batch 16)")
    print("| labels | round s | load s | s / epoch | samples/s |\n|---|---|---|---|---|")
    LoraClassifier.create(space, LoraTrainConfig())  # the first load also pays for imports
    for n in (100, 500) if args.quick else (100, 500, 1000):
        picked = sample(len(texts), n)
        # min_steps=0: exactly `epochs` epochs, so per-epoch figures compare across sizes.
        config = LoraTrainConfig(max_length=64, epochs=epochs, min_steps=0, mc_samples=1)
        started = time.perf_counter()
        clf = LoraClassifier.create(space, config)
        loaded = time.perf_counter() - started
        result = clf.fit([texts[i] for i in picked], space.encode([[labels[i]] for i in picked]))
        total = time.perf_counter() - started
        per_epoch = float(np.mean([m["train_s"] for m in result.history]))
        rate = float(np.mean([m["samples_per_s"] for m in result.history]))
        print(f"| {n} | {total:.1f} | {loaded:.1f} | {per_epoch:.1f} | {rate:.0f} |")


def lora_precision(args: argparse.Namespace) -> None:
    print("\n## LoRA training samples/s, fp32 vs mixed precision")
    if not torch.cuda.is_available():
        print("no CUDA")
        return
    texts, labels = load("trec", "train")
    space = LabelSpace(tuple(sorted(set(labels))))
    picked = sample(len(texts), 1000 if args.quick else 5000)
    targets = space.encode([[labels[i]] for i in picked])
    print(f"{torch.cuda.get_device_name()}, trec {len(picked)} labels, max_length 64, batch 16")
    modes = ("no", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("no", "fp16")
    for mode in modes:
        config = LoraTrainConfig(
            max_length=64, epochs=2, min_steps=0, mc_samples=1, mixed_precision=mode
        )
        clf = LoraClassifier.create(space, config)
        result = clf.fit([texts[i] for i in picked], targets)
        # Epoch 1 pays for CUDA warm-up; epoch 2 is the steady rate.
        print(f"- {mode}: {result.history[-1]['samples_per_s']:.0f} samples/s")


def lora_accuracy(args: argparse.Namespace) -> None:
    from ls_backend.core.embeddings import Encoder
    from ls_backend.core.heads import LinearHead

    encoder = Encoder(max_length=64)
    counts = (100, 300) if args.quick else (100, 300, 1000)
    epochs = 6 if args.quick else 10
    print(
        f"\n## Held-out test accuracy, random labels ({epochs} epochs, more up to 100 steps; "
        "best epoch on 20 % of the labels held out)"
    )
    print("| dataset | labels | LoRA | best epoch | head | LoRA s |\n|---|---|---|---|---|---|")
    for name, max_length in (("trec", 32), ("movie_review_snippets", 64)):
        texts, labels = load(name, "train")
        test_texts, test_labels = load(name, "test")
        if args.quick:
            test_idx = sample(len(test_texts), min(500, len(test_texts)))
            test_texts = [test_texts[i] for i in test_idx]
            test_labels = [test_labels[i] for i in test_idx]
        space = LabelSpace(tuple(sorted(set(labels))))
        test_y = space.encode([[y] for y in test_labels])
        test_emb = encoder.encode(test_texts)
        for n in counts:
            picked = sample(len(texts), n)
            held = int(0.2 * n)
            fit_idx, held_idx = picked[held:], picked[:held]
            y = space.encode([[labels[i]] for i in picked])
            config = LoraTrainConfig(max_length=max_length, epochs=epochs, mc_samples=1)
            started = time.perf_counter()
            clf = LoraClassifier.train(
                space,
                [texts[i] for i in fit_idx],
                y[held:],
                config,
                eval_texts=[texts[i] for i in held_idx],
                eval_targets=y[:held],
            )
            seconds = time.perf_counter() - started
            lora_acc = accuracy(clf.predict_proba(test_texts)[:, :, 0], test_y)
            head = LinearHead.fit(space, encoder.encode([texts[i] for i in picked]), y)
            head_acc = accuracy(head.predict_proba(test_emb)[:, :, 0], test_y)
            assert clf.fit_result is not None
            print(
                f"| {name} | {n} | {lora_acc:.3f} | {clf.fit_result.best_epoch} "
                f"| {head_acc:.3f} | {seconds:.0f} |"
            )


def head_time(args: argparse.Namespace) -> None:
    """A full head round as the worker runs it (split, fit, k-fold or held-out evaluation,
    comparison with the serving model, atomic save, promotion), embeddings cached."""
    import tempfile

    from ls_backend.core.classification import CLASSIFICATION
    from ls_backend.core.configs import RoundConfig
    from ls_backend.core.embeddings import Encoder
    from ls_backend.core.model import ModelVersion
    from ls_backend.core.registry import Registry
    from ls_backend.core.tasks import LabeledData
    from ls_backend.core.training import run_round

    texts, labels = load("trec", "train")
    space = LabelSpace(tuple(sorted(set(labels))))
    encoder = Encoder()
    from ls_backend.core.heads import label_prototype_texts

    names = encoder.encode(label_prototype_texts(space))
    print("\n## Light head: one round (trec, embeddings cached)")
    print("| labels | HEAD_PRIOR | round s | of which fit + evaluate s |\n|---|---|---|---|")
    for n in (100, 500, 1000):
        picked = sample(len(texts), n)
        chosen = [texts[i] for i in picked]
        data = LabeledData(
            picked,
            picked,
            chosen,
            space.encode([[labels[i]] for i in picked]),
            encoder.encode(chosen),
        )
        for prior in (False, True):
            config = RoundConfig(head_prior=prior)
            with tempfile.TemporaryDirectory() as tmp:
                registry = Registry(Path(tmp))

                def current(registry: Registry = registry) -> ModelVersion | None:
                    version = registry.current()
                    return ModelVersion.load(registry.path(version), version) if version else None

                run_round(
                    CLASSIFICATION, "head", registry, space, data, current, config, None, names
                )
                started = time.perf_counter()
                result = run_round(
                    CLASSIFICATION, "head", registry, space, data, current, config, None, names
                )
                total = time.perf_counter() - started
                fit = registry.info(result.version)["train_seconds"]
            print(f"| {n} | {'on' if prior else 'off'} | {total:.3f} | {fit:.3f} |")


def webhook_ack(args: argparse.Namespace) -> None:
    """Webhook ack latency through `ls-backend serve`, idle and while a LoRA run trains."""
    import sys
    import tempfile

    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from backend_server import BackendServer
    from fakes import annotation_event

    texts, labels = load("trec", "train")
    names = sorted(set(labels))
    config = '<View><Text name="text" value="$text"/><Choices name="label" toName="text">'
    config += "".join(f'<Choice value="{n}"/>' for n in names) + "</Choices></View>"
    env = {"LORA_MIN_LABELS": "40", "LORA_EVERY": "40", "LORA_EPOCHS": "2", "MAX_LENGTH": "32"}
    n = 40 if args.quick else 200

    def body(i: int) -> dict[str, object]:
        return annotation_event(i, i, [labels[i]], text=texts[i], config=config)  # type: ignore[no-any-return]

    def lora_state(client: httpx.Client) -> str:
        jobs = client.get("/status").json()["projects"].get("1", {}).get("jobs", {})
        return str(jobs.get("lora", {}).get("state", "idle"))

    with tempfile.TemporaryDirectory() as tmp:
        server = BackendServer(Path(tmp) / "models", env=env).start()
        try:
            client = httpx.Client(base_url=server.url, timeout=10)
            client.post("/setup", json={"project": "1.1", "schema": config}).raise_for_status()
            idle = [_post(client, body(i)) for i in range(40)]  # 40 labels: the LoRA lane starts
            deadline = time.monotonic() + 120
            while lora_state(client) != "running" and time.monotonic() < deadline:
                time.sleep(0.2)
            busy, i = [], 40
            while lora_state(client) == "running" and len(busy) < n:
                busy.append(_post(client, body(i)))
                i += 1
        finally:
            server.stop()
    print("\n## Webhook ack through `ls-backend serve` (ms)")
    print("| while | n | p50 | p99 | max |\n|---|---|---|---|---|")
    for name, values in (("idle (head refits)", idle), ("a LoRA run trains", busy)):
        if values:
            ms = np.asarray(values) * 1000
            print(f"| {name} | {len(ms)} | {np.percentile(ms, 50):.1f} | "
                  f"{np.percentile(ms, 99):.1f} | {ms.max():.1f} |")  # fmt: skip


def _post(client: object, body: dict[str, object]) -> float:
    started = time.perf_counter()
    reply = client.post("/webhook", json=body)  # type: ignore[attr-defined]
    reply.raise_for_status()
    return time.perf_counter() - started


def accuracy(probs: NDArray[np.float32], targets: NDArray[np.int64]) -> float:
    return float((probs.argmax(axis=1) == targets).mean())


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "head-time": head_time,
    "webhook-ack": webhook_ack,
    "lora-time": lora_time,
    "lora-precision": lora_precision,
    "lora-accuracy": lora_accuracy,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", *PARTS], default="all")
    parser.add_argument("--quick", action="store_true", help="Fewer sizes and epochs.")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's). On a shared CPU, 1 avoids OpenMP spin-waits.",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"# Training benchmarks ({device}, {torch.get_num_threads()} torch threads)")
    for name, part in PARTS.items():
        if args.part in ("all", name):
            part(args)


if __name__ == "__main__":
    main()
