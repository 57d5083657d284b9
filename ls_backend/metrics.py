"""Prometheus metrics. With several gunicorn workers, ``ls-backend serve`` points
PROMETHEUS_MULTIPROC_DIR at a folder so /metrics adds up every worker's figures."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

RUNS = Counter(
    "ls_backend_training_runs", "Background runs by lane and outcome", ["lane", "outcome"]
)
RUN_SECONDS = Histogram(
    "ls_backend_run_seconds",
    "Duration of background runs",
    ["lane"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
LABELS_SEEN = Gauge(
    "ls_backend_labels_seen", "Labels the last run trained on", ["project"], multiprocess_mode="max"
)
PREDICT_SECONDS = Histogram(
    "ls_backend_predict_seconds",
    "Latency of /predict",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PREDICTED_TASKS = Counter("ls_backend_predicted_tasks", "Tasks predicted")
WEBHOOK_EVENTS = Counter("ls_backend_webhook_events", "Webhook events stored", ["action"])


def record_run(lane: str, outcome: str, seconds: float) -> None:
    RUNS.labels(lane, outcome).inc()
    RUN_SECONDS.labels(lane).observe(seconds)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
