"""Prometheus metrics of one server process (each uvicorn worker counts its own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "CountRequests", "CONTENT_TYPE_LATEST", "STREAM_OUTCOMES"]

STREAM_OUTCOMES = {
    "completed": "the client sent the end message, or closed the connection normally (1000, 1001)",
    "client_gone": "the connection ended without a normal close (no close frame, a reset, another code)",
    "slow_client": "the client did not read its events (1008): too many waiting, or no answer to a ping",
    "shutdown": "the service stopped (1012)",
    "error_CODE": "closed by the server with CODE after an error message (1003, 1007, 1008, 1009, 1013)",
    "error_1011": "an internal error (a bug or a model failure; the log has the traceback)",
}


class Metrics:
    """The service's counters, in a registry of their own so that several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_open_fds, CPU seconds
        self.requests = Counter(
            "swishnet_requests", "HTTP requests answered, by route and status.", ["route", "status"],
            registry=self.registry,
        )
        self.refused = Counter(
            "swishnet_refused", "Requests and WebSocket handshakes refused before any route, by reason "
            "(host: not an allowed host; origin: a foreign page; key: missing or wrong key).", ["reason"],
            registry=self.registry,
        )
        self.uploads_admitted = Gauge(
            "swishnet_uploads_admitted", "Uploads in hand now: being received, waiting or classified.",
            registry=self.registry,
        )
        self.uploads_refused = Counter(
            "swishnet_uploads_refused", "Uploads refused with 503 because the upload queue was full.",
            registry=self.registry,
        )
        self.streams_open = Gauge("swishnet_streams_open", "WebSocket streams open now.", registry=self.registry)
        self.streams_total = Counter(
            "swishnet_streams", "WebSocket streams ended, by how they ended (see STREAM_OUTCOMES).", ["outcome"],
            registry=self.registry,
        )
        self.live_subscribers = Gauge("swishnet_live_subscribers", "WS /v1/live subscribers now.",
                                      registry=self.registry)
        self.live_events_dropped = Counter(
            "swishnet_live_events_dropped", "Events dropped for /v1/live subscribers that read too slowly.",
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "swishnet_audio_seconds", "Seconds of audio classified, by source.", ["source"], registry=self.registry
        )
        self.inference_seconds = Histogram(
            "swishnet_inference_seconds", "Wall time to process one upload or one stream message.", ["source"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """Counts every HTTP request by route and status (``swishnet_requests_total``), as a plain ASGI
    middleware: Starlette's BaseHTTPMiddleware added a task group and memory streams to every request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what an exception that escapes the app becomes

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")  # set by the router in this same scope
            self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()
