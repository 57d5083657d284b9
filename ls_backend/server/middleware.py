"""ASGI middleware: a request-body size limit and optional HTTP basic auth (with a
webhook-only token)."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def _reply(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length, or for a streamed (chunked) body by
    reading it here first, so the 413 never turns into the route's own parse error."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body is larger than {self.max_bytes} bytes (MAX_BODY_BYTES)"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await _reply(send, 413, too_big, [])
                return
            await self.app(scope, receive, send)  # the server stops at Content-Length
            return
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            more = message.get("more_body", False)
            if seen > self.max_bytes:
                await _reply(send, 413, too_big, [])
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class BasicAuthMiddleware:
    """HTTP basic auth (``user``/``password``) on every path but ``open_paths``. On
    ``webhook_paths`` a bearer ``webhook_token`` is accepted too (and alone guards them when
    basic auth is off): Label Studio's webhook can then carry that token, not the password."""

    def __init__(
        self,
        app: ASGIApp,
        user: str | None = None,
        password: str | None = None,
        open_paths: set[str] | None = None,
        webhook_token: str | None = None,
        webhook_paths: frozenset[str] = frozenset({"/webhook"}),
    ) -> None:
        self.app = app
        self.expected = f"{user}:{password}".encode() if user and password else None
        self.token = webhook_token.encode() if webhook_token else None
        self.open_paths = open_paths or set()
        self.webhook_paths = webhook_paths

    def _authorized(self, headers: list[tuple[bytes, bytes]], path: str) -> bool:
        token = self.token if path in self.webhook_paths else None
        if self.expected is None and token is None:
            return True  # nothing guards this path
        for name, value in headers:
            if name != b"authorization":
                continue
            scheme, _, credentials = value.partition(b" ")
            scheme, credentials = scheme.lower(), credentials.strip()
            if scheme == b"bearer" and token is not None:
                return hmac.compare_digest(credentials, token)
            if scheme == b"basic" and self.expected is not None:
                try:
                    given = base64.b64decode(credentials, validate=True)
                except (binascii.Error, ValueError):
                    return False
                return hmac.compare_digest(given, self.expected)
            return False
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if (
            scope["type"] != "http"
            or scope["path"] in self.open_paths
            or self._authorized(scope["headers"], scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        challenge = [(b"www-authenticate", b'Basic realm="ls-backend"')]
        await _reply(send, 401, "authentication required (HTTP basic auth)", challenge)
