"""The web app: Label Studio's ML-backend protocol plus status, metrics and sync.

Routes are thin: they validate, call the service, and turn every bad input into a
4xx JSON error that names the problem. Model work happens in ``ls_backend.service``
and training in ``ls_backend.worker``, never in a request thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ls_backend import __version__, metrics
from ls_backend.core.registry import version_number
from ls_backend.databases import StoreUnavailable
from ls_backend.labelstudio.config import ConfigError, TaskError
from ls_backend.labelstudio.events import KNOWN_ACTIONS, EventError
from ls_backend.labelstudio.lane import attach_label_studio
from ls_backend.lanes import CONNECTED, SYNC_REQUESTED, read_status
from ls_backend.report import ProjectReport, build_report
from ls_backend.server import dashboard
from ls_backend.server.middleware import BasicAuthMiddleware, BodyLimitMiddleware
from ls_backend.service import Backend
from ls_backend.settings import Settings
from ls_backend.worker import Worker, start_scheduler

log = logging.getLogger(__name__)

#: What a 503 from a full prediction queue asks Label Studio to wait.
RETRY_AFTER_S = 5


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: str | int = Field(description='Label Studio sends "<project id>.<created timestamp>".')
    schema_: str | None = Field(None, alias="schema", description="The project's label config.")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: dict[str, Any] | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(description="Full Label Studio tasks (id, data, ...).")
    project: str | int | None = Field(
        None, description='"<id>.<ts>"; may be omitted when the label config is given.'
    )
    label_config: str | None = None
    params: dict[str, Any] | None = None


class RollbackRequest(BaseModel):
    version: str = Field(description="The model version to serve, e.g. v0004-head.")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    # A backend handed in (tests, fuzzing) serves even where no lifespan runs.
    state: dict[str, Any] = {}
    if backend is not None:
        state["backend"] = backend
        if backend.worker is None:
            Worker(backend)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Everything heavy loads here, once per process, never per request.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        state.setdefault("backend", Backend(settings))
        state["worker"] = state["backend"].worker or start_scheduler(state["backend"])
        if settings.sync_configured:
            attach_label_studio(state["backend"].lanes, settings)
        else:
            log.warning(
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both set: predictions work, "
                "but the backend cannot reorder Label Studio's queue or re-read annotations"
            )
            if settings.auth_enabled:
                log.error(
                    "basic auth is on but LABEL_STUDIO_API_KEY is not set: the backend cannot "
                    "give Label Studio's webhooks the credentials, so they get 401 and "
                    "nothing trains"
                )
        state["worker"].resume()  # events stored before a crash or a restart still train
        yield
        state["worker"].stop()

    app = FastAPI(
        title="ls-backend",
        version=__version__,
        description="Active-learning ML backend for Label Studio text classification.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.auth_enabled:
        assert settings.basic_auth_user and settings.basic_auth_pass
        app.add_middleware(
            BasicAuthMiddleware,
            user=settings.basic_auth_user,
            password=settings.basic_auth_pass.get_secret_value(),
            open_paths={"/health"},
        )

    def the_backend() -> Backend:
        return state["backend"]  # type: ignore[no-any-return]

    @app.exception_handler(RequestValidationError)
    async def on_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _describe_validation(exc))

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(StoreUnavailable)
    async def on_store_away(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        # Any route that reads or writes a store. Label Studio does not retry a webhook: once
        # the database is back, the admin's Start Training re-reads the labels.
        log.error("%s", exc)
        return _error(
            503,
            f"{exc}: nothing was stored; a webhook refused now is re-read by Start Training "
            "once the database is back",
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(RecursionError)
    async def on_too_deep(_request: Request, _exc: RecursionError) -> JSONResponse:
        return _error(400, "body is not valid JSON for this route: nested too deeply")

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    # Label Studio gives /health 1 s, /setup 3 s and webhooks 1 s, then calls the backend
    # down or drops the event: those never wait behind predictions for a thread. Predictions
    # get their own threads and a bounded queue (PREDICT_QUEUE), past which they get a 503.
    control = anyio.CapacityLimiter(settings.threads)
    predicting = anyio.CapacityLimiter(settings.threads)
    queued = {"predict": 0}

    @app.get("/health", summary="Liveness (no auth)")
    async def health() -> dict[str, Any]:
        return {"status": "UP", "model_class": "ls-backend", "version": __version__}

    @app.post("/setup", summary="Label Studio connects a project; returns the model version")
    async def setup(body: SetupRequest) -> dict[str, Any]:
        def connect() -> dict[str, Any]:
            project = _project(the_backend(), body.project)
            try:
                version = project.setup(body.schema_)
            except ConfigError as exc:
                raise ApiError(422, str(exc)) from exc
            project.connect()
            the_backend().worker.notify(project, CONNECTED)
            return {"model_version": version}

        return await anyio.to_thread.run_sync(connect, limiter=control)

    @app.post(
        "/predict",
        summary="Pre-annotations for a batch of tasks, one per task, in order",
        responses={503: {"description": "PREDICT_QUEUE requests are running or waiting"}},
    )
    async def predict(body: PredictRequest) -> Any:
        if not body.tasks:
            raise ApiError(422, "tasks: the task list is empty")
        if body.project is None:
            raise ApiError(422, "project: required (Label Studio sends '<id>.<timestamp>')")
        if queued["predict"] >= settings.predict_queue:
            return _error(
                503,
                f"{queued['predict']} predictions are running or waiting (PREDICT_QUEUE); "
                "retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        queued["predict"] += 1
        try:
            return await anyio.to_thread.run_sync(_predict, the_backend(), body, limiter=predicting)
        finally:
            queued["predict"] -= 1

    @app.post("/webhook", summary="Label Studio events: stored durably, training runs later")
    async def webhook(request: Request) -> dict[str, Any]:
        raw = await request.body()
        # Parsing a 30 MB TASKS_CREATED and the fsync'd write both block: off the event loop.
        return await anyio.to_thread.run_sync(_webhook, the_backend(), raw, limiter=control)

    def jobs_of(project: Any) -> dict[str, dict[str, Any]]:
        backend = the_backend()
        return {lane: backend.worker.status(project, lane) for lane in backend.lanes.names()}

    @app.get("/status", summary="Jobs per project and lane, sync configuration")
    def status() -> dict[str, Any]:
        backend = the_backend()
        projects = {}
        for key in backend.known_projects():
            project = backend.project(key)
            projects[key] = {
                "model_version": project.registry.current(),
                "annotations": project.store.count("annotations"),
                "tasks": project.store.count("tasks"),
                "jobs": jobs_of(project),
            }
        sync = (
            {"configured": True}
            if settings.sync_configured
            else {
                "configured": False,
                "message": "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to rank Label "
                "Studio's queue and re-read annotations on START_TRAINING",
            }
        )
        return {"projects": projects, "sync": sync}

    def shared_figures() -> Iterator[tuple[str, int, int, dict[str, tuple[int, int]]]]:
        backend = the_backend()
        for key in backend.known_projects():
            project = backend.project(key)
            serving = project.registry.current()
            lanes = {}
            for lane in backend.lanes.names():
                status = read_status(project, lane)
                lanes[lane] = (status.runs, status.failures)
            number = version_number(serving) if serving else 0
            yield key, project.store.count("annotations"), number, lanes

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus() -> Response:
        payload, content_type = metrics.render(metrics.SharedState(shared_figures))
        return Response(payload, media_type=content_type)

    @app.post("/sync/{project}", status_code=202, summary="Re-rank the project's queue now")
    def sync(project: str) -> dict[str, Any]:
        backend = the_backend()
        if not settings.sync_configured:
            raise ApiError(409, "sync needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        backend.worker.notify(_connected(backend, project), SYNC_REQUESTED)
        return {"status": "queued", "project": project}

    def report_of(raw: str) -> ProjectReport:
        project = _known(the_backend(), raw)
        try:
            return build_report(project, jobs_of(project))
        except ConfigError as exc:
            raise ApiError(409, str(exc)) from exc

    @app.get(
        "/projects/{project}/report",
        response_model=ProjectReport,
        summary="What the dashboard shows: learning curve, stopping signal, queue, suspects",
    )
    def report(project: str) -> ProjectReport:
        return report_of(project)

    @app.post("/projects/{project}/rollback", summary="Serve another saved model version")
    def rollback(project: str, body: RollbackRequest) -> dict[str, Any]:
        registry = _known(the_backend(), project).registry
        with registry.lock():
            try:
                version = registry.rollback(body.version)
            except KeyError as exc:
                known = ", ".join(registry.versions()) or "none"
                raise ApiError(
                    404, f"version: no model version {body.version!r} (known: {known})"
                ) from exc
        log.info("project %s: rolled back to %s", project, version)
        return {"project": project, "model_version": version}

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui")

    @app.get("/ui", response_class=HTMLResponse, summary="The admin's dashboard: every project")
    def ui() -> HTMLResponse:
        body = status()
        return HTMLResponse(dashboard.overview(body["projects"], body["sync"]))

    @app.get("/ui/projects/{project}", response_class=HTMLResponse, summary="The admin's dashboard")
    def ui_project(project: str) -> HTMLResponse:
        return HTMLResponse(dashboard.project_page(report_of(project)))

    return app


def _known(backend: Backend, raw: Any) -> Any:
    """A project this backend has state for; 404 otherwise (nothing is created for it)."""
    try:
        project = backend.connected_project(raw)
    except ValueError as exc:
        raise ApiError(422, f"project: {exc}") from exc
    if project is None:
        raise ApiError(404, f"project {raw} is unknown to this backend")
    return project


def _project(backend: Backend, raw: Any) -> Any:
    try:
        return backend.project(raw)
    except ValueError as exc:
        raise ApiError(422, f"project: {exc}") from exc


def _predict(backend: Backend, body: PredictRequest) -> dict[str, Any]:
    project = _project(backend, body.project)
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


def _webhook(backend: Backend, raw: bytes) -> dict[str, Any]:
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
    project_info = body.get("project")
    if not isinstance(project_info, dict) or "id" not in project_info:
        raise ApiError(422, "project.id: required in a webhook body")
    return _store_event(backend, project_info["id"], body)


def _connected(backend: Backend, raw: Any) -> Any:
    """A project Label Studio connected (called /setup for): the only ones the backend reads,
    trains or re-ranks, since it does so with the admin's Label Studio key."""
    try:
        project = backend.connected_project(raw)
    except ValueError as exc:
        raise ApiError(422, f"project: {exc}") from exc
    if project is None:
        raise ApiError(
            403,
            f"project {raw} is not connected to this backend: connect the model in the "
            "project's Settings -> Model first (Label Studio then calls /setup)",
        )
    return project


def _store_event(backend: Backend, raw_project: Any, body: dict[str, Any]) -> dict[str, Any]:
    project = _connected(backend, raw_project)
    try:
        seq = project.store.apply(body)
    except EventError as exc:
        raise ApiError(422, str(exc)) from exc
    metrics.WEBHOOK_EVENTS.labels(body["action"]).inc()
    backend.worker.notify(project, body["action"])
    return {"status": "stored", "seq": seq}
