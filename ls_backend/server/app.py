"""The web app's wiring: settings, the projects, background work, middleware, error handlers
and the routes (``routes``). Everything heavy loads once per process, in the lifespan."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from ls_backend import __version__, metrics
from ls_backend.jobs import start_scheduler
from ls_backend.jobs.scheduler import Scheduler
from ls_backend.projects import Projects
from ls_backend.server import errors
from ls_backend.server.middleware import (
    BasicAuthMiddleware,
    BodyLimitMiddleware,
    HostMiddleware,
    HostPolicy,
    JsonOnlyMiddleware,
    NoFramingMiddleware,
)
from ls_backend.server.routes import JsonParts, Limits, overview, router
from ls_backend.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, projects: Projects | None = None, scheduler: Scheduler | None = None
) -> FastAPI:
    """The app; ``projects`` (and their ``scheduler``) handed in serve even where no lifespan
    runs (tests, fuzzing)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        if not hasattr(app.state, "projects"):
            app.state.projects = Projects(settings)
            app.state.scheduler = start_scheduler(app.state.projects)
        _warn_about(settings)
        # Events stored before a crash or a restart still train; a store that is not up yet
        # is waited for in the background, so predictions serve meanwhile.
        app.state.scheduler.resume_soon()
        # /status's first call would read every store (1.2 s at 1,000 projects): read them
        # now, in the background, so that it reads only what changes from then on.
        threading.Thread(target=_prime, args=(app.state.scheduler,), daemon=True).start()
        yield
        app.state.scheduler.stop()

    app = FastAPI(
        title="ls-backend",
        version=__version__,
        description="Active-learning ML backend for Label Studio text classification.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.limits = Limits(settings.threads)
    app.state.status_parts = JsonParts()
    app.state.shared_metrics = metrics.SharedState()
    if projects is not None:
        app.state.projects = projects
        app.state.scheduler = scheduler or start_scheduler(projects)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.webhook_auth:
        password, token = settings.basic_auth_pass, settings.webhook_token
        app.add_middleware(
            BasicAuthMiddleware,
            user=settings.basic_auth_user,
            password=password.get_secret_value() if password else None,
            open_paths={"/health"},
            webhook_token=token.get_secret_value() if token else None,
        )
    # Outermost last: a foreign Host name is refused before anything else is looked at.
    app.add_middleware(JsonOnlyMiddleware)
    app.add_middleware(NoFramingMiddleware)
    app.add_middleware(
        HostMiddleware, policy=HostPolicy.for_server(settings.host, settings.allowed_hosts)
    )
    errors.install(app)
    app.include_router(router)
    return app


def _prime(scheduler: Scheduler) -> None:
    try:
        overview(scheduler)
    except Exception as exc:  # a store away: the first /status reads it then
        log.info("/status not read ahead: %s: %s", type(exc).__name__, exc)


def _warn_about(settings: Settings) -> None:
    if settings.sync_configured:
        return
    log.warning(
        "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both set: predictions work, "
        "but the backend cannot reorder Label Studio's queue or re-read annotations"
    )
    if settings.webhook_auth:
        log.error(
            "/webhook needs credentials (basic auth or WEBHOOK_TOKEN) but LABEL_STUDIO_API_KEY "
            "is not set: the backend cannot give Label Studio's webhook the header, so events "
            "get 401 and nothing trains"
        )
