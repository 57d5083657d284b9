"""Prometheus metrics. With several gunicorn workers, ``ls-backend serve`` points
PROMETHEUS_MULTIPROC_DIR at a folder so /metrics adds up every worker's figures."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

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


#: The shared figures' families: (name, help, per lane).
_SHARED = (
    ("ls_backend_project_annotations", "Annotations stored", False),
    ("ls_backend_project_serving_version", "Number of the serving version", False),
    ("ls_backend_lane_runs", "Runs so far", True),
    ("ls_backend_lane_failures", "Consecutive failed runs", True),
)

#: A project's shared figures: (annotations, serving version number, {lane: (runs, failures)}).
Figures = tuple[int, int, dict[str, tuple[int, int]]]


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))  # as before
    return f"{name}{{{pairs}}} {float(value)!r}\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class SharedState:
    """Figures read from the shared state at scrape time (the stores), so every replica
    reports the same; training may run on RQ workers, whose own counters no replica sees.
    Written here in Prometheus's text format, each project's lines made once while its
    ``token`` (an object that stays the same while its figures do) is the same: a thousand
    projects' samples cost 0.15 s through prometheus_client on every scrape."""

    def __init__(self) -> None:
        self._lines: dict[str, tuple[object, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def _of(self, project: str, token: object, figures: Figures) -> tuple[str, ...]:
        held = self._lines.get(project)
        if held is not None and held[0] is token:
            return held[1]
        annotations, version, lanes = figures
        values = (annotations, version)
        lines = []
        for index, (name, _help, per_lane) in enumerate(_SHARED):
            if not per_lane:
                lines.append(_sample(name, {"project": project}, values[index]))
                continue
            which = index - 2  # runs, failures
            lines.append(
                "".join(
                    _sample(name, {"project": project, "lane": lane}, pair[which])
                    for lane, pair in lanes.items()
                )
            )
        self._lines[project] = (token, tuple(lines))
        return self._lines[project][1]

    def text(self, read: Iterable[tuple[str, object, Figures]]) -> bytes:
        """``read`` yields ``(project, token, figures)`` for every project."""
        with self._lock:
            shown = {project: self._of(project, token, fig) for project, token, fig in read}
            for gone in set(self._lines) - set(shown):
                self._lines.pop(gone, None)
        parts = []
        for index, (name, help_text, _per_lane) in enumerate(_SHARED):
            parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            parts.extend(lines[index] for lines in shown.values())
        return "".join(parts).encode()


def render(shared: bytes = b"") -> tuple[bytes, str]:
    """This process's metrics, then ``shared`` (``SharedState.text``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        payload = generate_latest(registry)
    else:
        payload = generate_latest()
    return payload + shared, CONTENT_TYPE_LATEST
