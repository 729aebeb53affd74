"""WS /v1/stream: binary frames are audio, text frames are JSON control, JSON events go out.

Protocol (also in the README): connect with query parameters `sample_rate`,
`encoding` (pcm_s16le | pcm_f32le), `channels`, `events` (labels | changes |
segments) and the analysis knobs of /v1/classify; send audio as binary
messages of any size; receive `{"type": "label", ...}` every hop (events=labels,
the default) or when the label changes (events=changes), and
`{"type": "segment", ...}` when a segment closes; send `{"type": "end"}` to
flush the last segment, after which the server closes with 1000.

The frames of every stream of the process are scored together: each message's
new frames go to the app's BatchScheduler (service.batching), which runs one
onnxruntime call for all the streams that are due, in a worker thread. Errors arrive as `{"type": "error", "message"}`
followed by a close: 1003 unsupported data (text where audio or a known
control message is expected), 1007 invalid audio, 1008 bad parameters, idle
timeout or a client that does not read its events, 1009 message too big, 1011
internal error, 1012 the service is stopping, 1013 server at capacity. The
close frame's reason repeats the message, cut to 123 bytes.

Events go out through the stream's Outbox: one task sends them while the
stream goes on reading audio, so a client that reads slowly holds up neither
its own stream's input nor anyone else. A client whose connection's buffers
are full with settings.max_pending_events more events waiting behind them is
not keeping up, and is closed with 1008 (outcome slow_client).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from dataclasses import replace
from typing import Literal

from anyio import to_thread
from fastapi import APIRouter, WebSocket
from pydantic import Field, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service import memory
from service.audio import AudioError
from service.batching import BatchScheduler
from service.pcm import ENCODINGS
from service.schemas import StreamOptions, describe_errors
from service.security import PROTOCOL
from service.server import NOT_READING, URGENT
from service.stream import AudioStream, Event

log = logging.getLogger(__name__)
router = APIRouter()
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code
MAX_CONTROL_BYTES = 256  # a text message longer than this is not the control message: refused unparsed
CLOSE_TIMEOUT_S = 5.0  # saying goodbye never takes longer than this
NOT_CONTROL = 'text messages must be the JSON control message {"type": "end"}; send audio as binary messages'


class StreamParams(StreamOptions):
    """Query parameters of /v1/stream; the engine checks the ranges."""

    sample_rate: int = Field(16_000, description="Sample rate of the audio sent, in Hz (8000 to 192000).")
    encoding: str = Field("pcm_s16le", description="Sample format: pcm_s16le or pcm_f32le.")
    channels: int = Field(1, description="Interleaved channels; they are averaged.")
    events: Literal["labels", "changes", "segments"] = Field(
        "labels", description="labels: a label event every hop; changes: only when the label changes; "
        "segments: segment events only (they come in every mode).")


class StreamClosed(Exception):
    """Ends a stream session with a close code and an optional error message for the client."""

    def __init__(self, code: int, message: str | None = None, outcome: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome or (f"error_{code}" if message else "completed")


class Outbox:
    """A stream's outgoing events: a queue that one task sends from.

    ``put`` never waits. A client is too slow when its connection's buffers are full (the sender waits for
    room) and ``limit`` more events wait behind them: it is closed (StreamClosed 1008, outcome
    slow_client). While the sender is not stuck, the queue may briefly hold more, as one big message's
    events arrive at once. A send that fails (the client left) ends the task; the stream hears of the
    departure from its next receive.
    """

    def __init__(self, ws: WebSocket, limit: int) -> None:
        self.ws = ws
        self.limit = limit
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.sending = False  # the sender is inside a send: with uvicorn, only a full buffer keeps it there
        self.task = asyncio.create_task(self._send_all())

    def put(self, events: list[Event]) -> None:
        if self.sending and self.queue.qsize() >= self.limit:
            raise StreamClosed(1008, f"the client is not reading its events ({self.queue.qsize()} are waiting "
                                     "behind full buffers); closing", outcome="slow_client")
        for event in events:
            self.queue.put_nowait(json.dumps(event.to_dict()))

    async def _send_all(self) -> None:
        while True:
            text = await self.queue.get()
            self.sending = True
            await self.ws.send_text(text)
            self.sending = False
            self.queue.task_done()

    async def flush(self, timeout_s: float) -> None:
        """Wait until every queued event is sent, the sender has failed, or ``timeout_s`` has passed."""
        emptied = asyncio.create_task(self.queue.join())
        await asyncio.wait({emptied, self.task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        emptied.cancel()

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001  (a failed send: the client left)
            pass


class _Throttle:
    """Slows a sender that goes faster than `speed` x real time after a burst allowance."""

    def __init__(self, speed: float, burst_s: float) -> None:
        self.speed, self.burst_s = speed, burst_s
        self.started = time.monotonic()
        self.audio_s = 0.0

    async def account(self, audio_s: float) -> None:
        self.audio_s += audio_s
        ahead_s = (self.audio_s - self.burst_s) / self.speed - (time.monotonic() - self.started)
        if ahead_s > 0:
            await asyncio.sleep(ahead_s)


def _parse_params(ws: WebSocket) -> tuple[StreamParams, AudioStream]:
    try:
        params = StreamParams(**ws.query_params)
        config = replace(params.to_config(), events=params.events)
        stream = AudioStream(ws.app.state.classifier, config, sample_rate=params.sample_rate,
                             channels=params.channels, encoding=params.encoding)
    except ValidationError as error:
        raise StreamClosed(1008, f"bad stream parameters: {describe_errors(error.errors())}") from None
    except (ValueError, AudioError) as error:
        raise StreamClosed(1008, f"bad stream parameters: {error}") from None
    return params, stream


async def _serve(ws: WebSocket, params: StreamParams, stream: AudioStream, outbox: Outbox) -> None:
    settings, metrics = ws.app.state.settings, ws.app.state.metrics
    bytes_per_second = params.sample_rate * params.channels * ENCODINGS[params.encoding].itemsize
    throttle = _Throttle(settings.max_stream_speed, settings.stream_burst_s)
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), timeout=settings.idle_timeout_s)
        except asyncio.TimeoutError:
            raise StreamClosed(1008, f"idle for {settings.idle_timeout_s:g} s; closing") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if len(data) > settings.max_message_bytes:
                raise StreamClosed(1009, f"message of {len(data)} bytes; the limit is {settings.max_message_bytes}")
            started = time.perf_counter()
            try:
                events = await _push(stream, ws.app.state.scheduler, data)
            except AudioError as error:
                raise StreamClosed(1007, str(error)) from None
            metrics.inference_seconds.labels("stream").observe(time.perf_counter() - started)
            metrics.audio_seconds.labels("stream").inc(len(data) / bytes_per_second)
            outbox.put(events)
            await throttle.account(len(data) / bytes_per_second)
        elif _is_end(text):
            try:
                events = await _flush(stream, ws.app.state.scheduler)
            except AudioError as error:
                raise StreamClosed(1007, str(error)) from None
            outbox.put(events)
            await outbox.flush(settings.idle_timeout_s)
            raise StreamClosed(1000)
        else:
            raise StreamClosed(1003, NOT_CONTROL)


async def _push(stream: AudioStream, scheduler: BatchScheduler, data: bytes) -> list[Event]:
    """AudioStream.push with the frames scored in the process's batch: features and decisions here, in
    the event loop (one vectorised call each per block), the network in the scheduler's thread."""
    events: list[Event] = []
    for block in stream.blocks(data):
        events += stream.complete(await scheduler.score(stream.feed(block)))
    return events


async def _flush(stream: AudioStream, scheduler: BatchScheduler) -> list[Event]:
    """AudioStream.flush through the batch."""
    events = stream.complete(await scheduler.score(stream.feed(stream.finish_input())))
    return events + stream.end()


def _is_end(text: str | None) -> bool:
    """Whether a text message is the end message. Text longer than MAX_CONTROL_BYTES is not parsed at all,
    which also bounds the nesting depth json.loads could meet (deep nesting raises RecursionError)."""
    if not text or len(text) > MAX_CONTROL_BYTES:
        return False
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(message, dict) and message.get("type") == "end"


def disconnect_outcome(disconnect: WebSocketDisconnect) -> str:
    """How a stream ended whose connection closed under it (see service.metrics.STREAM_OUTCOMES)."""
    if disconnect.code == 1012:
        return "shutdown"
    if disconnect.code == 1008 and disconnect.reason == NOT_READING:
        return "slow_client"
    if disconnect.code in (1000, 1001):  # the client closed the stream: its way of ending it
        return "completed"
    return "client_gone"


async def accept(ws: WebSocket) -> None:
    """Complete the handshake, choosing the subprotocol a browser offers beside its key (security.PROTOCOL):
    browsers refuse a connection that offered subprotocols and got none."""
    offered = ws.scope.get("subprotocols") or ()
    await ws.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)


@router.websocket("/v1/stream")
async def stream_endpoint(ws: WebSocket) -> None:
    """Live classification of one audio stream (protocol in this module's docstring and the README)."""
    state = ws.app.state
    await accept(ws)
    outcome = "completed"
    state.streams_open += 1
    state.metrics.streams_open.inc()
    outbox = Outbox(ws, state.settings.max_pending_events)
    try:
        if state.streams_open > state.settings.max_streams:
            raise StreamClosed(1013, f"server is at capacity ({state.settings.max_streams} streams); retry later")
        params, stream = _parse_params(ws)
        await _serve(ws, params, stream, outbox)
    except StreamClosed as closed:
        outcome = closed.outcome
        if closed.message:
            log.info("stream closed with %d: %s", closed.code, closed.message)
        await outbox.stop()
        await close_stream(ws, closed)
    except WebSocketDisconnect as disconnect:
        outcome = disconnect_outcome(disconnect)
        log.info("stream ended by its connection (%d%s)", disconnect.code,
                 f": {disconnect.reason}" if disconnect.reason else "")
    except Exception:  # a bug or a model failure: this stream ends, the server and the other streams go on
        outcome = "error_1011"
        log.exception("stream failed")
        await outbox.stop()
        await close_stream(ws, StreamClosed(1011, "internal error: the server could not process this stream "
                                                  "(details are in its log); please report it"))
    finally:
        await outbox.stop()
        state.streams_open -= 1
        state.metrics.streams_open.dec()
        state.metrics.streams_total.labels(outcome).inc()
        if state.streams_open == 0:  # the last stream: give the memory the streams took back
            await to_thread.run_sync(memory.trim)


def close_reason(message: str | None) -> str | None:
    """The message cut to what a close frame holds (123 bytes of UTF-8), for clients that read only the close."""
    if not message:
        return None
    return message.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


async def close_stream(ws: WebSocket, closed: StreamClosed) -> None:
    """Send the error message, if any, then close with the code; quietly if the client has already gone.

    Both go out as URGENT (service.server): behind what a slow client has not read yet, without waiting
    for it to read; and the whole goodbye takes at most CLOSE_TIMEOUT_S."""
    if ws.client_state != WebSocketState.CONNECTED or ws.application_state != WebSocketState.CONNECTED:
        return

    async def goodbye() -> None:
        if closed.message:
            await ws.send({"type": "websocket.send", "text": json.dumps({"type": "error", "message": closed.message}),
                           URGENT: True})
        await ws.send({"type": "websocket.close", "code": closed.code, "reason": close_reason(closed.message) or "",
                       URGENT: True})

    try:
        await asyncio.wait_for(goodbye(), CLOSE_TIMEOUT_S)
    except (WebSocketDisconnect, RuntimeError, OSError, asyncio.TimeoutError):
        pass  # the client left while we were saying goodbye (OSError: uvicorn's ClientDisconnected)
