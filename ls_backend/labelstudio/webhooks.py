"""Which of a project's webhooks in Label Studio is this backend's, and what is wrong with it.

Label Studio makes one webhook per ML backend connected to a project (``<backend url>/webhook``,
LABEL_STUDIO.md 4.1) and posts every event with that webhook's own headers only (7). So with
auth on, the backend must give its webhook the header itself. Label Studio shows webhook
headers to any of its users (``GET /api/webhooks/``) and every other backend of the project
has a webhook of its own: only the one whose URL is ours gets the header. Ours is the URL
Label Studio reached ``/setup`` by (recorded at each new one).

Label Studio also creates no webhook at all, and says nothing, when its URL validator refuses
the backend's URL (a host without a dot, such as a compose service name, 8): then no
annotation ever arrives. ``check`` says so, with what to do.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: URLs kept per project (a project reconnected by another URL keeps the newest).
MAX_URLS = 4
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized(url: str) -> str:
    """``url`` as Label Studio and /setup may both spell it: lower-case scheme and host, no
    default port, no trailing slash (``HTTP://Host:80/ml/`` -> ``http://host/ml``)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text.rstrip("/")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def auth_header(basic: tuple[str, str] | None, webhook_token: str | None) -> dict[str, str] | None:
    """The header our webhook needs: the webhook-only token when there is one (Label Studio
    then never holds the admin password), else the basic-auth pair, else none."""
    if webhook_token:
        return {"Authorization": f"Bearer {webhook_token}"}
    if basic:
        pair = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return None


@dataclass(frozen=True)
class WebhookCheck:
    """What a look at the project's ML backends and webhooks found."""

    #: (webhook id, its new headers) for each of our webhooks that lacks our header.
    patches: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    #: Our URLs that Label Studio has an ML backend for but no webhook: nothing arrives.
    missing: list[str] = field(default_factory=list)
    #: What the admin must fix (None: nothing).
    problem: str | None = None


def check(
    backends: Iterable[Mapping[str, Any]],
    hooks: Iterable[Mapping[str, Any]],
    ours: Iterable[str],
    header: dict[str, str] | None,
) -> WebhookCheck:
    """Find our webhooks among ``hooks``: those of the project's ML ``backends`` whose URL is
    one of ``ours`` (the URLs /setup came by). Only those are patched with ``header``."""
    mine = {normalized(u) for u in ours}
    listed = [normalized(str(b.get("url") or "")) for b in backends]
    connected = [url for url in dict.fromkeys(listed) if url in mine]
    by_url: dict[str, list[Mapping[str, Any]]] = {}
    for hook in hooks:
        by_url.setdefault(normalized(str(hook.get("url") or "")), []).append(hook)
    patches: list[tuple[int, dict[str, str]]] = []
    missing, off = [], []
    for url in connected:
        found = by_url.get(f"{url}/webhook", [])
        if not found:
            missing.append(url)
            continue
        if not any(hook.get("is_active", True) for hook in found):
            off.append(url)
        for hook in found:
            have = dict(hook.get("headers") or {})
            if header and any(have.get(k) != v for k, v in header.items()):
                patches.append((int(hook["id"]), {**have, **header}))
    problem = None
    if missing:
        problem = _missing_problem(missing[0], header is not None)
    elif off:
        problem = (
            f"Label Studio's webhook {off[0]}/webhook is switched off: annotations do not "
            "reach the backend and nothing trains. Switch it on in the project's "
            "Settings -> Webhooks."
        )
    elif listed and not connected and header:
        problem = (
            f"None of the project's ML backends in Label Studio ({', '.join(sorted(set(listed)))})"
            f" has the URL Label Studio reached /setup by ({', '.join(sorted(mine))}), so the "
            "backend cannot tell which webhook is its own and gives none of them its "
            "credentials: webhooks get 401 and nothing trains. Behind a proxy, pass the Host "
            "header through (or set X-Forwarded-Host)."
        )
    return WebhookCheck(patches, missing, problem)


def _missing_problem(url: str, needs_header: bool) -> str:
    host = urlsplit(url).hostname or ""
    where = f"{url}/webhook"
    if "." not in host and host != "localhost" and not _is_ip(host):
        why = (
            f"Label Studio refuses webhook URLs whose host has no dot ({host!r}) and then "
            "creates none, silently. Connect the model by a name with a dot (a compose "
            "network alias such as ls-backend.internal) or an IP address"
        )
    else:
        why = (
            "It was deleted, or Label Studio's SSRF protection refused it (see the README's "
            "Troubleshooting). Reconnect the model"
        )
    extra = " (the backend adds its Authorization header itself)" if needs_header else ""
    return (
        f"Label Studio has no webhook for {where}, the URL it connects this backend by: "
        f"annotations never reach the backend and nothing trains. {why}, or add the webhook "
        f"in the project's Settings -> Webhooks: URL {where}, send payload, all "
        f"actions{extra}."
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
