"""ASGI middleware: a request-body size limit and optional HTTP basic auth."""

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
    def __init__(
        self, app: ASGIApp, user: str, password: str, open_paths: set[str] | None = None
    ) -> None:
        self.app = app
        self.expected = f"{user}:{password}".encode()
        self.open_paths = open_paths or set()

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"authorization" and value[:6].lower() == b"basic ":
                try:
                    given = base64.b64decode(value[6:].strip(), validate=True)
                except (binascii.Error, ValueError):
                    return False
                return hmac.compare_digest(given, self.expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if (
            scope["type"] != "http"
            or scope["path"] in self.open_paths
            or self._authorized(scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        challenge = [(b"www-authenticate", b'Basic realm="ls-backend"')]
        await _reply(send, 401, "authentication required (HTTP basic auth)", challenge)
