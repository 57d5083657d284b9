"""ASGI middleware: a request-body size limit, optional HTTP basic auth (with a webhook-only
token), and what keeps other web sites out: known Host names only (DNS rebinding), JSON-only
POSTs (a page's form cannot send JSON, nor can a cross-site fetch without a preflight we never
answer), no framing."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import socket
from collections.abc import Iterable
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


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str:
    """The name in a Host header: no port, no brackets, lower case, no trailing dot."""
    header = header.strip()
    if header.startswith("["):  # [::1]:9090
        name = header[1 : header.find("]")] if "]" in header else header[1:]
    elif header.count(":") == 1:
        name = header.rsplit(":", 1)[0]
    else:
        name = header
    return name.lower().rstrip(".")


class HostPolicy:
    """The Host names the backend answers to. IP addresses and ``localhost`` always: a DNS
    rebinding attack needs a name the attacker controls, and a browser sends that name."""

    ALWAYS = frozenset({"localhost"})

    def __init__(self, names: Iterable[str] = ()) -> None:
        cleaned = {host_name(n) for n in names if n.strip()}
        self.any_name = "*" in cleaned
        self.suffixes = tuple(n for n in cleaned if n.startswith("."))
        self.names = self.ALWAYS | {n for n in cleaned if not n.startswith(".")}

    @classmethod
    def for_server(cls, bound_to: str, allowed_hosts: str | None) -> HostPolicy:
        """``ALLOWED_HOSTS`` when set; else none more on a loopback address (nothing else can
        reach it), this machine's host name on any other."""
        if allowed_hosts is not None:
            return cls(allowed_hosts.split(","))
        if host_name(bound_to) in cls.ALWAYS or (
            _is_ip(host_name(bound_to)) and ipaddress.ip_address(host_name(bound_to)).is_loopback
        ):
            return cls()
        return cls([socket.gethostname()])

    def allows(self, header: str | None) -> bool:
        if header is None or self.any_name:
            return True  # no Host (HTTP/1.0): no name a page could have chosen
        name = host_name(header)
        return (
            name in self.names
            or _is_ip(name)
            or name.endswith(self.suffixes)
            or any(name == suffix[1:] for suffix in self.suffixes)
        )


class HostMiddleware:
    """400 for a Host name that is not ours (``HostPolicy``)."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = dict(scope["headers"]).get(b"host")
            header = raw.decode("latin-1") if raw is not None else None
            if not self.policy.allows(header):
                shown = host_name(header or "")[:100]
                message = (
                    f"Host {shown!r} is not one of this backend's names: add it to "
                    "ALLOWED_HOSTS if Label Studio or you reach the backend by it"
                )
                await _reply(send, 400, message, [])
                return
        await self.app(scope, receive, send)


#: Methods a web page can send without a preflight only with a form's content types.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class JsonOnlyMiddleware:
    """415 for a POST (or any unsafe method) whose Content-Type is not ``application/json``,
    even without a body: Label Studio always sends JSON, a cross-site form or a no-cors fetch
    never can."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS:
            raw = dict(scope["headers"]).get(b"content-type", b"")
            if raw.split(b";", 1)[0].strip().lower() != b"application/json":
                message = (
                    f"{scope['method']} requests must send Content-Type: application/json "
                    f"(got {raw.decode('latin-1')[:60]!r})"
                )
                await _reply(send, 415, message, [])
                return
        await self.app(scope, receive, send)


#: No page of ours may be framed by another site (clickjacking the rollback button).
FRAME_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
]


class NoFramingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *FRAME_HEADERS]}
            await send(message)

        await self.app(scope, receive, framed)
