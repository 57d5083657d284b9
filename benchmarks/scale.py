"""Scale-out figures: 2 serving replicas and RQ workers sharing only PostgreSQL, Redis and
MODEL_DIR, each a real process (`ls-backend serve`, `ls-backend worker`) on 127.0.0.1.

    .venv/bin/python benchmarks/scale.py [--part burst|worker-kill|redis-restart|
                                          postgres-restart|crash|all] [--quick]

- burst: 1,000 ANNOTATION_CREATED webhooks (TREC texts) sent round-robin to the 2 replicas
  from 50 concurrent clients: acknowledged, stored (PostgreSQL) and lost; ack p50/p99; head
  runs caused (goal <= 2); /status equal on both replicas; then 20 more labels and the time
  from the promotion (the version written; the pointer in PostgreSQL moves right after) to
  each replica serving the version.
- worker-kill: a LoRA run on one worker is killed with SIGKILL; serving is untouched, and a
  second LoRA worker does the run again (its sweep finds the work still pending).
- redis-restart: Redis is restarted empty between two bursts of 100 webhooks: the served
  version ends up trained on all 200 labels.
- postgres-restart: webhooks at ~20/s while PostgreSQL stops for 8 s (longer than a request
  waits for a connection): refused ones get 503 (Label Studio does not retry them: Start
  Training re-reads them); every acknowledged one is stored.
- crash: kill -9 of a head worker while its job is queued (waiting out a 3 s quiet spell:
  TRAIN_DEBOUNCE_S=3 in this case) or running (a round on 1,000+ labels), then the time until
  the version serving is trained on every stored label: from a new worker's process start
  (and from when it listens), or from the kill for the worker that survives (goal: 15 s);
  the serving version must not move before. Then a serving replica killed with kill -9 while
  webhooks stream in: every acknowledged label is stored, and the time from the kill until
  every stored label serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from redis import Redis
from rq import Worker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from backend_server import BackendServer  # noqa: E402
from fakes import wait_for  # noqa: E402
from postgres_server import PostgresServer  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from soak import PROJECT, _fire, annotation_event, jobs, p50_p99, rows, setup  # noqa: E402

LS_BACKEND = str(Path(sys.executable).with_name("ls-backend"))


@dataclass
class Cluster:
    """PostgreSQL, Redis, N replicas and the workers started so far, in one temp dir."""

    tmp: Path
    postgres: PostgresServer
    redis: RedisServer
    env: dict[str, str]
    replicas: list[BackendServer] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def model_dir(self) -> Path:
        return self.tmp / "model_dir"

    def worker(self, queues: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [LS_BACKEND, "worker", "--queues", queues],
            env={**os.environ, "MODEL_DIR": str(self.model_dir), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def stored(self) -> set[int]:
        """Annotation ids in the project's PostgreSQL schema."""
        with psycopg.connect(self.env["DATABASE_URL"]) as db:
            query = f"SELECT annotation_id FROM project_{PROJECT}.annotations"
            return {int(row[0]) for row in db.execute(query)}

    def status(self, replica: int = 0) -> dict[str, Any]:
        reply = httpx.get(f"{self.replicas[replica].url}/status", timeout=30)
        return reply.json()["projects"][str(PROJECT)]  # type: ignore[no-any-return]

    def idle(self) -> bool:
        return all(j["state"] not in {"queued", "running"} for j in jobs(self.replicas[0]).values())


@contextmanager
def cluster(replicas: int = 2, **env: str) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory() as raw:
        tmp = Path(raw)
        postgres, redis = PostgresServer().start(), RedisServer(tmp / "redis").start()
        settings = {
            "DATABASE_URL": postgres.create_database(),
            "REDIS_URL": redis.url,
            "LOG_LEVEL": "WARNING",
            "LORA_ENABLED": "false",
            "TRAIN_DEBOUNCE_S": "0.3",
            **env,
        }
        started = time.monotonic()
        c = Cluster(tmp, postgres, redis, settings)
        try:
            for _ in range(replicas):
                c.replicas.append(BackendServer(c.model_dir, settings).start())
            print(f"  {replicas} replicas up in {time.monotonic() - started:.1f} s")
            setup(c.replicas[0])
            yield c
        except Exception:
            for log in sorted(tmp.glob("worker-*.log")):
                print(f"--- {log.name}:\n" + "\n".join(log.read_text().splitlines()[-30:]))
            for replica in c.replicas:
                print(f"--- replica {replica.port}:\n{replica.log_tail(30)}")
            raise
        finally:
            for replica in c.replicas:
                replica.stop()
            for proc in c.workers:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            redis.stop()
            postgres.remove()


def fire_round_robin(
    c: Cluster, bodies: list[dict[str, Any]], clients: int
) -> tuple[list[float], list[int], list[str]]:
    async def both() -> list[tuple[list[float], list[int], list[str]]]:
        share = len(c.replicas)
        return await asyncio.gather(
            *(
                _fire(replica.url, bodies[i::share], clients // share)
                for i, replica in enumerate(c.replicas)
            )
        )

    latencies, acked, errors = [], [], []
    for part in asyncio.run(both()):
        latencies += part[0]
        acked += part[1]
        errors += part[2]
    return latencies, acked, errors


def serving_everywhere(c: Cluster, old: str, timeout: float = 60.0) -> list[float]:
    """Poll each replica's /predict until it serves a version other than ``old``; the
    Unix times each first did."""
    body = {
        "project": f"{PROJECT}.1",
        "tasks": [{"id": 1, "data": {"text": "what is the capital of peru ?"}}],
    }
    seen: list[float | None] = [None] * len(c.replicas)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as http:
        while None in seen and time.monotonic() < deadline:
            for i, replica in enumerate(c.replicas):
                if seen[i] is None:
                    version = http.post(f"{replica.url}/predict", json=body).json()
                    if version["model_version"] != old:
                        seen[i] = time.time()
            time.sleep(0.02)
    return [t if t is not None else float("nan") for t in seen]


def burst(quick: bool) -> bool:
    n, clients = (200, 20) if quick else (1000, 50)
    print(f"\n== burst: {n} webhooks round-robin over 2 replicas from {clients} clients")
    train = rows("train")
    bodies = [annotation_event(1 + i, 10_000 + i, train[i]) for i in range(n)]
    with cluster() as c:
        c.worker("head")
        started = time.perf_counter()
        latencies, acked, errors = fire_round_robin(c, bodies, clients)
        wall = time.perf_counter() - started
        wait_for(c.idle, 300, "the head lane to finish")
        head = jobs(c.replicas[0])["head"]
        first, second = c.status(0), c.status(1)
        stored = c.stored()
        rate = len(acked) / wall
        print(f"  {len(acked)} acked in {wall:.1f} s ({rate:.0f}/s), {len(errors)} errors")
        print(f"  ack latency {p50_p99(latencies)}, max {max(latencies) * 1000:.0f} ms")
        print(f"  head runs caused: {head['runs']} (goal <= 2); serving {first['model_version']}")
        same = first == second
        differ = {k: (first[k], second[k]) for k in first if first[k] != second.get(k)}
        print(f"  /status identical on both replicas: {same} {differ or ''}")
        lost = set(acked) - stored
        print(f"  stored in PostgreSQL: {len(stored)} of {n} sent; lost acknowledged: {len(lost)}")

        old = first["model_version"]
        more = [annotation_event(5000 + i, 20_000 + i, train[n + i]) for i in range(20)]
        fire_round_robin(c, more, 2)
        wait_for(lambda: c.status()["model_version"] != old, 120, "a promotion")
        # The version's files are complete at `created`; the pointer in PostgreSQL moves
        # right after, so the delays below are upper bounds.
        info = c.model_dir / str(PROJECT) / "models" / c.status()["model_version"] / "info.json"
        promoted = json.loads(info.read_text())["created"]
        seen = serving_everywhere(c, old)
        delays = [t - promoted for t in seen]
        shown = ", ".join(f"{d:.2f} s" for d in delays)
        print(f"  promotion -> serving on each replica: {shown} (goal <= 5 s)")
    ok = not errors and not lost and len(stored) == n and head["runs"] <= 2 and same
    ok = ok and max(delays) <= 5.0
    print(f"  -> {'OK' if ok else 'NOT OK'}")
    return ok


def worker_kill(quick: bool) -> bool:
    print("\n== worker-kill: SIGKILL a LoRA worker mid-run; another one redoes the run")
    lora = {
        "LORA_ENABLED": "true",
        "LORA_EVERY": "60",
        "LORA_MIN_LABELS": "60",
        "LORA_EPOCHS": "1",
        "MAX_LENGTH": "32",
    }
    train = rows("train")
    bodies = [annotation_event(1 + i, 10_000 + i, train[i]) for i in range(60)]
    with cluster(**lora) as c:
        c.worker("head")
        first = c.worker("lora")
        fire_round_robin(c, bodies, 4)
        wait_for(lambda: jobs(c.replicas[0])["lora"]["state"] == "running", 300, "a LoRA run")
        time.sleep(2.0)  # into the round
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        serving = c.status()["model_version"]
        time.sleep(3.0)
        untouched = c.status()["model_version"] == serving and not serving.endswith("-lora")
        print(f"  killed; serving {serving}, untouched after 3 s: {untouched}")
        c.worker("lora")
        lora_job = wait_for(
            lambda: (
                (j := jobs(c.replicas[0])["lora"])["state"] == "done" and j["last_result"] and j
            ),
            900,
            "the LoRA run to be done again",
        )
        redone = time.monotonic() - killed
        version = lora_job["last_result"].get("version", "")
        print(f"  redone by the other worker {redone:.0f} s after the kill: {version}")
    ok = untouched and version.endswith("-lora")
    print(f"  -> {'OK' if ok else 'NOT OK'}")
    return ok


def redis_restart(quick: bool) -> bool:
    print("\n== redis-restart: Redis restarted empty between two bursts of 100 webhooks")
    train = rows("train")
    bodies = [annotation_event(1 + i, 10_000 + i, train[i]) for i in range(200)]
    with cluster() as c:
        c.worker("head")
        fire_round_robin(c, bodies[:100], 10)
        c.redis.stop()  # what was queued goes with it
        c.redis.start(persist=False)
        restarted = time.monotonic()
        fire_round_robin(c, bodies[100:], 10)
        version = wait_for(
            lambda: (v := c.status()["model_version"]) and _labels(c, v) == 200 and c.idle() and v,
            120,
            "a version trained on all 200 labels",
        )
        print(f"  {version} trained on 200 labels, {time.monotonic() - restarted:.1f} s after")
    return True


def _labels(c: Cluster, version: str) -> int:
    import json

    info = c.model_dir / str(PROJECT) / "models" / version / "info.json"
    return int(json.loads(info.read_text()).get("labels", 0)) if info.exists() else 0


def postgres_restart(quick: bool) -> bool:
    # Longer than a request waits for a connection (5 s), so some webhooks must get a 503.
    print("\n== postgres-restart: webhooks at ~20/s while PostgreSQL stops for 8 s")
    train = rows("train")
    acked: list[int] = []
    refused: list[int] = []
    with cluster() as c:
        c.worker("head")
        stop = threading.Event()

        def send() -> None:
            with httpx.Client(timeout=30) as http:
                for i in range(400):
                    if stop.is_set():
                        return
                    body = annotation_event(1 + i, 10_000 + i, train[i])
                    url = c.replicas[i % 2].url
                    try:
                        code = http.post(f"{url}/webhook", json=body).status_code
                    except httpx.HTTPError:
                        code = 0
                    (acked if code == 200 else refused).append(1 + i)
                    time.sleep(0.05)

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(3.0)
        c.postgres.stop()
        time.sleep(8.0)
        c.postgres.start()
        time.sleep(3.0)
        stop.set()
        sender.join()
        wait_for(c.idle, 300, "the lanes to settle")
        stored = c.stored()
    lost = set(acked) - stored
    print(f"  acknowledged {len(acked)}, refused {len(refused)} (503 while it was down)")
    print(f"  lost acknowledged: {len(lost)} (goal 0); stored {len(stored)}")
    ok = not lost and len(refused) > 0
    print(f"  -> {'OK' if ok else 'NOT OK'}")
    return ok


RECOVERY_GOAL_S = 15.0


def _holder(c: Cluster, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes] | None:
    """The worker process (of ``procs``) running a job now, per RQ's worker registry."""
    by_pid = {proc.pid: proc for proc in procs if proc.poll() is None}
    for worker in Worker.all(connection=Redis.from_url(c.env["REDIS_URL"])):
        if worker.get_current_job_id() and worker.pid in by_pid:
            return by_pid[worker.pid]
    return None


def _listening(c: Cluster, proc: subprocess.Popen[bytes]) -> bool:
    workers = Worker.all(connection=Redis.from_url(c.env["REDIS_URL"]))
    return any(worker.pid == proc.pid for worker in workers)


def _serves_all(c: Cluster) -> bool:
    return _labels(c, c.status()["model_version"]) == len(c.stored())


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _crash_case(moment: str, replacement: str, labels: int) -> dict[str, Any]:
    """One kill -9 of a head worker holding a job, and the recovery timed."""
    train = rows("train")
    debounce = "3" if moment == "queued" else "0.3"
    with cluster(TRAIN_DEBOUNCE_S=debounce) as c:
        first = c.worker("head")
        candidates = [first] + ([c.worker("head")] if replacement == "survivor" else [])
        fire_round_robin(
            c, [annotation_event(1 + i, 10_000 + i, train[i]) for i in range(labels)], 20
        )
        wait_for(lambda: _serves_all(c) and c.idle(), 600, f"a head on {labels} labels")
        wait_for(lambda: all(_listening(c, p) for p in candidates), 120, "the workers")
        more = [annotation_event(1 + i, 10_000 + i, train[i]) for i in range(labels, labels + 5)]
        fire_round_robin(c, more, 2)
        holder = wait_for(lambda: _holder(c, candidates), 60, "a worker holding the job")
        if moment == "running":  # a round on 1,000 labels takes about a second: poll fast
            deadline = time.monotonic() + 60
            while jobs(c.replicas[0])["head"]["state"] != "running":
                assert time.monotonic() < deadline, "no head run seen"
                time.sleep(0.02)
        serving = c.status()["model_version"]
        _kill(holder)
        killed = time.monotonic()
        time.sleep(0.5)
        untouched = c.status()["model_version"] == serving
        started = listening = killed
        if replacement == "new":
            started = time.monotonic()
            new = c.worker("head")
            wait_for(lambda: _listening(c, new), 300, "the new worker")
            listening = time.monotonic()
        wait_for(lambda: _serves_all(c), 300, "a head on every label")
        done = time.monotonic()
    return {
        "moment": moment,
        "replacement": replacement,
        "labels": labels + 5,
        "from_start": done - started,
        "from_listening": done - listening,
        "start_up": listening - started,
        "untouched": untouched,
    }


def _replica_crash(quick: bool) -> dict[str, Any]:
    """Webhooks stream to 2 replicas; one is killed with kill -9 mid-stream."""
    train = rows("train")
    acked: list[int] = []
    with cluster() as c:
        c.worker("head")
        stop = threading.Event()

        def send(replica: int, first: int) -> None:
            with httpx.Client(timeout=30) as http:
                for i in range(first, first + 400, 2):
                    if stop.is_set():
                        return
                    body = annotation_event(1 + i, 10_000 + i, train[i])
                    try:
                        if (
                            http.post(f"{c.replicas[replica].url}/webhook", json=body).status_code
                            == 200
                        ):
                            acked.append(1 + i)
                    except httpx.HTTPError:
                        pass  # the killed replica: not acknowledged
                    time.sleep(0.02)

        senders = [threading.Thread(target=send, args=(r, r)) for r in range(2)]
        for sender in senders:
            sender.start()
        time.sleep(4.0)
        c.replicas[1].stop(signal.SIGKILL)  # gunicorn and its worker, mid-stream
        killed = time.monotonic()
        stop.set()
        for sender in senders:
            sender.join()
        wait_for(lambda: _serves_all(c), 300, "every stored label serving")
        took = time.monotonic() - killed
        stored = c.stored()
    return {
        "acked": len(acked),
        "stored": len(stored),
        "lost": len(set(acked) - stored),
        "took": took,
    }


def crash(quick: bool) -> bool:
    print("\n== crash: kill -9 of a head worker holding a job; of a replica mid-webhook")
    labels = 200 if quick else 1000
    ok = True
    for moment in ("queued", "running"):
        for replacement in ("new", "survivor"):
            r = _crash_case(moment, replacement, labels)
            if replacement == "new":
                who, took = "a new worker", r["from_listening"]
                timing = (
                    f"{r['from_start']:.1f} s after its process started (start-up "
                    f"{r['start_up']:.1f} s, then {took:.1f} s)"
                )
            else:
                who, took = "the surviving worker", r["from_start"]
                timing = f"{took:.1f} s after the kill"
            print(f"  {moment}, {who}: {r['labels']} labels serving {timing}")
            print(f"    serving version untouched until then: {r['untouched']}")
            ok = ok and r["untouched"] and took <= RECOVERY_GOAL_S
    r = _replica_crash(quick)
    print(
        f"  replica killed mid-stream: {r['acked']} acknowledged, {r['stored']} stored, "
        f"{r['lost']} acknowledged lost; every stored label serving {r['took']:.1f} s later"
    )
    ok = ok and r["lost"] == 0 and r["took"] <= RECOVERY_GOAL_S
    print(f"  -> {'OK' if ok else 'NOT OK'} (goal: {RECOVERY_GOAL_S:.0f} s)")
    return ok


PARTS = {
    "burst": burst,
    "worker-kill": worker_kill,
    "redis-restart": redis_restart,
    "postgres-restart": postgres_restart,
    "crash": crash,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parts = PARTS if args.part == "all" else {args.part: PARTS[args.part]}
    results = {name: run(args.quick) for name, run in parts.items()}
    print("\n" + ", ".join(f"{name}: {'OK' if ok else 'NOT OK'}" for name, ok in results.items()))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
