"""``ls-backend``: serve | models | sync | report | finetune | bench."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from ls_backend.settings import Settings, get_settings


def serve(args: argparse.Namespace) -> None:
    from gunicorn.app.base import BaseApplication

    from ls_backend import logs

    settings = get_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    logs.configure(settings.log_level, settings.log_json)
    if settings.workers > 1:
        # Each worker keeps its own counters; this folder lets /metrics add them up.
        folder = settings.model_dir / ".prometheus"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"{host}:{port}",
                "workers": settings.workers,
                "worker_class": "uvicorn_worker.UvicornWorker",
                "timeout": 300,
                "graceful_timeout": 10,
                # Gunicorn's 2 s default closes pooled client connections under their feet.
                "keepalive": 75,
                "loglevel": settings.log_level.lower(),
                "accesslog": "-" if settings.log_level.upper() == "DEBUG" else None,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Runs in each worker after the fork: the model loads once per process.
            from ls_backend.server.app import create_app

            logs.configure(settings.log_level, settings.log_json)
            # The Host names it answers to depend on where it listens (--host).
            return create_app(settings.model_copy(update={"host": host, "port": port}))

    Application().run()


def _registry(settings: Settings, project: str) -> Any:
    from ls_backend.projects import project_key
    from ls_backend.store.pointer import StoreAddress, project_registry

    address = StoreAddress(settings.model_dir, settings.database_url_value, project_key(project))
    if not (address.project_dir / "models").is_dir():
        sys.exit(f"no models for project {project} under {settings.model_dir}")
    return project_registry(address.project_dir, address.open())


def _table(rows: list[list[str]], right: set[int]) -> str:
    """Rows as columns sized to their widest cell, two spaces apart (``right``: the columns
    aligned right); the last column is left ragged."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def models(args: argparse.Namespace) -> None:
    registry = _registry(get_settings(), args.project)
    current = registry.current()
    known = ", ".join(registry.versions()) or "none"
    if args.action == "list":
        rows = [["version", "promoted", "labels", "accuracy", "macro-F1", "reason"]]
        marks = ["  "]
        for version in registry.versions():
            info = registry.info(version)
            m = info.get("metrics") or {}
            marks.append("* " if version == current else "  ")
            rows.append(
                [
                    version,
                    "yes" if info.get("promoted") else "no",
                    str(info.get("labels", 0)),
                    f"{m['accuracy']:.3f}" if "accuracy" in m else "-",
                    f"{m['macro_f1']:.3f}" if "macro_f1" in m else "-",
                    str(info.get("reason", "")),
                ]
            )
        table = _table(rows, right={2, 3, 4}).splitlines()
        print("\n".join(mark + line for mark, line in zip(marks, table, strict=True)))
        if registry.pinned():
            print(f"\n{_pinned(args.project, current)}")
    elif args.action == "show":
        version = args.version or current
        if version is None:
            sys.exit(
                f"project {args.project}: no version serves; name one with --version ({known})"
            )
        try:
            info = registry.info(version)
        except KeyError:
            sys.exit(f"project {args.project}: no model version {version!r} (known: {known})")
        print(json.dumps(info, indent=2))
    elif args.action == "rollback":
        try:
            with registry.lock():
                version = registry.rollback(args.version)
        except KeyError as exc:
            sys.exit(f"project {args.project}: {exc.args[0]} (known: {known})")
        print(f"project {args.project} now serves {version}, {_pinned(args.project, version)}")
    elif args.action == "unpin":
        with registry.lock():
            was = registry.pinned()
            version = registry.unpin()
        if was is None:
            print(f"project {args.project}: nothing is pinned ({version or 'no version'} serves)")
        else:
            print(
                f"project {args.project}: the pin on {was} is lifted; it serves until a "
                "training round promotes another version"
            )


def _pinned(project: str, version: str | None) -> str:
    return (
        f"pinned: {version} serves while new versions train, until "
        f"`ls-backend models unpin --project {project}`"
    )


def sync(args: argparse.Namespace) -> None:
    from ls_backend.jobs.sync import sync_target
    from ls_backend.labelstudio.client import LabelStudioClient
    from ls_backend.labelstudio.sync import Syncer
    from ls_backend.projects import Projects

    settings = get_settings()
    if not settings.sync_configured:
        sys.exit("sync needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    client = LabelStudioClient.from_settings(settings)
    try:
        project = Projects(settings).project(args.project)
        result = Syncer(client, settings)(sync_target(project), force=True)
    finally:
        client.close()
    print(json.dumps(result, indent=2))


def worker(args: argparse.Namespace) -> None:
    from ls_backend import logs
    from ls_backend.core.priority import lower_thread_priority
    from ls_backend.jobs import lanes_for
    from ls_backend.jobs.rq import work
    from ls_backend.projects import Projects

    settings = get_settings()
    if not settings.redis_url:
        sys.exit("ls-backend worker needs REDIS_URL (without it the server runs every lane)")
    logs.configure(settings.log_level, settings.log_json)
    # A worker only runs background work: at a lower priority, before any thread (the
    # runtime's, BLAS's) starts, so they all inherit it.
    lower_thread_priority()
    projects = Projects(settings)
    names = args.queues.split(",") if args.queues else None
    try:
        work(projects, lanes_for(projects), settings.redis_url, names)
    except ValueError as exc:
        sys.exit(str(exc))


def report(args: argparse.Namespace) -> None:
    from ls_backend.jobs import lanes_for
    from ls_backend.jobs.lanes import read_status
    from ls_backend.projects import Projects
    from ls_backend.server.report import build_report

    projects = Projects(get_settings())
    project = projects.existing_project(args.project)
    if project is None:
        sys.exit(f"project {args.project} is unknown under {get_settings().model_dir}")
    jobs = {lane: asdict(read_status(project, lane)) for lane in lanes_for(projects).names()}
    print(build_report(project, jobs).model_dump_json(indent=2))


def finetune(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from ls_backend.core.finetune import FinetuneError
    from ls_backend.jobs import finetune as jobs

    settings = get_settings()
    request = jobs.FinetuneRequest(
        project=args.project,
        train=args.train,
        test=args.test,
        out=args.out,
        backbone=args.backbone,
        method=args.method,
        register=args.register,
        evaluation=args.evaluation,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        min_per_class=args.min_per_class,
    )
    bar = tqdm(total=100, desc="finetune", unit="%", bar_format="{l_bar}{bar}| {postfix}")

    def show(fraction: float, stage: str) -> None:
        bar.update(round(100 * fraction) - bar.n)
        bar.set_postfix_str(stage)

    try:
        if settings.redis_url and args.project is not None and not args.here:
            result = _wait_for(jobs.enqueue(settings, request), show)
        else:
            result = jobs.run(settings, request, show, show_progress=True)
    except FinetuneError as exc:
        bar.close()
        sys.exit(f"finetune: {exc}")
    bar.close()
    print(json.dumps(result, indent=2))


def _wait_for(job: Any, show: Any) -> Any:
    """Follow a fine-tune job on the LoRA queue to its end; Ctrl-C leaves it running."""
    import re
    import time

    print(
        f"queued as job {job.id} on {job.origin}: a worker with `--queues lora` (or every "
        "lane) runs it; Ctrl-C stops waiting, not the job",
        file=sys.stderr,
    )
    while True:
        status = str(getattr(job.get_status(refresh=True), "value", ""))
        meta = job.get_meta(refresh=True)
        show(float(meta.get("progress", 0.0)), str(meta.get("stage", status)))
        if status == "finished":
            return job.return_value()
        if status in ("failed", "stopped", "canceled"):
            latest = job.latest_result()
            lines = (latest.exc_string or "").strip().splitlines() if latest else []
            error = re.sub(r"^[\w.]+\.(\w+): ", r"\1: ", lines[-1]) if lines else "no error kept"
            sys.exit(f"finetune job {job.id} {status}: {error}")
        time.sleep(1.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ls-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the backend under gunicorn (WORKERS, THREADS)")
    p.add_argument("--host", help="default: HOST")
    p.add_argument("--port", type=int, help="default: PORT")
    p.set_defaults(func=serve)

    p = sub.add_parser(
        "models", help="list, show or roll back (pinned) a project's model versions; unpin"
    )
    p.add_argument("action", choices=["list", "show", "rollback", "unpin"])
    p.add_argument("--project", required=True)
    p.add_argument(
        "--version",
        help="show: that version; rollback: serve it, pinned (default: the promoted one before)",
    )
    p.set_defaults(func=models)

    p = sub.add_parser("worker", help="run background jobs from Redis (REDIS_URL) with RQ")
    p.add_argument("--queues", help="comma-separated lanes to take (head,lora,sync); default: all")
    p.set_defaults(func=worker)

    p = sub.add_parser("sync", help="rank a project's tasks and reorder its Label Studio queue")
    p.add_argument("--project", required=True)
    p.set_defaults(func=sync)

    p = sub.add_parser(
        "report", help="a project's dashboard as JSON: learning curve, stopping, queue, suspects"
    )
    p.add_argument("--project", required=True)
    p.set_defaults(func=report)

    p = sub.add_parser(
        "finetune",
        help="train the final model on every label (a project's, or a dataset file's) and "
        "export it as a Hugging Face directory (with ONNX and a model card)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", help="a project's labels (a job on the LoRA queue with "
                        "REDIS_URL, else in this process)")  # fmt: skip
    source.add_argument("--train", help="or a JSONL(.gz) file of {text, label} (in this process)")
    p.add_argument("--test", help="with --train: a JSONL file to score the final model on")
    p.add_argument("--backbone", help="`embedded`, a model folder or a Hugging Face id "
                   "(default: LORA_BACKBONE)")  # fmt: skip
    p.add_argument("--method", choices=["lora", "full"], default="lora",
                   help="lora: an adapter, merged into the backbone for the export; full: "
                   "every weight")  # fmt: skip
    p.add_argument("--out", help="the model folder to write (default: MODEL_DIR/<project>/"
                   "finetuned/<time>-<backbone>-<method>, or ./finetuned/...)")  # fmt: skip
    p.add_argument("--register", action="store_true",
                   help="also save it as a model version of the project, serving when the "
                   "promotion rule says it beats the serving one")  # fmt: skip
    p.add_argument("--evaluation", choices=["auto", "held-out", "k-fold", "none"],
                   default="auto", help="auto: held-out from EVAL_MIN_LABELS labels, "
                   "else k-fold (as the server's rounds)")  # fmt: skip
    p.add_argument("--epochs", type=int, help="most epochs (default: LORA_EPOCHS; held-out "
                   "evaluation picks the best)")  # fmt: skip
    p.add_argument("--lr", type=float, help="default: LORA_LR, or 3e-5 for --method full")
    p.add_argument("--batch-size", type=int, help="default: LORA_BATCH_SIZE")
    p.add_argument("--max-length", type=int, help="tokens per text (default: MAX_LENGTH)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-per-class", type=int, default=3,
                   help="labels every class needs (default 3)")  # fmt: skip
    p.add_argument("--here", action="store_true",
                   help="run in this process even with REDIS_URL")  # fmt: skip
    p.set_defaults(func=finetune)

    try:
        from ls_backend.bench import cli as bench
    except ImportError:
        pass
    else:
        bench.register(sub)
    return parser


def settings_problem(exc: ValidationError) -> str:
    """What is wrong with the settings, one line per variable, without the values given
    (they include the password and the keys)."""
    lines = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        name = ".".join(str(part).upper() for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {message}" if name else message)
    return "ls-backend: the settings are not valid:\n  " + "\n  ".join(lines)


def main(argv: list[str] | None = None) -> None:
    # OpenMP threads that spin while they wait make torch 2-9x slower on a busy machine
    # (measured: LoRA 36 vs 4 samples/s on 2 cores); must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        sys.exit(settings_problem(exc))


if __name__ == "__main__":
    main()
