"""What stands between the network and the service: trusted hosts, origins, the optional key, headers.

One pure ASGI middleware, ``Guard``, checks every HTTP request and WebSocket
handshake in this order, before any route runs:

1. Host: the Host header must name an allowed host (settings.allowed_hosts),
   else 400. This defeats DNS rebinding, where a foreign page's name is
   pointed at 127.0.0.1 to reach a loopback service.
2. Origin: when a browser says which page opened a WebSocket (or sent an
   upload or any other unsafe request), the page must be the service's own or
   in settings.allowed_origins, else 403. Clients that send no Origin (the
   CLI, scripts, websocket libraries) are not affected.
3. Key: when settings has a key, every path but the open ones (/healthz, the
   web page and the API docs) needs it, else 401: ``Authorization: Bearer
   KEY`` or ``X-API-Key: KEY``; browsers, which cannot set headers on a
   WebSocket, offer the subprotocol ``swishnet.key.<KEY in base64url>``.

Refused WebSocket handshakes get an HTTP answer (the ASGI denial response),
as HTTP requests do: one line of JSON ``{"detail": ...}``. Every HTTP
response carries SECURITY_HEADERS.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from typing import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

log = logging.getLogger(__name__)

KEY_PROTOCOL_PREFIX = "swishnet.key."
PROTOCOL = "swishnet"  # the subprotocol a keyed browser client offers beside its key, and the one accepted
OPEN_PATHS = ("/healthz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/favicon.ico")
OPEN_PREFIXES = ("/web/", "/docs/")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                           "form-action 'self'; object-src 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
REASONS = {400: "host", 403: "origin", 401: "key"}  # the refused requests' metrics label, by status
PATH_KEYS = ("corpus", "out")  # card fields that name folders on the machine that trained the model


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str, allowed: Iterable[str]) -> bool:
    name = host_name(host_header)
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def origin_allowed(origin: str, host_header: str, allowed: Iterable[str]) -> bool:
    """The service's own origin (the page's host and port are the request's Host), or one that is allowed.

    The scheme is not compared for the own origin: behind a TLS proxy, the page is https and the service
    sees plain HTTP."""
    origin = origin.strip().rstrip("/").lower()
    allowed = tuple(allowed)
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, files) and anything odd
    default_port = {"http": 80, "https": 443}[parts.scheme]
    page = (parts.hostname or "", parts.port or default_port)
    served = urlsplit(f"{parts.scheme}://{host_header.strip().lower()}")
    return page == (served.hostname or "", served.port or default_port)


def protocol_key(subprotocols: Iterable[str]) -> str | None:
    """The key a browser offered as the subprotocol swishnet.key.<base64url>, or None."""
    for protocol in subprotocols:
        if protocol.startswith(KEY_PROTOCOL_PREFIX):
            encoded = protocol[len(KEY_PROTOCOL_PREFIX):]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
    return None


def presented_key(scope: Scope, headers: Headers) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    if scope["type"] == "websocket":
        return protocol_key(scope.get("subprotocols") or ())
    return None


def key_matches(presented: str | None, key: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), key.encode())


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def public_card(card: dict) -> dict:
    """The model card without what only the machine that trained it needs: folder paths (``corpus``,
    ``out``, and any other absolute path, at any depth)."""
    def clean(value: object) -> object:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in PATH_KEYS and not _is_path(v)}
        if isinstance(value, list):
            return [clean(v) for v in value if not _is_path(v)]
        return value

    return clean(card)  # type: ignore[return-value]


def _is_path(value: object) -> bool:
    """An absolute file system path (POSIX, a home folder or Windows)."""
    return isinstance(value, str) and re.match(r"\s*(/[^/\s]|~/|[A-Za-z]:[\\/])", value) is not None


class Guard:
    """Host, origin and key checks, and security headers, for HTTP and WebSocket (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str], origins: Iterable[str], key: str | None,
                 metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.hosts = tuple(hosts)
        self.origins = tuple(origins)
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            status, detail, extra = refusal
            log.info("refused %s %s: %s", scope["type"], scope.get("path"), detail)
            if self.metrics is not None:
                self.metrics.refused.labels(REASONS[status]).inc()
            await deny(scope, send, status, detail, extra)
            return
        if scope["type"] == "http":
            send = with_security_headers(send)
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """(status, detail, extra headers) for a request that must be refused, or None."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not host_allowed(host, self.hosts):
            return 400, "this service does not answer to that host name (see SWISHNET_ALLOWED_HOSTS)", []
        origin = headers.get("origin")
        unsafe = scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        if origin is not None and unsafe and not origin_allowed(origin, host, self.origins):
            return 403, f"pages from {origin[:100]} may not use this service (see SWISHNET_ALLOWED_ORIGINS)", []
        if self.key is not None and not is_open_path(scope["path"]) and not key_matches(
                presented_key(scope, headers), self.key):
            return 401, ("this service needs its key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
                         "(browsers' WebSockets: the subprotocol swishnet.key.<KEY in base64url>)"), [
                (b"www-authenticate", b'Bearer realm="swishnet"')]
        return None


def with_security_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {name.lower() for name, _ in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []),
                                              *(header for header in SECURITY_HEADERS if header[0] not in names)]}
        await send(message)

    return send_with_headers


async def deny(scope: Scope, send: Send, status: int, detail: str,
               extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer with ``{"detail": ...}`` and ``status``; for a WebSocket, before its handshake completes."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *SECURITY_HEADERS, *(extra_headers or [])]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})  # servers without denial responses answer 403
            return
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
