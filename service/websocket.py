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
control message is expected), 1007 invalid audio, 1008 bad parameters or idle
timeout, 1009 message too big, 1011 internal error, 1013 server at capacity.
The close frame's reason repeats the message, cut to 123 bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, WebSocket
from pydantic import Field, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.audio import AudioError
from service.batching import BatchScheduler
from service.pcm import ENCODINGS
from service.schemas import StreamOptions, describe_errors
from service.stream import AudioStream, Event

log = logging.getLogger(__name__)
router = APIRouter()
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code


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

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


async def _send_events(ws: WebSocket, events: list) -> None:
    for event in events:
        await ws.send_text(json.dumps(event.to_dict()))


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


async def _serve(ws: WebSocket, params: StreamParams, stream: AudioStream) -> None:
    settings, metrics = ws.app.state.settings, ws.app.state.metrics
    bytes_per_second = params.sample_rate * params.channels * ENCODINGS[params.encoding].itemsize
    throttle = _Throttle(settings.max_stream_speed, settings.stream_burst_s)
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), timeout=settings.idle_timeout_s)
        except asyncio.TimeoutError:
            raise StreamClosed(1008, f"idle for {settings.idle_timeout_s:g} s; closing") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
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
            await _send_events(ws, events)
            await throttle.account(len(data) / bytes_per_second)
        elif _is_end(text):
            try:
                events = await _flush(stream, ws.app.state.scheduler)
            except AudioError as error:
                raise StreamClosed(1007, str(error)) from None
            await _send_events(ws, events)
            raise StreamClosed(1000)
        else:
            raise StreamClosed(1003, 'text messages must be the JSON control message {"type": "end"}; '
                                     "send audio as binary messages")


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
    try:
        return json.loads(text or "").get("type") == "end"
    except (ValueError, AttributeError):
        return False


@router.websocket("/v1/stream")
async def stream_endpoint(ws: WebSocket) -> None:
    """Live classification of one audio stream (protocol in this module's docstring and the README)."""
    state = ws.app.state
    await ws.accept()
    outcome = "completed"
    state.streams_open += 1
    state.metrics.streams_open.inc()
    try:
        if state.streams_open > state.settings.max_streams:
            raise StreamClosed(1013, f"server is at capacity ({state.settings.max_streams} streams); retry later")
        params, stream = _parse_params(ws)
        await _serve(ws, params, stream)
    except StreamClosed as closed:
        if closed.message:
            outcome = f"error_{closed.code}"
            log.info("stream closed with %d: %s", closed.code, closed.message)
        await close_stream(ws, closed)
    except WebSocketDisconnect:
        outcome = "client_gone"
        log.info("client left mid-stream")
    except Exception:  # a bug or a model failure: this stream ends, the server and the other streams go on
        outcome = "error_1011"
        log.exception("stream failed")
        await close_stream(ws, StreamClosed(1011, "internal error: the server could not process this stream "
                                                  "(details are in its log); please report it"))
    finally:
        state.streams_open -= 1
        state.metrics.streams_open.dec()
        state.metrics.streams_total.labels(outcome).inc()


def close_reason(message: str | None) -> str | None:
    """The message cut to what a close frame holds (123 bytes of UTF-8), for clients that read only the close."""
    if not message:
        return None
    return message.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


async def close_stream(ws: WebSocket, closed: StreamClosed) -> None:
    """Send the error message, if any, then close with the code; quietly if the client has already gone."""
    if ws.client_state != WebSocketState.CONNECTED:
        return
    try:
        if closed.message:
            await ws.send_text(json.dumps({"type": "error", "message": closed.message}))
        await ws.close(closed.code, close_reason(closed.message))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left while we were saying goodbye
