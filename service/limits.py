"""Request budgets at the ASGI layer and the upload queue: what one client may cost the service."""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, TypeVar

from anyio import CapacityLimiter, to_thread
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

T = TypeVar("T")
RETRY_AFTER_S = (1, 60)  # the Retry-After of a refused upload: the queue's expected wait, within these bounds


class UploadLimits:
    """Answer 413 as soon as an HTTP body passes ``max_bytes``, whether or not Content-Length was sent, and 408
    when the next part of a body takes longer than ``timeout_s`` to come (a stalled or trickling client).

    The excess is refused while reading, so an oversized upload never sits in memory. A 408 closes the
    connection: the rest of that body is not waited for.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, limit_text: str | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.limit_text = limit_text or f"{max_bytes} bytes"  # how the 413 states the limit

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"upload too large: the limit is {self.limit_text}")

    def _too_slow(self) -> HTTPException:
        return HTTPException(408, f"the upload stalled: no data for {self.timeout_s:g} s", {"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"").decode("latin-1")
        declared_too_large = declared.isdigit() and int(declared) > self.max_bytes
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if declared_too_large:
                raise self._too_large()
            if complete:  # after the body, receive() waits for a disconnect: no deadline there
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise self._too_slow() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)


class QueueFull(Exception):
    """The upload queue is full; retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class UploadQueue:
    """At most ``jobs`` uploads classified at once, and ``waiting`` more admitted (queued, or their bodies
    still arriving); past that an upload is refused at once, before its body is read.

    The queue is what bounds an upload's wait (about ``waiting / jobs`` times a job's length) and the disk
    and memory spooled bodies take (``(jobs + waiting) * max_upload_bytes`` at worst). Lives in the event loop.
    """

    def __init__(self, jobs: int, waiting: int, metrics: Metrics) -> None:
        self.limiter = CapacityLimiter(jobs)
        self.capacity = jobs + waiting
        self.admitted = 0
        self.metrics = metrics
        self.mean_job_s = 0.05  # a moving average of recent jobs' wall time, for Retry-After

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place in the queue for one upload; QueueFull if there is none."""
        if self.admitted >= self.capacity:
            self.metrics.uploads_refused.inc()
            raise QueueFull(self.retry_after_s())
        self.admitted += 1
        self.metrics.uploads_admitted.set(self.admitted)
        try:
            yield
        finally:
            self.admitted -= 1
            self.metrics.uploads_admitted.set(self.admitted)

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` in a worker thread when one of the ``jobs`` places is free. If the caller is cancelled,
        it returns at once and the thread runs on: the job should notice and stop."""
        started = time.monotonic()
        try:
            return await to_thread.run_sync(job, limiter=self.limiter, abandon_on_cancel=True)
        finally:
            self.mean_job_s += 0.2 * (time.monotonic() - started - self.mean_job_s)

    def retry_after_s(self) -> int:
        jobs = self.limiter.total_tokens
        expected = self.mean_job_s * self.admitted / jobs
        return int(min(max(math.ceil(expected), RETRY_AFTER_S[0]), RETRY_AFTER_S[1]))
