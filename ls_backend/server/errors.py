"""Every failure a request can meet, as a JSON ``{"error": ..., "status": ...}`` that names
the problem: bad input is a 4xx, an unreachable store a 503, nothing a bare 500 page."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ls_backend.store.base import StoreUnavailable

log = logging.getLogger(__name__)

#: What a 503 asks Label Studio to wait.
RETRY_AFTER_S = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


async def _on_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error(422, _describe_validation(exc))


async def _on_api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error(exc.status, exc.message)


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error(exc.status_code, str(exc.detail))


async def _on_store_away(_request: Request, exc: Exception) -> JSONResponse:
    # Any route that reads or writes a store. Label Studio does not retry a webhook: once
    # the database is back, the admin's Start Training re-reads the labels.
    log.error("%s", exc)
    return error(
        503,
        f"{exc}: nothing was stored; a webhook refused now is re-read by Start Training "
        "once the database is back",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


async def _on_too_deep(_request: Request, _exc: Exception) -> JSONResponse:
    return error(400, "body is not valid JSON for this route: nested too deeply")


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error(500, f"internal error: {type(exc).__name__}")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(StoreUnavailable, _on_store_away)
    app.add_exception_handler(RecursionError, _on_too_deep)
    app.add_exception_handler(Exception, _on_unexpected)
