"""The first minute in Label Studio's own UI: an annotator labels from the moment a model is
connected. Submit -> next task, without and with ls-backend; when the first ranking lands;
whether the stream serves it.

    .venv/bin/python benchmarks/annotator.py [--sizes 1000,10000] [--texts long,short]
        [--engines sqlite,postgresql] [--labels 25] [--arms control,backend,control,backend]
        [--baseline-src DIR] [--keep DIR]

A real Label Studio 1.23 (SQLite, or PostgreSQL as the compose stack runs it, fsync on),
started like the tests start it. For each engine, text kind and size, one project per arm
(an arm named twice runs twice, alternating with the others: on a shared machine the load
drifts), tasks imported first:
- `control`: no ML backend at all;
- `backend`: `ls-backend serve` (this checkout) started beforehand and connected as the README
  says (webhooks, sync on) once the annotator is logged in: labeling starts at the connect;
- `baseline` (with `--baseline-src`): the same, the backend's code taken from DIR (today's
  set-up, e.g. an export of the main branch).
Long texts are 20 newsgroups posts of 600+ characters cut at 700 (they fill the model's
128-token window: the worst case for embedding); short ones are TREC questions. A headless
Chromium annotator (tests/annotator.py) labels `--labels` tasks through *Label All Tasks*,
choosing the true label. Meanwhile a poller (in every arm, so each pays for it) reads the
project's queue version twice a second and, for each new ranking, its predictions: the first
ranked push is timed from the connect, and every task served after it is checked against the
ranking in force (the lowest score not yet labeled). Every wait is bounded; a run that stalls
counts as failures. The load average is printed with every row: the CPU is shared. With
`--keep`, the servers' logs stay there, with every task's timings (`<arm>.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from annotator import (  # noqa: E402
    AnnotatorRun,
    Order,
    QueueWatch,
    chromium_path,
    label_tasks,
    served_order,
)
from backend_server import BackendServer  # noqa: E402
from labelstudio_server import (  # noqa: E402
    PASSWORD,
    USERNAME,
    LabelStudioServer,
    ensure_template,
    running_server,
)
from postgres_server import PostgresServer  # noqa: E402

from ls_backend.labelstudio.client import LabelStudioClient  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
#: Long texts: posts of at least this many characters, cut at LONG_CHARS on a word boundary.
LONG_MIN_CHARS, LONG_CHARS = 600, 700


@dataclass
class Dataset:
    labels: list[str]
    texts: list[str]
    truth: dict[str, str]

    @property
    def config(self) -> str:
        choices = "".join(f'<Choice value="{label}"/>' for label in self.labels)
        return (
            '<View><Text name="text" value="$text"/>'
            f'<Choices name="label" toName="text" choice="single">{choices}</Choices></View>'
        )


def _rows(name: str) -> list[dict[str, str]]:
    rows = []
    for split in ("test", "train"):
        path = DATA / name / f"{split}.jsonl"
        if not path.exists():
            path = path.with_name(f"{path.name}.gz")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def dataset(kind: str, n: int) -> Dataset:
    """`n` distinct texts of `kind` (`long`: 20 newsgroups, `short`: TREC) in a fixed random
    order, and their labels; a text repeats with a ` #i` suffix only when the source runs out."""
    name = {"long": "20newsgroups", "short": "trec"}[kind]
    labels = json.loads((DATA / name / "labels.json").read_text())["labels"]
    pairs: dict[str, str] = {}
    for row in _rows(name):
        text = row["text"]
        if kind == "long":
            if len(text) < LONG_MIN_CHARS:
                continue
            text = text[:LONG_CHARS].rsplit(" ", 1)[0]
        pairs.setdefault(text, row["label"])
    base = list(pairs.items())
    random.Random(0).shuffle(base)  # the files are sorted by label; a queue serves in id order
    chosen = [
        (text if i < len(base) else f"{text} #{i}", label)
        for i, (text, label) in ((i, base[i % len(base)]) for i in range(n))
    ]
    return Dataset(labels, [t for t, _ in chosen], dict(chosen))


def locked_errors(studio: LabelStudioServer, offset: int) -> int:
    """'database is locked' errors Label Studio logged since `offset` (LABEL_STUDIO.md 7)."""
    with open(studio.log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return sum("[ERROR]" in line and "database is locked" in line for line in lines)


def backend_counts(server: BackendServer | None) -> tuple[int, int]:
    """Head rounds run and rankings pushed, from the backend's log."""
    if server is None:
        return 0, 0
    text = server.log_path.read_text(errors="replace")
    return text.count(": head round -> "), text.count(" -> rank-")


@dataclass
class Arm:
    name: str  # control | backend | baseline
    src: Path | None = None  # the backend's code (None: this checkout)


def annotate(
    studio: LabelStudioServer,
    data: Dataset,
    kind: str,
    arm: Arm,
    args: argparse.Namespace,
    index: int,
) -> None:
    """One project, one arm (the `index`-th of its config: a repeat gets a fresh model dir,
    or the backend would go on with the last one's project); prints its table row."""
    size = len(data.texts)
    name = f"{studio.engine}-{kind}-{size}-{index}-{arm.name}"
    project = studio.client.projects.create(title=f"annotator {name}", label_config=data.config)
    studio.client.projects.import_tasks(id=project.id, request=[{"text": t} for t in data.texts])
    server = None
    connected: list[float] = []
    try:
        if arm.name != "control":
            env = {
                "LABEL_STUDIO_URL": studio.url,
                "LABEL_STUDIO_API_KEY": studio.token,
                "TRAIN_DEBOUNCE_S": "0.3",  # the default (the tests' servers use 0.2)
            }
            if arm.src is not None:
                env["PYTHONPATH"] = str(arm.src)
            models = studio.data_dir.parent / f"models-{name}"
            server = BackendServer(models, env=env).start()

        def connect() -> None:
            connected.append(time.monotonic())
            if server is not None:
                with contextlib.closing(LabelStudioClient(studio.url, studio.token)) as ls:
                    ls.ensure_ml_backend(project.id, server.url, "ls-backend")

        offset = studio.log_path.stat().st_size
        load = os.getloadavg()[0]
        with QueueWatch(studio.url, studio.token, project.id).running() as watch:
            run = label_tasks(
                studio.url,
                USERNAME,
                PASSWORD,
                project.id,
                args.labels,
                choose=lambda text: data.truth[text or ""],
                screenshots_dir=args.screenshots / name if args.screenshots else None,
                timeout_s=args.timeout,
                before_open=connect,
            )
        wall_s = time.monotonic() - connected[0]
        load = max(load, os.getloadavg()[0])
        first = min(watch.seen.values(), default=None)
        first_s = None if first is None else first - connected[0]
        rounds, pushes = backend_counts(server)
        if args.keep:  # every task's timings, for a closer look
            rows = [
                {"task": r.task_id, "at": round(r.shown_at - connected[0], 2), "s": r.seconds,
                 "save": r.save_s, "next": r.next_s, "versions": [v for v, _ in r.predictions]}
                for r in run.tasks
            ]  # fmt: skip
            (args.keep / f"{name}.json").write_text(json.dumps(rows, indent=0))
        row(studio.engine, kind, size, arm.name, run, first_s, served_order(run, watch),
            locked_errors(studio, offset), rounds, pushes, wall_s, load)  # fmt: skip
    finally:
        if server is not None:
            server.stop()


def row(
    engine: str, kind: str, size: int, arm: str, run: AnnotatorRun, first_s: float | None,
    order: Order, locked: int, rounds: int, pushes: int, wall_s: float, load: float,
) -> None:  # fmt: skip
    def fmt(s: float | None) -> str:
        return "-" if s is None else f"{s:.2f}"

    served = "-" if arm == "control" else f"{order.in_order}/{order.after_first}"
    parts = f"{fmt(run.median_of('save_s'))} / {fmt(run.median_of('next_s'))}"
    print(
        f"| {engine} | {kind} | {size:,} | {arm} | {len(run.seconds)} | {fmt(run.median_s)} "
        f"| {fmt(run.max_s)} | {parts} | {run.failures} | {locked} | {fmt(first_s)} | {served} "
        f"| {rounds} | {pushes} | {wall_s:.0f} | {load:.1f} |",
        flush=True,
    )
    errors = [f"task {r.task_id}: {e}" for r in run.tasks for e in r.errors] + run.errors
    for error in errors + order.off:  # beside the table, not in it
        print(f"  {engine} {kind} {size:,} {arm}: {error}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="tasks per project")
    parser.add_argument("--texts", default="long,short", help="long (20 newsgroups), short (trec)")
    parser.add_argument("--engines", default="sqlite", help="sqlite, postgresql or both")
    parser.add_argument("--labels", type=int, default=25, help="tasks labeled per run")
    parser.add_argument("--arms", default="control,backend", help="control, backend, baseline")
    parser.add_argument("--baseline-src", type=Path, help="the baseline arm's backend code")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per browser wait")
    parser.add_argument("--screenshots", type=Path, help="save a screenshot every few tasks here")
    parser.add_argument("--keep", type=Path, help="keep the servers' data and logs here")
    args = parser.parse_args()
    if chromium_path() is None:
        sys.exit("no chromium on PATH: apt-get install chromium")
    arms = [Arm(a, args.baseline_src if a == "baseline" else None) for a in args.arms.split(",")]
    if any(a.name == "baseline" for a in arms) and args.baseline_src is None:
        sys.exit("--arms baseline needs --baseline-src")

    print(f"\n## Annotator in Label Studio's UI from the connect ({args.labels} labels)")
    print(
        "| LS db | texts | tasks | arm | labeled | median s | max s | save / next median s "
        "| failures | LS locked | first ranking s | served in order | head rounds | pushes "
        "| run s | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for engine in args.engines.split(","):
        with contextlib.ExitStack() as stack:
            tmp = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            postgres = None
            if engine == "postgresql":
                postgres = PostgresServer(fsync=True).start()  # as deployed
                stack.callback(postgres.remove)
            template, _ = ensure_template(postgres=postgres)
            studio = stack.enter_context(running_server(template, tmp / "ls", postgres))
            for kind in args.texts.split(","):
                for size in [int(s) for s in args.sizes.split(",")]:
                    data = dataset(kind, size)
                    for index, arm in enumerate(arms):
                        annotate(studio, data, kind, arm, args, index)


if __name__ == "__main__":
    main()
