"""``ls-backend``: serve | models | sync | report | bench."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from typing import Any

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


def models(args: argparse.Namespace) -> None:
    registry = _registry(get_settings(), args.project)
    current = registry.current()
    if args.action == "list":
        header = ("", "version", "promoted", "labels", "accuracy", "macro-F1", "reason")
        print("{:2}{:<14}{:<10}{:>7}{:>10}{:>10}  {}".format(*header))
        for version in registry.versions():
            info = registry.info(version)
            m = info.get("metrics") or {}
            mark = "* " if version == current else "  "
            acc = f"{m['accuracy']:.3f}" if "accuracy" in m else "-"
            f1 = f"{m['macro_f1']:.3f}" if "macro_f1" in m else "-"
            print(
                f"{mark}{version:<14}{str(bool(info.get('promoted'))):<10}"
                f"{info.get('labels', 0):>7}{acc:>10}{f1:>10}  {info.get('reason', '')}"
            )
    elif args.action == "show":
        print(json.dumps(registry.info(args.version or current), indent=2))
    elif args.action == "rollback":
        with registry.lock():
            version = registry.rollback(args.version)
        print(f"project {args.project} now serves {version}")


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
    from redis import Redis

    from ls_backend.jobs import lanes_for
    from ls_backend.jobs.rq import work
    from ls_backend.projects import Projects

    settings = get_settings()
    if not settings.redis_url:
        sys.exit("ls-backend worker needs REDIS_URL (without it the server runs every lane)")
    projects = Projects(settings)
    names = args.queues.split(",") if args.queues else None
    try:
        work(projects, lanes_for(projects), Redis.from_url(settings.redis_url), names)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ls-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the backend under gunicorn (WORKERS, THREADS)")
    p.add_argument("--host", help="default: HOST")
    p.add_argument("--port", type=int, help="default: PORT")
    p.set_defaults(func=serve)

    p = sub.add_parser("models", help="list, show or roll back a project's model versions")
    p.add_argument("action", choices=["list", "show", "rollback"])
    p.add_argument("--project", required=True)
    p.add_argument("--version", help="show: that version; rollback: serve it")
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


def main(argv: list[str] | None = None) -> None:
    # OpenMP threads that spin while they wait make torch 2-9x slower on a busy machine
    # (measured: LoRA 36 vs 4 samples/s on 2 cores); must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
