"""Predict throughput and latency through the app, beside raw SentenceTransformer.encode.

    .venv/bin/python benchmarks/predict.py [--tasks 640] [--single 100]

For each dataset (short `trec` questions, long `reuters_r8` articles) it prints:
- batch throughput (tasks/s, 64 tasks a request) through POST /predict, with a cold
  embedding cache (every text is new), beside raw `encode` on the same texts: the ratio
  is what the backend costs on top of the model (goal >= 0.9);
- single-task latency p50/p99 through POST /predict (cold cache), beside raw encode of one text;
- the light head's test accuracy on `trec` with 100 random labels;
- zero-shot accuracy (label-name prototypes, no label at all) on the first 1,000 test items.
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
from ls_backend.server.app import create_app
from ls_backend.service import Backend
from ls_backend.settings import Settings
from ls_backend.worker import Worker

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIG = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="label" toName="text">{}</Choices></View>'
)


def load(name: str, split: str) -> list[dict[str, str]]:
    path = DATA / name / f"{split}.jsonl"
    opener = gzip.open if not path.exists() else open
    path = path if path.exists() else path.with_suffix(".jsonl.gz")
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return [json.loads(line) for line in f]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def bench_dataset(name: str, n_tasks: int, n_single: int, batch: int) -> None:
    rows = load(name, "train")
    labels = sorted({r["label"] for r in rows})
    config = CONFIG.format("".join(f'<Choice value="{label}"/>' for label in labels))
    texts = [r["text"] for r in rows]
    # The backend's cache starts cold and no text repeats, so no cache hit flatters it;
    # raw encode has no cache and gets the very same texts.
    batch_texts = texts[:n_tasks]
    single_texts = texts[n_tasks : n_tasks + n_single]

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(model_dir=Path(tmp), lora_enabled=False)
        backend = Backend(settings)
        Worker(backend)
        raw = backend.encoder._model  # the very model the backend serves with
        with TestClient(create_app(settings, backend)) as client:
            client.post("/setup", json={"project": "1.1", "schema": config})
            client.post("/predict", json=_body(texts[-batch:], config))  # warm-up

            started = time.perf_counter()
            for i in range(0, len(batch_texts), batch):
                reply = client.post("/predict", json=_body(batch_texts[i : i + batch], config))
                assert reply.status_code == 200, reply.text
            ours = len(batch_texts) / (time.perf_counter() - started)

            started = time.perf_counter()
            for i in range(0, len(batch_texts), batch):
                raw.encode(batch_texts[i : i + batch], batch_size=batch, normalize_embeddings=True)
            theirs = len(batch_texts) / (time.perf_counter() - started)

            ours_single, raw_single = [], []
            for text in single_texts:
                t0 = time.perf_counter()
                client.post("/predict", json=_body([text], config))
                ours_single.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                raw.encode([text], normalize_embeddings=True)
                raw_single.append(time.perf_counter() - t0)

    mean_tokens = np.mean([len(t.split()) for t in batch_texts])
    print(f"\n{name} ({len(batch_texts)} tasks, ~{mean_tokens:.0f} words each, max_length 128)")
    print(
        f"  batch {batch}: backend {ours:7.1f} tasks/s | raw encode {theirs:7.1f} texts/s "
        f"| ratio {ours / theirs:.2f}"
    )
    print(
        f"  single task: backend p50 {percentile(ours_single, 50):6.1f} ms, "
        f"p99 {percentile(ours_single, 99):6.1f} ms | raw encode p50 "
        f"{percentile(raw_single, 50):6.1f} ms, p99 {percentile(raw_single, 99):6.1f} ms"
    )


def _body(texts: list[str], config: str) -> dict[str, object]:
    tasks = [{"id": i, "data": {"text": t}} for i, t in enumerate(texts)]
    return {"tasks": tasks, "project": "1.1", "label_config": config}


def head_accuracy(n_labels: int = 100, seeds: int = 5) -> None:
    train, test = load("trec", "train"), load("trec", "test")
    labels = tuple(sorted({r["label"] for r in train}))
    space = LabelSpace(labels)
    encoder = Encoder()
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
    print(
        f"\nlight head on trec, {n_labels} random labels: test accuracy "
        f"{np.mean(scores):.3f} +- {np.std(scores):.3f} ({seeds} seeds)"
    )


def zero_shot_accuracy(names: tuple[str, ...], n_test: int = 1000) -> None:
    """The model a project serves before its first label: label names as prototypes."""
    encoder = Encoder()
    for name in names:
        test = load(name, "test")[:n_test]
        space = LabelSpace(tuple(sorted({r["label"] for r in load(name, "train") + test})))
        prototypes = encoder.encode(label_prototype_texts(space))
        probs = PrototypeHead(space, prototypes).predict_proba(
            encoder.encode([r["text"] for r in test])
        )[:, :, 0]
        truth = space.encode([[r["label"]] for r in test])
        accuracy = float((probs.argmax(axis=1) == truth).mean())
        print(f"zero-shot on {name} ({space.size} labels, {len(test)} test items): {accuracy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=640, help="tasks in the throughput run")
    parser.add_argument("--single", type=int, default=100, help="single-task requests")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, device cpu")
    for name in ("trec", "reuters_r8"):
        bench_dataset(name, args.tasks, args.single, args.batch)
    head_accuracy()
    zero_shot_accuracy(("trec", "movie_review_snippets", "reuters_r8"))


if __name__ == "__main__":
    main()
