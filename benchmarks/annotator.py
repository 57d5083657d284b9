"""Annotator latency in Label Studio's own UI: Submit -> next task, without and with ls-backend.

    .venv/bin/python benchmarks/annotator.py [--sizes 1000,10000] [--labels 25]

A real Label Studio 1.23 (SQLite) on 127.0.0.1, started like the tests start it, and for each size
two projects of TREC questions (train and test, cycled, each text made unique): one with no ML
backend, one with `ls-backend serve` connected (timed once its first ranking is in the queue).
A headless Chromium annotator (tests/annotator.py) labels `--labels` tasks through *Label All
Tasks*, choosing the true label. Every wait is bounded; a run that stalls counts as failures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from annotator import AnnotatorRun, chromium_path, label_tasks  # noqa: E402
from backend_server import BackendServer  # noqa: E402
from fakes import wait_for  # noqa: E402
from labelstudio_server import (  # noqa: E402
    PASSWORD,
    USERNAME,
    LabelStudioServer,
    ensure_template,
    running_server,
)

from ls_backend.labelstudio.client import LabelStudioClient  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "trec"
LABELS: list[str] = json.loads((DATA / "labels.json").read_text())["labels"]
CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="label" toName="text" choice="single">'
    + "".join(f'<Choice value="{label}"/>' for label in LABELS)
    + "</Choices></View>"
)


def trec_tasks(n: int) -> tuple[list[dict[str, str]], dict[str, str]]:
    """`n` tasks cycling through TREC (5,952 questions), each text unique; and text -> label."""
    rows = []
    for split in ("train", "test"):
        with open(DATA / f"{split}.jsonl") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    texts = [
        (f"{rows[i % len(rows)]['text']} #{i}", rows[i % len(rows)]["label"]) for i in range(n)
    ]
    return [{"text": text} for text, _ in texts], dict(texts)


def ranked(studio: LabelStudioServer, project_id: int) -> bool:
    """The queue runs on the backend's ranking (its predictions' version is the project's)."""
    version = studio.client.projects.get(id=project_id).model_version or ""
    return version.startswith("rank-")


def locked_errors(studio: LabelStudioServer, offset: int) -> int:
    """'database is locked' errors Label Studio logged since `offset` (LABEL_STUDIO.md 7)."""
    with open(studio.log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return sum("[ERROR]" in line and "database is locked" in line for line in lines)


def row(size: int, backend: str, run: AnnotatorRun, locked: int, wall_s: float) -> None:
    def fmt(s: float | None) -> str:
        return "-" if s is None else f"{s:.2f}"

    print(
        f"| {size:,} | {backend} | {len(run.seconds)} | {fmt(run.median_s)} | {fmt(run.max_s)} "
        f"| {run.failures} | {locked} | {wall_s:.0f} |",
        flush=True,
    )
    errors = [f"task {r.task_id}: {e}" for r in run.tasks for e in r.errors] + run.errors
    for error in errors:  # beside the table, not in it
        print(f"  {size:,} tasks, backend {backend}: {error}", file=sys.stderr)


def annotate(studio: LabelStudioServer, size: int, backend: bool, args: argparse.Namespace) -> None:
    """One project of `size` tasks, with or without the backend; prints its table row."""
    tasks, truth = trec_tasks(size)
    name = f"{size}-{'with' if backend else 'without'}-backend"
    project = studio.client.projects.create(title=f"annotator {name}", label_config=CONFIG)
    studio.client.projects.import_tasks(id=project.id, request=tasks)
    server = None
    try:
        if backend:
            env = {"LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token}
            server = BackendServer(studio.data_dir.parent / f"models-{name}", env=env).start()
            ls = LabelStudioClient(studio.url, studio.token)
            ls.ensure_ml_backend(project.id, server.url, "ls-backend")
            ls.close()
            wait_for(lambda: ranked(studio, project.id), args.sync_timeout, "the first ranking")
        offset = studio.log_path.stat().st_size
        started = time.monotonic()
        run = label_tasks(
            studio.url,
            USERNAME,
            PASSWORD,
            project.id,
            args.labels,
            choose=lambda text: truth[text],
            screenshots_dir=args.screenshots / name if args.screenshots else None,
            timeout_s=args.timeout,
        )
        wall_s = time.monotonic() - started
        row(size, "yes" if backend else "no", run, locked_errors(studio, offset), wall_s)
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="tasks per project")
    parser.add_argument("--labels", type=int, default=25, help="tasks labeled per run")
    parser.add_argument(
        "--sync-timeout", type=float, default=600.0, help="seconds to wait for the first ranking"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per browser wait")
    parser.add_argument("--screenshots", type=Path, help="save a screenshot every few tasks here")
    args = parser.parse_args()
    if chromium_path() is None:
        sys.exit("no chromium on PATH: apt-get install chromium")

    print(f"\n## Annotator in Label Studio's UI: Submit -> next task ({args.labels} labels)")
    print("| tasks | backend | labeled | median s | max s | failures | LS locked | run s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        template, _ = ensure_template()
        with running_server(template, Path(tmp) / "ls") as studio:
            for size in [int(s) for s in args.sizes.split(",")]:
                for backend in (False, True):
                    annotate(studio, size, backend, args)


if __name__ == "__main__":
    main()
