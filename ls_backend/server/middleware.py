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
    """413 for bodies over ``max_bytes``, by Content-Length or by counting a streamed body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body is larger than {self.max_bytes} bytes (MAX_BODY_BYTES)"
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _reply(send, 413, too_big, [])
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _reply(send, 413, too_big, [])


class _TooLarge(Exception):
    pass


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
