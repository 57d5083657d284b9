"""The HTTP API on one screen: Label Studio's ML-backend protocol (``/health``, ``/setup``,
``/predict``, ``/webhook``), then status, metrics, sync, the report, rollback and the pages.

Routes are thin: they validate, call the project, and turn bad input into a 4xx that names the
problem (``errors``). Model work runs on request threads; training never does (``jobs``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ls_backend import __version__, metrics
from ls_backend.core.registry import version_number
from ls_backend.jobs import stopping
from ls_backend.jobs.scheduler import Scheduler
from ls_backend.labelstudio.config import ConfigError, TaskError
from ls_backend.projects import (
    EVENT_RECEIVED,
    SYNC_REQUESTED,
    Project,
    Projects,
    ProjectView,
    project_created,
)
from ls_backend.server import dashboard
from ls_backend.server.errors import RETRY_AFTER_S, ApiError, error
from ls_backend.server.report import ProjectReport, build_report, project_warnings
from ls_backend.settings import Settings
from ls_backend.store.annotations import KNOWN_ACTIONS, EventError, OtherLabelStudio

log = logging.getLogger(__name__)

router = APIRouter()


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: str | int = Field(description='Label Studio sends "<project id>.<created timestamp>".')
    schema_: str | None = Field(None, alias="schema", description="The project's label config.")
    hostname: str | None = Field(None, description="The host Label Studio names itself.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(description="Full Label Studio tasks (id, data, ...).")
    project: str | int | None = Field(
        None, description='"<id>.<ts>"; may be omitted when the label config is given.'
    )
    label_config: str | None = None


class RollbackRequest(BaseModel):
    version: str | None = Field(
        None, description="The model version to serve, e.g. v0004-head; none: keep what serves."
    )
    pin: bool = Field(
        True,
        description="Keep it serving while new rounds train (they are saved, not served) until "
        'a request with `"pin": false` lifts the pin; `{"pin": false}` alone lifts it.',
    )


class JsonParts:
    """The JSON text of /status's per-project parts, each made once: a part is a new object
    only when its store changed (``Scheduler.overview``), and serialising a thousand
    projects' parts on every call took longer than reading them."""

    def __init__(self) -> None:
        self._texts: dict[str, tuple[object, str]] = {}
        self._lock = threading.Lock()

    def text(self, key: str, part: object) -> str:
        held = self._texts.get(key)
        if held is not None and held[0] is part:
            return held[1]
        text = json.dumps(part)
        with self._lock:
            self._texts[key] = (part, text)
        return text

    def forget_all_but(self, keys: set[str]) -> None:
        with self._lock:
            for gone in set(self._texts) - keys:
                self._texts.pop(gone, None)


class Limits:
    """Label Studio gives /health 1 s, /setup 3 s and webhooks 1 s, then calls the backend down
    or drops the event: those never wait behind predictions for a thread (``control``).
    Predictions get their own threads and a bounded queue (PREDICT_QUEUE), past which they
    get a 503."""

    def __init__(self, threads: int) -> None:
        self.control = anyio.CapacityLimiter(threads)
        self.predicting = anyio.CapacityLimiter(threads)
        self.predictions = 0  # running or waiting


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _projects(request: Request) -> Projects:
    return request.app.state.projects  # type: ignore[no-any-return]


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler  # type: ignore[no-any-return]


def _limits(request: Request) -> Limits:
    return request.app.state.limits  # type: ignore[no-any-return]


# --- Label Studio's protocol ------------------------------------------------------------------


@router.get("/health", summary="Liveness (no auth)")
async def health() -> dict[str, Any]:
    return {"status": "UP", "model_class": "ls-backend", "version": __version__}


@router.post("/setup", summary="Label Studio connects a project; returns the model version")
async def setup(request: Request, body: SetupRequest) -> dict[str, Any]:
    def connect() -> dict[str, Any]:
        project = _project(_projects(request), body.project)
        try:
            # A reinstalled Label Studio reuses the id: its project gets fresh state.
            project.meet(project_created(body.project), body.hostname, body.schema_)
            version = project.setup(body.schema_)
        except ConfigError as exc:
            raise ApiError(422, str(exc)) from exc
        except OtherLabelStudio as exc:
            raise ApiError(409, str(exc)) from exc
        project.connect(_reached_by(request))
        return {"model_version": version}

    return await anyio.to_thread.run_sync(connect, limiter=_limits(request).control)


@router.post(
    "/predict",
    summary="Pre-annotations for a batch of tasks, one per task, in order",
    responses={503: {"description": "PREDICT_QUEUE requests are running or waiting"}},
)
async def predict(request: Request, body: PredictRequest) -> Any:
    if not body.tasks:
        raise ApiError(422, "tasks: the task list is empty")
    if body.project is None:
        raise ApiError(422, "project: required (Label Studio sends '<id>.<timestamp>')")
    limits = _limits(request)
    if limits.predictions >= _settings(request).predict_queue:
        return error(
            503,
            f"{limits.predictions} predictions are running or waiting (PREDICT_QUEUE); retry later",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    limits.predictions += 1
    try:
        projects = _projects(request)
        return await anyio.to_thread.run_sync(_predict, projects, body, limiter=limits.predicting)
    finally:
        limits.predictions -= 1


@router.post("/webhook", summary="Label Studio events: stored durably, training runs later")
async def webhook(request: Request) -> dict[str, Any]:
    raw = await request.body()
    # Parsing a 30 MB TASKS_CREATED and the fsync'd write both block: off the event loop.
    projects = _projects(request)
    return await anyio.to_thread.run_sync(_webhook, projects, raw, limiter=_limits(request).control)


# --- the admin's view ---------------------------------------------------------------------------


def _jobs_of(request: Request, project: Project) -> dict[str, dict[str, Any]]:
    scheduler = _scheduler(request)
    return {lane: scheduler.status(project, lane) for lane in scheduler.lanes.names()}


def _more(view: ProjectView) -> dict[str, Any]:
    return {
        "stopping": stopping.summary(view.store.plateau()),
        "warnings": project_warnings(view),
    }


def overview(scheduler: Scheduler) -> dict[str, dict[str, Any]]:
    """Every project as /status shows it (read only; see ``Scheduler.overview``)."""
    return scheduler.overview(_more)


def _overview(request: Request) -> dict[str, dict[str, Any]]:
    projects = _projects(request)
    shown = {}
    for key, entry in overview(_scheduler(request)).items():
        # Regions and result items skipped in training, by kind (bad offsets, overlaps, unknown
        # labels, relations): as this process last read the labels, else as the head lane's
        # last run (in a worker process) did.
        open_ = projects.opened(key)
        last = (entry["jobs"].get("head") or {}).get("last_result") or {}
        problems = (open_.problems if open_ else None) or last.get("label_problems", {})
        shown[key] = {**entry, "label_problems": problems}  # entries are shared: not changed
    return shown


def _status(request: Request) -> dict[str, Any]:
    sync = (
        {"configured": True}
        if _settings(request).sync_configured
        else {
            "configured": False,
            "message": "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to rank Label "
            "Studio's queue and re-read annotations on START_TRAINING",
        }
    )
    return {"projects": _overview(request), "sync": sync}


@router.get("/status", summary="Jobs per project and lane, sync configuration")
def status(request: Request) -> Response:
    # Read only, and again only from stores written since the last call; serialised here,
    # each project's part once (FastAPI's encoder walks every value of every project).
    body = _status(request)
    parts: JsonParts = request.app.state.status_parts
    shown = body["projects"]
    parts.forget_all_but(set(shown))
    projects = ",".join(f"{json.dumps(key)}:{parts.text(key, part)}" for key, part in shown.items())
    text = f'{{"projects":{{{projects}}},"sync":{json.dumps(body["sync"])}}}'
    return Response(text, media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics")
def prometheus(request: Request) -> Response:
    def figures() -> Iterator[tuple[str, object, metrics.Figures]]:
        for key, shown in _overview(request).items():  # the same object while unchanged
            serving = shown["model_version"]
            runs = {lane: (job["runs"], job["failures"]) for lane, job in shown["jobs"].items()}
            number = version_number(serving) if serving else 0
            yield key, shown, (shown["annotations"], number, runs)

    shared: metrics.SharedState = request.app.state.shared_metrics
    payload, content_type = metrics.render(shared.text(figures()))
    return Response(payload, media_type=content_type)


@router.post("/sync/{project}", status_code=202, summary="Re-rank the project's queue now")
def sync(request: Request, project: str) -> dict[str, Any]:
    if not _settings(request).sync_configured:
        raise ApiError(409, "sync needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    projects = _projects(request)
    projects.emit(_connected(projects, project), SYNC_REQUESTED)
    return {"status": "queued", "project": project}


def _report(request: Request, raw: str) -> ProjectReport:
    project = _known(_projects(request), raw)
    try:
        return build_report(project, _jobs_of(request, project))
    except ConfigError as exc:
        raise ApiError(409, str(exc)) from exc


@router.get(
    "/projects/{project}/report",
    response_model=ProjectReport,
    summary="What the dashboard shows: learning curve, stopping signal, queue, suspects",
)
def report(request: Request, project: str) -> ProjectReport:
    return _report(request, project)


@router.post(
    "/projects/{project}/rollback",
    summary="Serve another saved model version, pinned until lifted; or lift the pin",
)
def rollback(request: Request, project: str, body: RollbackRequest) -> dict[str, Any]:
    registry = _known(_projects(request), project).registry
    if body.version is None and body.pin:
        raise ApiError(422, 'version: required (or {"pin": false} to lift a pin)')
    with registry.lock():
        try:
            if body.version is None:
                version = registry.unpin()
            else:
                version = registry.rollback(body.version, pin=body.pin)
        except KeyError as exc:
            known = ", ".join(registry.versions()) or "none"
            raise ApiError(
                404, f"version: no model version {body.version!r} (known: {known})"
            ) from exc
        pinned = registry.pinned() is not None
    log.info("project %s: serves %s%s", project, version, " (pinned)" if pinned else "")
    return {"project": project, "model_version": version, "pinned": pinned}


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui", response_class=HTMLResponse, summary="The admin's dashboard: every project")
def ui(request: Request) -> HTMLResponse:
    body = _status(request)
    return HTMLResponse(dashboard.overview(body["projects"], body["sync"]))


@router.get("/ui/projects/{project}", response_class=HTMLResponse, summary="The admin's dashboard")
def ui_project(request: Request, project: str) -> HTMLResponse:
    return HTMLResponse(dashboard.project_page(_report(request, project)))


# --- the work behind the routes ---------------------------------------------------------------


def _reached_by(request: Request) -> list[str]:
    """The URL Label Studio reached this backend by (its webhook is ``<that>/webhook``): the
    request's own, and the one a proxy in front says it was asked for."""
    urls = [str(request.base_url)]
    host = request.headers.get("x-forwarded-host")
    if host:
        scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
        prefix = request.headers.get("x-forwarded-prefix") or ""
        urls.append(f"{scheme.split(',')[0].strip()}://{host.split(',')[0].strip()}{prefix}")
    return urls


def _project(projects: Projects, raw: Any) -> Project:
    try:
        return projects.project(raw)
    except ValueError as exc:
        raise ApiError(422, f"project: {exc}") from exc


def _known(projects: Projects, raw: Any) -> Project:
    """A project this backend has state for; 404 otherwise (nothing is created for it)."""
    try:
        project = projects.existing_project(raw)
    except ValueError as exc:
        raise ApiError(422, f"project: {exc}") from exc
    if project is None:
        raise ApiError(404, f"project {raw} is unknown to this backend")
    return project


def _connected(projects: Projects, raw: Any) -> Project:
    """A project Label Studio connected (called /setup for): the only ones the backend reads,
    trains or re-ranks, since it does so with the admin's Label Studio key."""
    try:
        project = projects.connected_project(raw)
    except ValueError as exc:
        raise ApiError(422, f"project: {exc}") from exc
    if project is None:
        raise ApiError(
            403,
            f"project {raw} is not connected to this backend: connect the model in the "
            "project's Settings -> Model first (Label Studio then calls /setup)",
        )
    return project


def _predict(projects: Projects, body: PredictRequest) -> dict[str, Any]:
    project = _project(projects, body.project)
    started = time.perf_counter()
    try:
        if body.label_config:
            project.setup(body.label_config)
        batch = project.predict(body.tasks)
    except (ConfigError, TaskError) as exc:
        raise ApiError(422, str(exc)) from exc
    metrics.PREDICT_SECONDS.observe(time.perf_counter() - started)
    metrics.PREDICTED_TASKS.inc(len(body.tasks))
    return {"results": batch.results, "model_version": batch.model_version}


def _webhook(projects: Projects, raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ApiError(400, "body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict) or not isinstance(body.get("action"), str):
        raise ApiError(422, "action: a webhook body is a JSON object with a string 'action'")
    action = body["action"]
    if action not in KNOWN_ACTIONS:
        return {"status": "ignored", "action": action}
    info = body.get("project")
    if not isinstance(info, dict) or "id" not in info:
        raise ApiError(422, "project.id: required in a webhook body")
    project = _connected(projects, info["id"])
    projects.emit(project, EVENT_RECEIVED)  # before storing: a kill in between is covered
    try:
        seq = project.store.apply(body)
    except OtherLabelStudio as exc:
        raise ApiError(409, str(exc)) from exc
    except EventError as exc:
        raise ApiError(422, str(exc)) from exc
    metrics.WEBHOOK_EVENTS.labels(action).inc()
    projects.emit(project, action)
    return {"status": "stored", "seq": seq}
