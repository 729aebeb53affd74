"""uvicorn as the service runs it: one set of options for `swishnet serve`, the bench and the tests, and a
WebSocket protocol that ends connections the way the README says.

uvicorn's own WebSocket protocol (websockets-sansio) is kept, with four changes:

- Shutdown: each open WebSocket gets the JSON error event ``SHUTTING_DOWN`` and close 1012 with that
  reason (uvicorn sends a bare 1012), and a client that does not read it within ``CLOSE_GRACE_S`` is cut
  off, so one non-reading client cannot hold the shutdown until its deadline.
- Keepalive: a client that neither answers a ping (``PING_INTERVAL_S``, ``PING_TIMEOUT_S``) nor sends
  anything meanwhile is not reading: it gets close 1008 with the reason ``NOT_READING`` (uvicorn: 1011,
  which says "server error"), and the application hears of it as a disconnect with that code. Bytes that
  arrive count as life: a client sending audio faster than the service takes it has its pong queued
  behind that audio (uvicorn closed such a client, a soak's 1-hour stream among them).
- Closing a client that reads too slowly: the application's last words (the error event and the close,
  sent with ``URGENT``) go behind what the client has not read yet instead of waiting for room that may
  never come, and the connection is cut off if it is still stuck ``CLOSE_GRACE_S`` later.
- Messages over uvicorn's size limit (``WS_SIZE_FACTOR`` x max_message_bytes) get the error event before
  the 1009, as messages over max_message_bytes do from the application, and the connection reads on (and
  discards) until the client has had the close: uvicorn closed at once, and the rest of the message, still
  arriving, turned that into a reset the client saw instead of the close.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode

from service.config import Settings

log = logging.getLogger(__name__)

PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
CLOSE_GRACE_S = 2.0  # how long a closed connection may take to read its last frames before it is cut off
WS_SIZE_FACTOR = 2  # uvicorn buffers messages up to this many times max_message_bytes: messages just over the
                    # limit get the application's explanation; larger ones are refused by uvicorn as they arrive
URGENT = "swishnet.urgent"  # key of a websocket.send/close message that must not wait for the client to read
SHUTTING_DOWN = "the service is shutting down; reconnect in a moment"
NOT_READING = f"the client did not answer a ping in {PING_TIMEOUT_S:g} s: it is not reading"

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover  (uvicorn before 0.35: its default protocol, without the changes)
    WebSocketsSansIOProtocol = None


def error_event(message: str) -> bytes:
    return json.dumps({"type": "error", "message": message}).encode()


if WebSocketsSansIOProtocol is not None:

    class ServiceWebSocketProtocol(WebSocketsSansIOProtocol):
        """uvicorn's WebSocket protocol with the changes of this module's docstring."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.write_paused = False
            self.parser_failed = False
            self.last_received = 0.0  # loop time of the last bytes from the client

        def pause_writing(self) -> None:
            self.write_paused = True
            super().pause_writing()

        def resume_writing(self) -> None:
            self.write_paused = False
            super().resume_writing()

        def _open(self) -> bool:
            return (self.handshake_complete and self.initial_response is None and not self.close_sent
                    and not self.disconnected and not self.transport.is_closing())

        def _last_words(self, code: int, reason: str, event: str | None) -> None:
            """Write an error event and a close frame now, whatever the client has left unread; tell the
            application; cut the connection off if it has not closed CLOSE_GRACE_S later."""
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            if event is not None:
                self.conn.send_text(error_event(event))
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            if self.read_paused:  # read the client's close reply (its other messages are discarded)
                self.read_paused = False
                self.transport.resume_reading()
            self._cut_off_later()

        def _cut_off_later(self) -> None:
            if self.close_timer is not None:
                self.close_timer.cancel()
            self.close_timer = self.loop.call_later(CLOSE_GRACE_S, self._cut_off)

        def _cut_off(self) -> None:
            self.close_timer = None
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # it does not read: close() would wait for it for ever
            else:
                self.transport.close()

        def shutdown(self) -> None:
            if self._open():
                self._last_words(1012, SHUTTING_DOWN, SHUTTING_DOWN)
            else:
                super().shutdown()
                if not self.disconnected and self.transport.get_write_buffer_size():
                    self._cut_off_later()

        def data_received(self, data: bytes) -> None:
            self.last_received = self.loop.time()
            super().data_received(data)

        def keepalive_timeout(self) -> None:
            """No pong in time. A client whose bytes still arrive (or wait for us: reading is paused while
            the application is behind) is alive: its pong is queued behind the audio it sends faster than
            the service reads it, so the next ping is scheduled instead. Silence in both directions is what
            closes with 1008; a client that sends but never reads is the Outbox's to close."""
            self.pong_timer = None
            self.pending_ping_payload = None
            if not self._open():
                return
            if self.read_paused or self.last_received > self.ping_sent_at:
                self.schedule_ping()
                return
            log.info("closing a WebSocket whose client does not read (no answer to a ping)")
            self._last_words(1008, NOT_READING, None)

        def handle_parser_exception(self) -> None:
            """A frame websockets refused (too big, malformed): the error event for one too big, the close
            websockets chose, then reading goes on (websockets discards the rest) so that a client still
            sending its message reads our close before the connection ends, CLOSE_GRACE_S later at most.
            uvicorn closed at once, and the client's unread bytes turned that close into a reset."""
            if self.parser_failed:
                return  # more of the refused message: websockets' parser discards it
            self.parser_failed = True
            if isinstance(self.conn.parser_exc, PayloadTooBig) and self.handshake_complete:
                limit = self.config.ws_max_size // WS_SIZE_FACTOR
                event = error_event(f"message too big: the limit is {limit} bytes")
                self.transport.write(Frame(Opcode.TEXT, event).serialize(mask=False))
            close = self.conn.close_sent
            code, reason = (close.code, close.reason) if close is not None else (1002, "")
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.stop_keepalive()
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self._cut_off_later()

        async def send(self, message: Any) -> None:
            if message.get(URGENT) and self.write_paused and self._open():
                if message["type"] == "websocket.close":
                    self._last_words(message.get("code", 1000), message.get("reason") or "", None)
                    return
                if message["type"] == "websocket.send" and message.get("text") is not None:
                    self.conn.send_text(message["text"].encode())
                    self.transport.write(b"".join(self.conn.data_to_send()))
                    return
            await super().send(message)

    WS_PROTOCOL: Any = ServiceWebSocketProtocol
else:  # pragma: no cover
    WS_PROTOCOL = "auto"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of uvicorn.Config / uvicorn.run for these settings (without app, host and port)."""
    return dict(
        ws=WS_PROTOCOL,
        # uvicorn buffers a whole WebSocket message before the app sees it: cap that buffer near our own
        # limit, leaving room for messages just over it to get the app's 1009 with an explanation.
        ws_max_size=WS_SIZE_FACTOR * settings.max_message_bytes,
        # permessage-deflate is declined unless asked for: events are small JSON and audio compresses poorly,
        # so it cost both ends CPU and, on a busy 2-core machine, multiplied label latency (bench service).
        ws_per_message_deflate=settings.ws_deflate,
        ws_ping_interval=PING_INTERVAL_S,
        ws_ping_timeout=PING_TIMEOUT_S,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,  # no "server: uvicorn": what runs here is nobody else's business
    )
