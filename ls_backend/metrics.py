"""Prometheus metrics. With several gunicorn workers, ``ls-backend serve`` points
PROMETHEUS_MULTIPROC_DIR at a folder so /metrics adds up every worker's figures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

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


class SharedState:
    """Figures read from the shared state at scrape time (the store, the status files in
    MODEL_DIR), so every replica reports the same; training may run on RQ workers, whose own
    counters no replica sees. ``read`` yields ``(project, annotations, serving version
    number, {lane: (runs, consecutive failures)})``."""

    def __init__(
        self, read: Callable[[], Iterator[tuple[str, int, int, dict[str, tuple[int, int]]]]]
    ) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        annotations = GaugeMetricFamily(
            "ls_backend_project_annotations", "Annotations stored", labels=["project"]
        )
        serving = GaugeMetricFamily(
            "ls_backend_project_serving_version",
            "Number of the serving version",
            labels=["project"],
        )
        runs = GaugeMetricFamily("ls_backend_lane_runs", "Runs so far", labels=["project", "lane"])
        failures = GaugeMetricFamily(
            "ls_backend_lane_failures", "Consecutive failed runs", labels=["project", "lane"]
        )
        for project, count, version, lanes in self.read():
            annotations.add_metric([project], count)
            serving.add_metric([project], version)
            for lane, (done, failed) in lanes.items():
                runs.add_metric([project, lane], done)
                failures.add_metric([project, lane], failed)
        yield from (annotations, serving, runs, failures)


def render(shared: SharedState | None = None) -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        payload = generate_latest(registry)
    else:
        payload = generate_latest()
    if shared is not None:
        extra = CollectorRegistry()
        extra.register(shared)  # type: ignore[arg-type]
        payload += generate_latest(extra)
    return payload, CONTENT_TYPE_LATEST
