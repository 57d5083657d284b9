"""The queue against a real Label Studio: first sync by stage, label -> re-ranked /next, churn.

    .venv/bin/python benchmarks/sync.py [--sizes 10000,100000] [--syncs 50,10]

For each size: a real Label Studio 1.23 (SQLite) on 127.0.0.1 with a project of that many
distinct movie-review sentences (the 10,072 of `movie_review_snippets`, repeated with a
" (n)" suffix past that), and `ls-backend serve` connected to it as the README says. Prints:
- the first sync, run by run until every task is ranked: seconds per stage, what it pushed;
- ``--syncs`` rounds of an annotator labeling `SYNC_EVERY` tasks through `/next` (the
  true label, ``--pace`` seconds apart), then the time from the last save to `/next`
  serving a task of a ranking pushed after it (warm: every task embedded);
- Label Studio's prediction rows after those pushes (every version, and `rank-*` alone), right
  after the last label and then as the backend deletes replaced ones in the quiet that follows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="positive"/><Choice value="negative"/></Choices></View>'
)
SYNC_EVERY = 10
IMPORT_CHUNK = 10_000
STAGES = ("read", "embed", "rank", "push", "forget")


def snippets(n: int) -> list[dict[str, str]]:
    rows = []
    for name in ("train.jsonl.gz", "test.jsonl"):  # 10,072 sentences in all
        path = DATA / "movie_review_snippets" / name
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
            rows += [json.loads(line) for line in f]
    return [
        {**row, "text": row["text"] if i < len(rows) else f"{row['text']} ({i // len(rows)})"}
        for i, row in ((i, rows[i % len(rows)]) for i in range(n))
    ]


def sync_job(backend: Any, project_id: int) -> dict[str, Any]:
    projects = httpx.get(f"{backend.url}/status", timeout=30).json()["projects"]
    return dict(projects.get(str(project_id), {}).get("jobs", {}).get("sync", {}))


def first_sync(backend: Any, ls: httpx.Client, project_id: int, started: float) -> None:
    """Every sync run from connect until the whole pool is ranked, stage by stage."""
    print("\n| run | reason | pushed | waiting to embed | read | embed | rank | push | forget |")
    print("|---|---|---|---|---|---|---|---|---|")
    runs, first_push = 0, None
    while True:
        job = sync_job(backend, project_id)
        if first_push is None and ls.get(f"/api/projects/{project_id}").json()[
            "model_version"
        ].startswith("rank-"):
            first_push = time.perf_counter() - started
        # A run's result stays in the status while the next run starts: print each once.
        if job.get("runs", 0) > runs:
            runs = job["runs"]
            result = job.get("last_result") or {}
            if job.get("last_error"):
                raise RuntimeError(job["last_error"])
            seconds = result.get("seconds", {})
            stages = " | ".join(f"{seconds.get(k, 0):.2f}" for k in STAGES)
            print(
                f"| {runs} | {result.get('reason')} | {result.get('pushed', 0)} | "
                f"{result.get('waiting_to_embed', 0):,} | {stages} |"
            )
            if not result.get("waiting_to_embed") and job.get("state") == "done":
                break
        time.sleep(0.5)
    print(
        f"\nconnect -> first push: {first_push:.1f} s; "
        f"connect -> every task ranked: {time.perf_counter() - started:.1f} s"
    )


def label_rounds(
    ls: httpx.Client,
    backend_url: str,
    project_id: int,
    gold: dict[str, str],
    rounds: int,
    pace: float,
) -> None:
    # Warm-up, not timed: the first head replaces zero-shot (a change of model kind pushes
    # at once, mid-round), then a requested push starts the SYNC_EVERY count afresh.
    label(ls, project_id, gold, SYNC_EVERY, pace)
    asked_at = time.strftime("%Y%m%dT%H%M%S")
    httpx.post(f"{backend_url}/sync/{project_id}", json={}, timeout=30).raise_for_status()
    wait_for_ranking(ls, project_id, asked_at)
    latencies = []
    for _ in range(rounds):
        label(ls, project_id, gold, SYNC_EVERY, pace)
        labeled, saved_at = time.perf_counter(), time.strftime("%Y%m%dT%H%M%S")
        version = wait_for_ranking(ls, project_id, saved_at)
        served = ls.get(f"/api/projects/{project_id}/next").json()
        latencies.append(time.perf_counter() - labeled)
        ours = [p for p in served.get("predictions", []) if p["model_version"] == version]
        assert ours, f"/next served task {served['id']} without a prediction of {version}"
    print(
        f"\nlabel -> re-ranked /next over {rounds} rounds of {SYNC_EVERY} labels "
        f"({pace:.1f} s apart): "
        f"median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s"
    )


def label(ls: httpx.Client, project_id: int, gold: dict[str, str], n: int, pace: float) -> None:
    """An annotator saving the true label of ``n`` tasks from /next, ``pace`` s apart."""
    for i in range(n):
        if i:
            time.sleep(pace)  # an annotator reads the task before saving
        task = ls.get(f"/api/projects/{project_id}/next").json()
        result = [
            {
                "from_name": "sentiment",
                "to_name": "text",
                "type": "choices",
                "value": {"choices": [gold[task["data"]["text"]]]},
            }
        ]
        saved = ls.post(f"/api/tasks/{task['id']}/annotations", json={"result": result})
        saved.raise_for_status()


def wait_for_ranking(ls: httpx.Client, project_id: int, since: str, limit_s: float = 120) -> str:
    """The version of the first ranking pushed at or after ``since`` (%Y%m%dT%H%M%S): one
    that a push already under way when ``since`` came does not count."""
    deadline = time.perf_counter() + limit_s
    while (
        pushed_at(version := ls.get(f"/api/projects/{project_id}").json()["model_version"]) < since
    ):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no new ranking within {limit_s:.0f} s")
        time.sleep(0.1)
    return version


def pushed_at(version: str) -> str:
    """The push time in a ranking version ``rank-<model>-<%Y%m%dT%H%M%S>-<n>`` ("" if none)."""
    return version.rsplit("-", 2)[1] if version.startswith("rank-") else ""


def prediction_rows(ls: httpx.Client, project_id: int, when: str) -> int:
    total = ls.get(
        f"/api/projects/{project_id}", params={"include": "total_predictions_number"}
    ).json()["total_predictions_number"]
    versions = ls.get(f"/api/projects/{project_id}/model-versions").json()
    ranking = sum(n for v, n in versions.items() if v.startswith("rank-"))
    print(f"Label Studio prediction rows {when}: {total:,} in all, {ranking:,} of rank-* versions")
    return int(total)


def rows_after_quiet(ls: httpx.Client, project_id: int, limit_s: float = 600.0) -> None:
    """Rows right after labeling, then once the backend's quiet-time deletes are done."""
    print()
    rows = prediction_rows(ls, project_id, "right after the last label")
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        time.sleep(30)
        fewer = prediction_rows(ls, project_id, f"{time.perf_counter() - started:.0f} s later")
        if fewer == rows:
            return
        rows = fewer


def run(size: int, rounds: int, pace: float, keep_log: Path | None) -> None:
    from backend_server import BackendServer
    from labelstudio_server import ensure_template, running_server

    from ls_backend.labelstudio.client import LabelStudioClient

    rows = snippets(size)
    gold = {r["text"]: r["label"] for r in rows}
    print(f"\n## {size:,} tasks")
    with tempfile.TemporaryDirectory() as tmp:
        template, _ = ensure_template()
        with running_server(template, Path(tmp) / "ls") as studio:
            ls = httpx.Client(
                base_url=studio.url,
                headers={"Authorization": f"Token {studio.token}"},
                timeout=600,
            )
            project = studio.client.projects.create(title=f"queue {size}", label_config=CONFIG)
            for start in range(0, size, IMPORT_CHUNK):
                chunk = [{"text": r["text"]} for r in rows[start : start + IMPORT_CHUNK]]
                ls.post(f"/api/projects/{project.id}/import", json=chunk).raise_for_status()
            env = {
                "LORA_ENABLED": "false",
                "LABEL_STUDIO_URL": studio.url,
                "LABEL_STUDIO_API_KEY": studio.token,
                "SYNC_EVERY": str(SYNC_EVERY),
            }
            backend = BackendServer(Path(tmp) / "models", env=env).start()
            try:
                client = LabelStudioClient(studio.url, studio.token)
                started = time.perf_counter()
                client.ensure_ml_backend(project.id, backend.url, "ls-backend")
                first_sync(backend, ls, project.id, started)
                label_rounds(ls, backend.url, project.id, gold, rounds, pace)
                rows_after_quiet(ls, project.id)
            finally:
                backend.stop()
                if keep_log is not None:
                    shutil.copy(backend.log_path, keep_log.with_suffix(f".{size}.log"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="tasks per project")
    parser.add_argument("--syncs", default="50,10", help="label rounds per size")
    parser.add_argument("--pace", type=float, default=1.0, help="seconds between two labels")
    parser.add_argument("--keep-log", type=Path, help="copy the backend's log here (.SIZE.log)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rounds = [int(s) for s in args.syncs.split(",")]
    for size, n in zip(sizes, rounds + rounds[-1:] * len(sizes), strict=False):
        run(size, n, args.pace, args.keep_log)


if __name__ == "__main__":
    main()
