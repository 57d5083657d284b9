"""Sync cost: a full sync against a real Label Studio (ranking alone: `benchmarks/rank.py`).

    .venv/bin/python benchmarks/sync.py [--sizes 1000,10000]

A real Label Studio 1.23 on 127.0.0.1 (started like the tests start it), a project of
`movie_review_snippets` sentences, and `ls_backend.labelstudio.sync.sync_project` timed stage
by stage (fetch / embed / predict / rank / push): a cold sync (nothing cached, zero-shot
model, pure diversity), a warm one (embeddings cached), and one after 20 labels (light head).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="positive"/><Choice value="negative"/></Choices></View>'
)


def snippets() -> list[dict[str, str]]:
    rows = []
    for name in ("train.jsonl.gz", "test.jsonl"):  # 10,072 sentences in all
        path = DATA / "movie_review_snippets" / name
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
            rows += [json.loads(line) for line in f]
    return rows


def timed_sync(name: str, project: Any, client: Any, settings: Any) -> None:
    from ls_backend.labelstudio.sync import sync_project

    started = time.perf_counter()
    result = sync_project(project, client, settings)
    s = result["seconds"]
    print(
        f"| {result['tasks']:,} | {name} | {s['fetch']:.2f} | {s['embed']:.2f} | "
        f"{s['predict']:.2f} | {s['rank']:.2f} | {s['push']:.2f} | "
        f"{time.perf_counter() - started:.2f} |"
    )


def full(sizes: list[int]) -> None:
    from fakes import annotation_event
    from labelstudio_server import ensure_template, running_server

    from ls_backend.labelstudio.client import LabelStudioClient
    from ls_backend.service import Backend
    from ls_backend.settings import Settings
    from ls_backend.worker import Worker

    rows = snippets()
    print("\n## Full sync against Label Studio 1.23 (SQLite), seconds per stage")
    print("| tasks | sync | fetch | embed | predict | rank | push | total |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        template, _ = ensure_template()
        with running_server(template, Path(tmp) / "ls") as studio:
            for size in sizes:
                settings = Settings(
                    model_dir=Path(tmp) / f"models-{size}",
                    lora_enabled=False,
                    label_studio_url=studio.url,
                    label_studio_api_key=studio.token,
                )
                backend = Backend(settings)
                worker = Worker(backend)
                client = LabelStudioClient.from_settings(settings)
                project = studio.client.projects.create(title=f"sync {size}", label_config=CONFIG)
                tasks = [{"text": r["text"]} for r in rows[:size]]
                ids = studio.client.projects.import_tasks(
                    id=project.id, request=tasks, return_task_ids=True
                ).task_ids
                local = backend.project(project.id)

                timed_sync("cold (zero-shot)", local, client, settings)
                timed_sync("warm cache", local, client, settings)
                for i, (task_id, row) in enumerate(zip(ids[:20], rows, strict=False)):
                    local.store.apply(
                        annotation_event(
                            i + 1, task_id, [row["label"]], text=row["text"], config=CONFIG,
                            project=project.id, from_name="sentiment",
                        )
                    )  # fmt: skip
                worker.request(local.key, "head")
                worker.wait_idle(60)
                timed_sync(f"head ({local.registry.current()})", local, client, settings)
                worker.stop()
                client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="tasks in the full-sync runs")
    args = parser.parse_args()
    full([int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
