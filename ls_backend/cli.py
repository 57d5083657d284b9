"""``ls-backend``: serve | models | sync | report | bench."""

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
            return create_app(settings)

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
    project = projects.connected_project(args.project)
    if project is None:
        sys.exit(f"project {args.project} is unknown under {get_settings().model_dir}")
    jobs = {lane: asdict(read_status(project, lane)) for lane in lanes_for(projects).names()}
    print(build_report(project, jobs).model_dump_json(indent=2))


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
