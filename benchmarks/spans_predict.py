"""A span project's POST /predict, timed through the app, beside raw torch token embedding.

    OMP_NUM_THREADS=2 python benchmarks/spans_predict.py [--labels 300] [--tasks 640]
        [--single 200] [--runtime torch] [--topic]

A NER config over CoNLL-2003's types; ``--labels`` random train sentences arrive as webhook
annotations (their gold spans as regions) and train the head lane; then, on test sentences
the backend has never seen (a cold embedding cache):
- single-sentence latency p50/p99 of POST /predict (one task a request);
- batch throughput, 64 tasks a request, and its ratio to raw torch token embedding of the
  same texts (the whole MiniLM, its HF tokenizer, batches of 64, no backend);
and the head round's own time (``train_seconds``) at ``--labels`` sentences. ``--topic`` adds
a task-level ``<Choices>`` on the same text (whether a person is named), so the project is
served both controls (a classifier on sentence embeddings beside the span head).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from spans import DATA, read_rows, split_path

from ls_backend.jobs import start_scheduler
from ls_backend.projects import Projects
from ls_backend.server.app import create_app
from ls_backend.settings import Settings

LABELS = ("PER", "ORG", "LOC", "MISC")
CONFIG = (
    '<View><Labels name="label" toName="text">'
    + "".join(f'<Label value="{name}"/>' for name in LABELS)
    + '</Labels><Text name="text" value="$text"/></View>'
)
TOPIC = (
    '<Choices name="topic" toName="text"><Choice value="person"/><Choice value="other"/>'
    "</Choices></View>"
)


def event(i: int, row: dict, config: str = CONFIG) -> dict:
    result: list[dict] = [
        {
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {
                "start": s["start"],
                "end": s["end"],
                "text": row["text"][s["start"] : s["end"]],
                "labels": [s["label"]],
            },
        }
        for s in row["spans"]
    ]
    if "topic" in config:
        person = any(s["label"] == "PER" for s in row["spans"])
        result.append(
            {
                "from_name": "topic",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": ["person" if person else "other"]},
            }
        )
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": i + 1, "task": i + 1, "was_cancelled": False, "result": result},
        "task": {"id": i + 1, "data": {"text": row["text"]}},
        "project": {"id": 1, "label_config": config},
    }


def body(texts: list[str], first_id: int, config: str = CONFIG) -> dict:
    tasks = [{"id": first_id + i, "data": {"text": t}} for i, t in enumerate(texts)]
    return {"tasks": tasks, "project": "1.1700000000", "label_config": config}


def raw_torch(texts: list[str], batch: int) -> float:
    """Texts per second: MiniLM's last hidden state per token, no backend."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ls_backend.core.embeddings import resolve_model_path

    path = resolve_model_path("embedded")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(texts), batch):
            enc = tokenizer(
                texts[begin : begin + batch],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            model(**enc).last_hidden_state.numpy()
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=640, help="texts in the batch run")
    parser.add_argument("--single", type=int, default=200, help="single-task requests")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runtime", default="torch", help="EMBEDDING_BACKEND")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--topic", action="store_true", help="a <Choices> beside the <Labels>")
    args = parser.parse_args()
    config = CONFIG.replace("</View>", TOPIC) if args.topic else CONFIG

    train = read_rows(split_path(args.data, "conll2003", "train"))
    test = read_rows(split_path(args.data, "conll2003", "test"))
    rng = np.random.default_rng(0)
    labeled = [train[i] for i in rng.choice(len(train), args.labels, replace=False)]
    texts = [r["text"] for r in test]
    singles, batched = texts[: args.single], texts[args.single : args.single + args.tasks]

    with tempfile.TemporaryDirectory() as root:
        settings = Settings(
            model_dir=Path(root), lora_enabled=False, embedding_backend=args.runtime
        )
        projects = Projects(settings)
        app = create_app(settings, projects, start_scheduler(projects))
        with TestClient(app, base_url="http://localhost") as client:
            client.post("/setup", json={"project": "1.1700000000", "schema": config})
            for i, row in enumerate(labeled):
                client.post("/webhook", json=event(i, row, config))
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                head = client.get("/status").json()["projects"]["1"]["jobs"]["head"]
                done = head.get("last_result") or {}
                if head["state"] == "done" and done.get("labels") == args.labels:
                    break
                time.sleep(0.5)
            info = projects.project(1).registry.info(done["version"]) if done else {}
            metrics = done.get("metrics", {})
            f1 = metrics.get("parts", {}).get("label", metrics).get("entity_f1", float("nan"))
            topic = metrics.get("parts", {}).get("topic", {}).get("accuracy")
            print(
                f"head round at {done.get('labels')} labels: {info.get('train_seconds')} s, "
                f"held-out entity F1 {f1:.3f}" + (f", topic accuracy {topic:.3f}" if topic else "")
            )
            client.post("/predict", json=body(["Warm-up sentence in Paris ."], 10**6, config))
            times = []
            for i, text in enumerate(singles):
                started = time.perf_counter()
                reply = client.post("/predict", json=body([text], 2 * 10**6 + i, config))
                times.append(time.perf_counter() - started)
                assert reply.status_code == 200, reply.text
            started = time.perf_counter()
            for begin in range(0, len(batched), args.batch):
                chunk = batched[begin : begin + args.batch]
                reply = client.post("/predict", json=body(chunk, 3 * 10**6 + begin, config))
                assert reply.status_code == 200, reply.text
            served = len(batched) / (time.perf_counter() - started)
    raw = raw_torch(batched, args.batch)
    ms = np.asarray(times) * 1000
    print("| path | batch 64: texts/s | vs raw torch | single text p50 / p99 ms |")
    print("|---|---|---|---|")
    print(f"| raw torch token embedding (6 layers) | {raw:.1f} | 1.00x | - |")
    print(
        f"| POST /predict ({args.runtime}) | {served:.1f} | {served / raw:.2f}x | "
        f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 99):.1f} |"
    )


if __name__ == "__main__":
    main()
