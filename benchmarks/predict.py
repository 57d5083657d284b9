"""Predict throughput and latency per embedding runtime, beside raw torch `encode`.

    .venv/bin/python benchmarks/predict.py [--tasks 640] [--single 100]
        [--runtimes torch,onnx,openvino]

For each dataset (short `trec` questions, long `reuters_r8` articles) it prints raw
sentence-transformers `encode` on torch (no backend, no cache), then for each runtime
(`EMBEDDING_BACKEND`):
- batch throughput (tasks/s, 64 tasks a request) through POST /predict, with a cold
  embedding cache (every text is new), and its ratio to raw torch encode;
- single-task latency p50/p99 through POST /predict (cold cache);
then, per runtime, the light head's test accuracy on `trec` with 100 random labels and
zero-shot accuracy (label-name prototypes, no label at all) on the first 1,000 test items.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from ls_backend.core.embeddings import Encoder
from ls_backend.core.heads import LinearHead, PrototypeHead, label_prototype_texts
from ls_backend.core.labels import LabelSpace
from ls_backend.core.runtimes import TorchRuntime
from ls_backend.projects import Projects
from ls_backend.server.app import create_app
from ls_backend.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="label" toName="text">{}</Choices></View>'
)
DATASETS = ("trec", "reuters_r8")
ZERO_SHOT = ("trec", "movie_review_snippets", "reuters_r8")


def load(name: str, split: str) -> list[dict[str, str]]:
    path = DATA / name / f"{split}.jsonl"
    opener = gzip.open if not path.exists() else open
    path = path if path.exists() else path.with_suffix(".jsonl.gz")
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return [json.loads(line) for line in f]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def latency(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):6.1f} ms, p99 {percentile(values, 99):6.1f} ms"


def workload(name: str, n_tasks: int, n_single: int) -> tuple[str, list[str], list[str]]:
    """The dataset's config, the batch texts and the single texts: no text repeats, so no cache
    hit flatters anyone."""
    rows = load(name, "train")
    labels = sorted({r["label"] for r in rows})
    config = CONFIG.format("".join(f'<Choice value="{label}"/>' for label in labels))
    texts = [r["text"] for r in rows]
    return config, texts[:n_tasks], texts[n_tasks : n_tasks + n_single]


def raw_torch(texts: list[str], singles: list[str], batch: int) -> tuple[float, list[float]]:
    model = TorchRuntime(Encoder().path, 128, batch, "cpu", None).model
    model.encode(texts[:batch], batch_size=batch)  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.encode(texts[i : i + batch], batch_size=batch, normalize_embeddings=True)
    throughput = len(texts) / (time.perf_counter() - started)
    times = []
    for text in singles:
        t0 = time.perf_counter()
        model.encode([text], normalize_embeddings=True)
        times.append(time.perf_counter() - t0)
    return throughput, times


def through_backend(
    runtime: str, config: str, texts: list[str], singles: list[str], batch: int
) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model_dir=Path(tmp), lora_enabled=False, embedding_backend=runtime)
        app = create_app(settings, Projects(settings))
        with TestClient(app, base_url="http://localhost") as client:
            client.post("/setup", json={"project": "1.1", "schema": config})
            warm = [f"warm-up text {i}" for i in range(batch)]
            client.post("/predict", json=_body(warm, config))
            started = time.perf_counter()
            for i in range(0, len(texts), batch):
                reply = client.post("/predict", json=_body(texts[i : i + batch], config))
                assert reply.status_code == 200, reply.text
            throughput = len(texts) / (time.perf_counter() - started)
            times = []
            for text in singles:
                t0 = time.perf_counter()
                client.post("/predict", json=_body([text], config))
                times.append(time.perf_counter() - t0)
    return throughput, times


def bench_dataset(name: str, runtimes: list[str], n_tasks: int, n_single: int, batch: int) -> None:
    config, texts, singles = workload(name, n_tasks, n_single)
    words = np.mean([len(t.split()) for t in texts])
    print(f"\n{name} ({len(texts)} tasks, ~{words:.0f} words each, max_length 128)")
    raw, raw_single = raw_torch(texts, singles, batch)
    print(f"  raw torch encode   batch {batch}: {raw:7.1f} texts/s | single {latency(raw_single)}")
    for runtime in runtimes:
        ours, single = through_backend(runtime, config, texts, singles, batch)
        print(
            f"  /predict {runtime:<9} batch {batch}: {ours:7.1f} tasks/s ({ours / raw:.2f}x raw)"
            f" | single {latency(single)}"
        )


def _body(texts: list[str], config: str) -> dict[str, object]:
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(texts)]
    return {"tasks": tasks, "project": "1.1", "label_config": config}


def head_accuracy(encoder: Encoder, n_labels: int = 100, seeds: int = 5) -> str:
    train, test = load("trec", "train"), load("trec", "test")
    space = LabelSpace(tuple(sorted({r["label"] for r in train})))
    x_train = encoder.encode([r["text"] for r in train])
    x_test = encoder.encode([r["text"] for r in test])
    y_train = space.encode([[r["label"]] for r in train])
    y_test = space.encode([[r["label"]] for r in test])
    scores = []
    for seed in range(seeds):
        pick = np.random.default_rng(seed).choice(len(train), n_labels, replace=False)
        head = LinearHead.fit(space, x_train[pick], y_train[pick])
        probs = head.predict_proba(x_test)[:, :, 0]
        scores.append(float((probs.argmax(axis=1) == y_test).mean()))
    return f"head on trec, {n_labels} labels {np.mean(scores):.3f} +- {np.std(scores):.3f}"


def zero_shot_accuracy(encoder: Encoder, name: str, n_test: int = 1000) -> str:
    """The model a project serves before its first label: label names as prototypes."""
    test = load(name, "test")[:n_test]
    space = LabelSpace(tuple(sorted({r["label"] for r in load(name, "train") + test})))
    prototypes = encoder.encode(label_prototype_texts(space))
    probs = PrototypeHead(space, prototypes).predict_proba(
        encoder.encode([r["text"] for r in test])
    )[:, :, 0]
    truth = space.encode([[r["label"]] for r in test])
    return f"zero-shot {name} {float((probs.argmax(axis=1) == truth).mean()):.3f}"


def quality(runtimes: list[str]) -> None:
    print(f"\nquality ({len(ZERO_SHOT)} zero-shot sets: first 1,000 test items; head: 5 seeds)")
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:
            encoder = Encoder(runtime=runtime, export_dir=Path(tmp))
            figures = [head_accuracy(encoder), *(zero_shot_accuracy(encoder, n) for n in ZERO_SHOT)]
            print(f"  {runtime:<9} " + " | ".join(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=640, help="tasks in the throughput run")
    parser.add_argument("--single", type=int, default=100, help="single-task requests")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runtimes", default="torch,onnx,openvino", help="EMBEDDING_BACKENDs")
    args = parser.parse_args()
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    import torch

    print(f"torch threads {torch.get_num_threads()}, device cpu")
    for name in DATASETS:
        bench_dataset(name, runtimes, args.tasks, args.single, args.batch)
    quality(runtimes)


if __name__ == "__main__":
    main()
