"""Live input inside the service (``swishnet serve --mic``): one capture, any number of subscribers.

A thread captures the input device and runs the engine (service.mic); each
batch of events is handed to the event loop, where the Broadcaster copies it
into one bounded queue per subscriber of the read-only ``WS /v1/live``. A
subscriber that reads too slowly loses its oldest events rather than holding
up the capture or the other subscribers.

Subscribers get the events of the one endless stream that began when the
service started: times are seconds since then. When the device stops, they
get an error message and close code 1011. When the service stops, every
WebSocket gets an error message and 1012 before the lifespan ends
(service.server); 1001 is what a server that leaves them open until then
would send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator

from fastapi import APIRouter, WebSocket

from service.mic import Capture, Events, LocalEngine, parse_device, run_capture
from service.stream import StreamConfig
from service.websocket import StreamClosed, accept, close_stream

if TYPE_CHECKING:
    from service.config import Settings
    from service.inference import Classifier
    from service.metrics import Metrics

log = logging.getLogger(__name__)
router = APIRouter()

Subscription = asyncio.Queue  # JSON event texts, then the StreamClosed that ends the broadcast
SHUTTING_DOWN = StreamClosed(1001)
LIVE_OFF = StreamClosed(1008, "live input is off: start the service with 'swishnet serve --mic [DEVICE]'")
READ_ONLY = StreamClosed(1003, "WS /v1/live is read-only; send audio to WS /v1/stream")


class Broadcaster:
    """Fans events out to subscribers through bounded queues that drop their oldest entry when full.

    Lives in the event loop: call its methods from the loop's thread only.
    """

    def __init__(self, queue_events: int, metrics: Metrics) -> None:
        self.queue_events = queue_events
        self.metrics = metrics
        self.ended: StreamClosed | None = None
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        queue: Subscription = asyncio.Queue(maxsize=self.queue_events)
        if self.ended is not None:
            queue.put_nowait(self.ended)
        else:
            self._subscribers.add(queue)
            self.metrics.live_subscribers.set(len(self._subscribers))
        return queue

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def unsubscribe(self, queue: Subscription) -> None:
        self._subscribers.discard(queue)
        self.metrics.live_subscribers.set(len(self._subscribers))

    def publish(self, events: Events) -> None:
        texts = [json.dumps(event) for event in events]
        for queue in self._subscribers:
            for text in texts:
                self._offer(queue, text)

    def end(self, closing: StreamClosed) -> None:
        """No more events: each subscriber gets ``closing`` after what it has not read yet."""
        self.ended = closing
        for queue in self._subscribers:
            self._offer(queue, closing)

    def _offer(self, queue: Subscription, item: str | StreamClosed) -> None:
        if queue.full():
            queue.get_nowait()
            self.metrics.live_events_dropped.inc()
        queue.put_nowait(item)


@asynccontextmanager
async def live_input(settings: Settings, classifier: Classifier, metrics: Metrics) -> AsyncIterator[Broadcaster | None]:
    """Capture ``settings.mic_device`` while the service runs; None when live input is off.

    The device is opened before the service accepts connections, so a device
    that cannot be used stops the start-up with service.mic.MicError.
    """
    if settings.mic_device is None:
        yield None
        return
    broadcaster = Broadcaster(settings.live_queue_events, metrics)
    capture = Capture(parse_device(settings.mic_device))
    stop = threading.Event()
    with LocalEngine(classifier, StreamConfig(), capture.sample_rate) as engine, capture:
        thread = threading.Thread(target=_broadcast, name="live-capture", daemon=True,
                                  args=(capture, engine, broadcaster, asyncio.get_running_loop(), stop))
        thread.start()
        log.info("live input from %s on WS /v1/live", capture.name)
        try:
            yield broadcaster
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)


def _broadcast(capture: Capture, engine: LocalEngine, broadcaster: Broadcaster, loop: asyncio.AbstractEventLoop,
               stop: threading.Event) -> None:
    """The capture thread: run the engine and hand its events to the loop; always end the broadcast."""
    closing = StreamClosed(1011, "the live input failed; see the service's log")
    try:
        run_capture(capture, engine, lambda events: loop.call_soon_threadsafe(broadcaster.publish, events), stop)
        closing = SHUTTING_DOWN if stop.is_set() else StreamClosed(1011, f"the input device {capture.name} stopped")
    finally:
        loop.call_soon_threadsafe(broadcaster.end, closing)


@router.websocket("/v1/live")
async def live_endpoint(ws: WebSocket) -> None:
    """The events of the service's own input device (swishnet serve --mic), as WS /v1/stream sends them."""
    await accept(ws)
    broadcaster: Broadcaster | None = ws.app.state.live
    if broadcaster is None:
        await close_stream(ws, LIVE_OFF)
        return
    limit = ws.app.state.settings.max_streams
    if broadcaster.subscribers >= limit:
        await close_stream(ws, StreamClosed(1013, f"WS /v1/live is at capacity ({limit} subscribers); retry later"))
        return
    queue = broadcaster.subscribe()
    try:
        closing = await _forward(ws, queue)
    finally:
        broadcaster.unsubscribe(queue)
    if closing is not None:
        await close_stream(ws, closing)


async def _forward(ws: WebSocket, queue: Subscription) -> StreamClosed | None:
    """Send queued events until the broadcast ends (its reason), the client writes (READ_ONLY) or leaves (None)."""
    sender = asyncio.create_task(_send_queued(ws, queue))
    receiver = asyncio.create_task(ws.receive())
    done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    sender.cancel()
    receiver.cancel()
    if receiver in done:
        return None if receiver.result()["type"] == "websocket.disconnect" else READ_ONLY
    if sender.exception() is not None:
        log.info("live subscriber left: %r", sender.exception())
        return None
    return sender.result()


async def _send_queued(ws: WebSocket, queue: Subscription) -> StreamClosed:
    while not isinstance(item := await queue.get(), StreamClosed):
        await ws.send_text(item)
    return item
