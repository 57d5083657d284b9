"""Soak and fault figures against the real server (`ls-backend serve`, as the README starts it).

    .venv/bin/python benchmarks/soak.py [--part burst|predict-during-training|rss|ls-restart|
                                         control-under-load|all]
                                        [--quick]

Everything runs on 127.0.0.1 in a temporary MODEL_DIR; every loop is bounded in count and time.

- burst: 1,000 ANNOTATION_CREATED webhooks (LABEL_STUDIO.md 4.4, TREC texts) from 50 concurrent
  clients: errors, ack latency p50/p99, head runs caused (goal <= 2), annotations in the durable
  store (GET /status and annotations.sqlite opened read-only) equal to those acknowledged.
- predict-during-training: single-task /predict p50/p99 with the head serving and nothing
  training, then while a LoRA run is `running` (LORA_EPOCHS=1, MAX_LENGTH=32), then with the
  adapter serving (MC dropout).
- rss: RSS of each gunicorn worker before and after 10,000 predictions (100 requests x 100
  tasks over 1,000 repeated texts, so the embedding cache is hit).
- ls-restart: a real Label Studio is stopped in the middle of a sync and started again: predict
  keeps serving while it is down; the sync completes (on its own, else after POST /sync); every
  unlabeled task has a prediction of the ranking Label Studio serves, and every annotation made
  in Label Studio is in the backend's store.
- control-under-load: /health, /setup and /webhook p50/p99 while 4 /predict calls of 1,500
  tasks each run over and over and a sync of a 3,000-task project embeds (goals: p99 under
  Label Studio's 1 s / 3 s / 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import fakes  # noqa: E402
from backend_server import BackendServer  # noqa: E402
from fakes import wait_for  # noqa: E402
from labelstudio_server import ensure_template, running_server  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "trec"
PROJECT = 1


def rows(split: str) -> list[dict[str, str]]:
    with open(DATA / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


LABELS: list[str] = json.loads((DATA / "labels.json").read_text())["labels"]
CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="label" toName="text" choice="single">'
    + "".join(f'<Choice value="{label}"/>' for label in LABELS)
    + "</Choices></View>"
)


def annotation_event(annotation_id: int, task_id: int, row: dict[str, str]) -> dict[str, Any]:
    return fakes.annotation_event(  # type: ignore[no-any-return]
        annotation_id, task_id, [row["label"]], text=row["text"], config=CONFIG, project=PROJECT
    )


def predict_body(texts: list[str], first_id: int = 1) -> dict[str, Any]:
    tasks = [{"id": first_id + i, "data": {"text": t}} for i, t in enumerate(texts)]
    return {"tasks": tasks, "project": f"{PROJECT}.1700000000", "label_config": CONFIG}


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def p50_p99(values: list[float]) -> str:
    return f"p50 {ms(values, 50):.1f} ms, p99 {ms(values, 99):.1f} ms (n={len(values)})"


def jobs(server: BackendServer, project: int = PROJECT) -> dict[str, dict[str, Any]]:
    projects = httpx.get(f"{server.url}/status", timeout=30).json()["projects"]
    return projects.get(str(project), {}).get("jobs", {})  # type: ignore[no-any-return]


def sync_ended(
    server: BackendServer, project: int, runs_before: int, timeout: float, what: str
) -> dict[str, Any]:
    """The sync job once a run after the first ``runs_before`` has ended (done or failed)."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (
            (j := jobs(server, project)["sync"])["state"] in {"done", "failed"}
            and j["runs"] > runs_before
            and j
        ),
        timeout,
        what,
    )


def idle(server: BackendServer, project: int = PROJECT) -> bool:
    return all(j["state"] not in {"queued", "running"} for j in jobs(server, project).values())


@contextmanager
def backend(tmp: Path, **env: str) -> Iterator[BackendServer]:
    started = time.monotonic()
    server = BackendServer(tmp / "model_dir", {"LOG_LEVEL": "WARNING", **env}).start()
    shown = {k: "***" if k.endswith("API_KEY") else v for k, v in env.items()}
    print(f"  server up in {time.monotonic() - started:.1f} s with {shown}")
    try:
        yield server
    finally:
        server.stop()


def setup(server: BackendServer, project: int = PROJECT) -> str:
    reply = httpx.post(
        f"{server.url}/setup", json={"project": f"{project}.1", "schema": CONFIG}, timeout=120
    )
    reply.raise_for_status()
    return str(reply.json()["model_version"])


# --- burst --------------------------------------------------------------------------------------


async def _fire(
    url: str, bodies: list[dict[str, Any]], clients: int
) -> tuple[list[float], list[int], list[str]]:
    """POST every body to /webhook from ``clients`` concurrent connections."""
    latencies: list[float] = []
    acked: list[int] = []
    errors: list[str] = []
    queue = list(reversed(bodies))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(http: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            try:
                reply = await http.post("/webhook", json=body)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)
            if reply.status_code == 200:
                acked.append(body["annotation"]["id"])
            else:
                errors.append(f"{reply.status_code}: {reply.text[:200]}")

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client_loop(http) for _ in range(clients)))
    return latencies, acked, errors


def stored_annotations(server: BackendServer, project: int = PROJECT) -> set[int]:
    """Annotation ids in the durable store, read-only, beside the live server."""
    path = server.model_dir / str(project) / "annotations.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT annotation_id FROM annotations")}


def burst(tmp: Path, quick: bool) -> bool:
    n, clients = (200, 20) if quick else (1000, 50)
    print(f"\n== burst: {n} ANNOTATION_CREATED webhooks from {clients} concurrent clients")
    train = rows("train")
    bodies = [annotation_event(1 + i, 10_000 + i, train[i]) for i in range(n)]
    with backend(tmp, LORA_ENABLED="false", TRAIN_DEBOUNCE_S="0.3") as server:
        setup(server)
        started = time.perf_counter()
        latencies, acked, errors = asyncio.run(_fire(server.url, bodies, clients))
        wall = time.perf_counter() - started
        if errors:
            print("  server log tail:\n" + server.log_tail(20))
        wait_for(lambda: idle(server), 300, "the head run to finish")
        head = jobs(server)["head"]
        status_count = httpx.get(f"{server.url}/status").json()["projects"]["1"]["annotations"]
        stored = stored_annotations(server)
        version = httpx.get(f"{server.url}/status").json()["projects"]["1"]["model_version"]
    print(f"  {len(acked)} acked in {wall:.1f} s ({len(acked) / wall:.0f}/s), {len(errors)} errors")
    for error in errors[:5]:
        print(f"    {error}")
    print(f"  ack latency {p50_p99(latencies)}, max {max(latencies) * 1000:.0f} ms")
    print(
        f"  head runs caused: {head['runs']} (goal <= 2); serving {version}; last: {head['state']}"
    )
    print(f"  stored: /status {status_count}, annotations.sqlite {len(stored)}; sent {n}")
    lost = set(acked) - stored
    ok = not errors and not lost and status_count == len(stored) == n and head["runs"] <= 2
    print(f"  lost acknowledged annotations: {len(lost)} -> {'OK' if ok else 'NOT OK'}")
    return ok


# --- predict during training -------------------------------------------------------------------


def single_predicts(
    http: httpx.Client, texts: list[str], until: Callable[[], bool] = lambda: False
) -> tuple[list[float], int]:
    """One task per request, each text new (cold embedding cache); stops early when ``until()``."""
    latencies, errors = [], 0
    for i, text in enumerate(texts):
        if i % 5 == 0 and until():
            break
        started = time.perf_counter()
        reply = http.post("/predict", json=predict_body([text], 100_000 + i))
        if reply.status_code == 200:
            latencies.append(time.perf_counter() - started)
        else:
            errors += 1
    return latencies, errors


def predict_during_training(tmp: Path, quick: bool) -> bool:
    labels, n = (60, 40) if quick else (200, 150)
    print(f"\n== predict latency: head serving idle, during a LoRA run ({labels} labels), after")
    train, test = rows("train"), [r["text"] for r in rows("test")]
    env = {
        "LORA_ENABLED": "true",
        "LORA_MIN_LABELS": str(labels),
        "LORA_EVERY": str(labels),
        "LORA_EPOCHS": "1",
        "MAX_LENGTH": "32",
        "TRAIN_DEBOUNCE_S": "0.3",
    }
    with backend(tmp, **env) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        setup(server)
        for i in range(labels - 1):  # one short of LORA_MIN_LABELS: only the head trains
            http.post("/webhook", json=annotation_event(1 + i, 10_000 + i, train[i]))
        wait_for(lambda: idle(server), 120, "the head run")
        http.post("/predict", json=predict_body([train[-1]["text"]]))  # warm-up
        idle_lat, idle_err = single_predicts(http, test[:n])
        print(f"  idle ({jobs(server)['head']['last_result']['version']}): {p50_p99(idle_lat)}")

        last = labels - 1
        http.post("/webhook", json=annotation_event(1 + last, 10_000 + last, train[last]))
        wait_for(lambda: jobs(server)["lora"]["state"] == "running", 60, "the LoRA run to start")
        started = time.monotonic()
        busy_lat, busy_err = single_predicts(
            http, test[n : 2 * n], until=lambda: jobs(server)["lora"]["state"] != "running"
        )
        lora = wait_for(
            lambda: (j := jobs(server)["lora"])["state"] in {"done", "failed"} and j, 600, "LoRA"
        )
        took = lora["finished"] - lora["started"]
        print(f"  during the LoRA run ({took:.0f} s, {lora['state']}): {p50_p99(busy_lat)}")
        if len(busy_lat) < n and time.monotonic() - started < took:
            print(f"    (the run ended after {len(busy_lat)} predictions)")
        result = lora["last_result"] or {}
        after_lat, after_err = single_predicts(http, test[2 * n : 3 * n])
        print(
            f"  after ({result.get('version')}, promoted={result.get('promoted')}, "
            f"MC_SAMPLES=5 when an adapter serves): {p50_p99(after_lat)}"
        )
    errors = idle_err + busy_err + after_err
    print(f"  predict errors: {errors}; LoRA run: {lora['state']} {lora['last_error'] or ''}")
    return errors == 0 and lora["state"] == "done" and bool(busy_lat)


# --- RSS ---------------------------------------------------------------------------------------


def worker_rss(server: BackendServer) -> dict[int, float]:
    """MB resident per gunicorn worker (the master's children)."""
    assert server.proc is not None
    children = psutil.Process(server.proc.pid).children(recursive=True)
    return {c.pid: c.memory_info().rss / 2**20 for c in children}


def predict_batches(
    server: BackendServer, texts: list[str], requests: int, clients: int = 4, size: int = 100
) -> tuple[float, int, list[dict[int, float]]]:
    """``requests`` x ``size`` tasks from ``clients`` threads, cycling over ``texts``: the wall
    time, the errors, and each worker's RSS every 20 requests."""
    samples: list[dict[int, float]] = []
    errors: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for i in counter:  # shared iterator: each request index runs once
                start = (i * size) % len(texts)
                reply = http.post("/predict", json=predict_body(texts[start : start + size]))
                if reply.status_code != 200 or len(reply.json()["results"]) != size:
                    errors.append(reply.status_code)
                if i % 20 == 19:
                    with lock:
                        samples.append(worker_rss(server))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return time.perf_counter() - started, len(errors), samples


def rss(tmp: Path, quick: bool, workers: int) -> bool:
    requests, size = (20 if quick else 100), 100
    print(f"\n== RSS per worker (WORKERS={workers}) over {requests} x {size} predictions")
    texts = [r["text"] for r in rows("train")[:1000]]
    with backend(tmp, LORA_ENABLED="false", WORKERS=str(workers)) as server:
        setup(server)
        started = worker_rss(server)
        # Warm-up: two passes over the texts, so the cache holds them all and every worker
        # has served full batches; what follows hits the cache only.
        predict_batches(server, texts, 2 * len(texts) // size)
        before = worker_rss(server)
        wall, errors, samples = predict_batches(server, texts, requests)
        after = worker_rss(server)
        cache = sum(f.stat().st_size for f in server.model_dir.glob("embeddings.sqlite*")) / 2**20
    print(f"  {requests * size} predictions in {wall:.1f} s ({requests * size / wall:.0f} tasks/s)")
    flat = True
    for pid, mb in before.items():
        series = " ".join(f"{s.get(pid, float('nan')):.0f}" for s in samples)
        grew = after.get(pid, float("nan")) - mb
        flat &= abs(grew) <= max(20.0, 0.05 * mb)
        print(
            f"  worker {pid}: {started.get(pid, float('nan')):.0f} MB at start, {mb:.0f} MB warm"
            f" -> {after.get(pid, float('nan')):.0f} MB after ({grew:+.0f} MB; every 20"
            f" requests: {series})"
        )
    print(f"  embedding cache on disk (with WAL): {cache:.1f} MB; errors {errors}")
    print(f"  RSS {'flat' if flat else 'NOT flat'} from warm to after (within max(20 MB, 5%))")
    return flat and not errors


# --- Label Studio stopped mid-sync ---------------------------------------------------------------


def ls_restart(tmp: Path, quick: bool) -> bool:
    n_tasks, n_labeled = (300, 12) if quick else (2000, 30)
    print(
        f"\n== Label Studio stopped mid-sync ({n_tasks} tasks, {n_labeled} labeled), then started"
    )
    template, _ = ensure_template()
    texts = [r["text"] for r in rows("train")[:n_tasks]]
    label_of = {r["text"]: r["label"] for r in rows("train")}
    cold = [r["text"] for r in rows("test")]  # not embedded by the sync: a cold cache
    with running_server(template, tmp / "ls") as ls:
        api = httpx.Client(
            base_url=ls.url, headers={"Authorization": f"Token {ls.token}"}, timeout=120
        )
        project = ls.client.projects.create(title="soak ls-restart", label_config=CONFIG)
        pid = int(project.id)
        task_ids = api.post(
            f"/api/projects/{pid}/import",
            params={"return_task_ids": "true"},
            json=[{"text": t} for t in texts],
        ).json()["task_ids"]
        env = {
            "LORA_ENABLED": "false",
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.token,
            "SYNC_EVERY": str(10 * n_tasks),  # only the syncs this part asks for
        }
        with backend(tmp, **env) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            ls.client.ml.create(project=pid, url=server.url, title="ls-backend")
            for task_id, text in zip(task_ids[:n_labeled], texts, strict=False):
                choice = [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "value": {"choices": [label_of[text]]},
                    }
                ]
                api.post(f"/api/tasks/{task_id}/annotations", json={"result": choice})
            wait_for(lambda: idle(server, pid), 120, "the webhooks' head run")
            runs = jobs(server, pid).get("sync", {}).get("runs", 0)
            http.post(f"/sync/{pid}", json={}).raise_for_status()
            wait_for(
                lambda: (
                    jobs(server, pid)["sync"]["progress"] >= 0.2
                    and jobs(server, pid)["sync"]["state"] == "running"
                ),
                120,
                "fetch to end",
            )
            stage = jobs(server, pid)["sync"]["stage"]
            print(f"  sync fetched its tasks; stopping Label Studio after '{stage}'")
            ls.stop()
            down = time.monotonic()
            back = threading.Event()
            outage: list[tuple[list[float], int]] = []
            predictor = threading.Thread(
                target=lambda: outage.append(single_predicts(http, cold, until=back.is_set))
            )
            predictor.start()
            # Keep it down until the sync reaches its push (or gives up), then restart it.
            wait_for(
                lambda: (
                    (j := jobs(server, pid)["sync"])["state"] != "running" or j["progress"] >= 0.75
                ),
                90,
                "the sync to reach its push",
            )
            time.sleep(2.0)
            state = jobs(server, pid)["sync"]["state"]
            ls.start()
            back.set()
            predictor.join(120)
            lat, errors = outage[0]
            print(
                f"  Label Studio down {time.monotonic() - down:.0f} s (its start took "
                f"{ls.start_seconds:.1f} s); meanwhile predict {p50_p99(lat)}, {errors} errors; "
                f"the sync was {state} when the restart began"
            )
            try:
                sync = sync_ended(server, pid, runs, 120, "the interrupted sync to end")
            except TimeoutError as exc:
                sync = {"state": "timeout", "last_error": str(exc), "runs": runs}
            retried = sync["state"] == "done"
            print(f"  interrupted sync: {sync['state']} {sync.get('last_error') or ''}")
            if not retried:
                # Does it complete once the lane is woken again (nothing retries it on its own)?
                print("  no automatic retry completed the sync; POST /sync again")
                later = sync["runs"]
                http.post(f"/sync/{pid}", json={}).raise_for_status()
                sync = sync_ended(server, pid, later, 300, "the second sync")
            result = sync["last_result"] or {}
            stored = len(stored_annotations(server, pid))
        version = api.get(f"/api/projects/{pid}").json()["model_version"]
        tasks = api.get(
            "/api/tasks", params={"project": pid, "fields": "all", "page_size": n_tasks + 100}
        ).json()["tasks"]
        unlabeled = [t for t in tasks if not t["annotations"]]
        covered = [
            t for t in unlabeled if any(p["model_version"] == version for p in t["predictions"])
        ]
    print(
        f"  final sync: {sync['state']}, ranked {result.get('ranked')}, pushed "
        f"{result.get('pushed')}; Label Studio serves {version}"
    )
    print(
        f"  Label Studio: {len(tasks)} tasks ({n_tasks} imported), {len(covered)} of "
        f"{len(unlabeled)} unlabeled have a prediction of it; backend store: {stored} "
        f"annotations ({n_labeled} made)"
    )
    complete = sync["state"] == "done" and len(covered) == len(unlabeled) == n_tasks - n_labeled
    ok = retried and complete and stored == n_labeled and errors == 0 and len(tasks) == n_tasks
    print(
        f"  sync completed on its own: {retried}; in the end complete: {complete} -> "
        f"{'OK' if ok else 'NOT OK'}"
    )
    return ok


# --- control routes under load -----------------------------------------------------------------


def control_under_load(tmp: Path, quick: bool) -> bool:
    """/health, /setup and /webhook latency while 4 Retrieve-predictions-sized /predict calls
    (1,500 tasks each, new texts) run over and over and a sync of a 3,000-task project embeds:
    Label Studio gives them 1 s, 3 s and 1 s before it calls the backend down or drops an event."""
    from ls_backend.labelstudio.client import LabelStudioClient

    seconds = 20 if quick else 60
    train = rows("train")
    print(f"\n== control routes while 4 x /predict of 1,500 tasks and a sync run ({seconds} s)")
    with running_server(ensure_template()[0], tmp / "ls") as studio:
        project = studio.client.projects.create(title="under load", label_config=CONFIG)
        tasks = [{"text": f"{r['text']} (sync {i})"} for i, r in enumerate(train[:3000])]
        studio.client.projects.import_tasks(id=project.id, request=tasks)
        env = {"LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token}
        with backend(tmp, LORA_ENABLED="false", **env) as server:
            client = LabelStudioClient(studio.url, studio.token)
            client.ensure_ml_backend(project.id, server.url, "ls-backend")  # the sync starts
            client.close()
            stop = threading.Event()
            predict_s: list[float] = []
            codes: dict[int, int] = {}

            def predict_loop(worker: int) -> None:
                with httpx.Client(base_url=server.url, timeout=300) as http:
                    round_ = 0
                    while not stop.is_set():
                        texts = [
                            f"{r['text']} (load {worker}.{round_}.{i})"
                            for i, r in enumerate(train[:1500])
                        ]
                        body = {**predict_body(texts), "project": f"{project.id}.1"}
                        started = time.perf_counter()
                        reply = http.post("/predict", json=body)
                        codes[reply.status_code] = codes.get(reply.status_code, 0) + 1
                        if reply.status_code == 200:
                            predict_s.append(time.perf_counter() - started)
                        round_ += 1

            loaders = [threading.Thread(target=predict_loop, args=(w,)) for w in range(4)]
            for thread in loaders:
                thread.start()
            time.sleep(3)  # the predictions are in flight
            health, setup_s, webhook_s, failures = [], [], [], 0
            deadline = time.monotonic() + seconds
            with httpx.Client(base_url=server.url, timeout=30) as http:
                i = 0
                while time.monotonic() < deadline:
                    for path, body, into in (
                        ("/health", None, health),
                        ("/setup", {"project": f"{project.id}.1", "schema": CONFIG}, setup_s),
                        (
                            "/webhook",
                            fakes.annotation_event(
                                1 + i, 1 + i, [train[i]["label"]], text=train[i]["text"],
                                config=CONFIG, project=project.id,
                            ),
                            webhook_s,
                        ),
                    ):  # fmt: skip
                        started = time.perf_counter()
                        reply = http.get(path) if body is None else http.post(path, json=body)
                        into.append(time.perf_counter() - started)
                        failures += reply.status_code >= 400
                    i += 1
                    time.sleep(0.2)
            stop.set()
            for thread in loaders:
                thread.join(600)
    print(f"  /health:  {p50_p99(health)}, max {max(health) * 1000:.0f} ms")
    print(f"  /setup:   {p50_p99(setup_s)}, max {max(setup_s) * 1000:.0f} ms")
    print(f"  /webhook: {p50_p99(webhook_s)}, max {max(webhook_s) * 1000:.0f} ms")
    print(f"  /predict of 1,500 tasks: {p50_p99(predict_s)}; replies by status {codes}")
    print(f"  control requests failed: {failures}")
    return (
        failures == 0
        and ms(health, 99) < 1000
        and ms(webhook_s, 99) < 1000
        and ms(setup_s, 99) < 3000
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parts = ["burst", "predict-during-training", "rss", "ls-restart", "control-under-load"]
    parser.add_argument("--part", choices=[*parts, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--workers", type=int, default=2, help="WORKERS for the rss part")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}, cores: {os.cpu_count()}")
    outcomes = {}
    for part in parts if args.part == "all" else [args.part]:
        with tempfile.TemporaryDirectory(prefix=f"soak-{part}-") as tmp:
            if part == "burst":
                outcomes[part] = burst(Path(tmp), args.quick)
            elif part == "predict-during-training":
                outcomes[part] = predict_during_training(Path(tmp), args.quick)
            elif part == "rss":
                outcomes[part] = rss(Path(tmp), args.quick, args.workers)
            elif part == "control-under-load":
                outcomes[part] = control_under_load(Path(tmp), args.quick)
            else:
                outcomes[part] = ls_restart(Path(tmp), args.quick)
    print(
        f"\nload: {os.getloadavg()}; "
        + ", ".join(f"{k}: {'OK' if v else 'NOT OK'}" for k, v in outcomes.items())
    )
    sys.exit(0 if all(outcomes.values()) else 1)


if __name__ == "__main__":
    main()
