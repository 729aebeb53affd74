"""Microphone input: capture an input device block by block and classify it, here or on a server.

The PortAudio callback only copies each block into a queue; the engine runs in
the thread that reads the queue (the main thread of ``swishnet mic``, the
capture thread of ``swishnet serve --mic``), so a slow model never stalls the
audio driver. sounddevice is imported lazily, here only: the runtime works
without the ``mic`` extra and without PortAudio.
"""

from __future__ import annotations

import json
import math
import queue
import signal
import threading
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from service.stream import AudioStream, StreamConfig

if TYPE_CHECKING:  # onnxruntime is imported only where a model is loaded
    from service.inference import Classifier

BLOCK_S = 0.05  # capture block: a responsive display, few callbacks
QUEUE_S = 10.0  # audio the queue holds; beyond it the engine has fallen behind and blocks are dropped
POLL_S = 0.1  # how often a waiting reader checks whether it should stop
END_TIMEOUT_S = 10.0  # how long to wait for a server's last events after the end message
STREAM_PATH = "/v1/stream"
INSTALL_PORTAUDIO = "Debian/Ubuntu: sudo apt-get install libportaudio2; macOS: brew install portaudio"

Events = list[dict]


class MicError(RuntimeError):
    """A microphone or server that cannot be used; the message says what to do."""


def import_sounddevice() -> ModuleType:
    """The sounddevice module, or MicError saying what to install."""
    try:
        import sounddevice
    except ImportError:
        from service.cli import install_command

        raise MicError("the microphone needs the mic extra (the sounddevice package); install it with: "
                       f"{install_command('mic')}") from None
    except OSError as error:  # sounddevice raises it at import when the PortAudio library is missing
        raise MicError(f"PortAudio is not installed ({error}); install it ({INSTALL_PORTAUDIO})") from None
    return sounddevice


def parse_device(text: str | None) -> int | str | None:
    """A device as a user names it: an index, a name substring, or "default" / empty / None for the default."""
    if text is None or text.strip() in ("", "default"):
        return None
    return int(text) if text.strip().isdigit() else text


def describe_devices(sd: ModuleType) -> str:
    """The input devices, one per line, the default marked with '>'."""
    default_input = sd.default.device[0]
    lines = [
        f"{'>' if info['index'] == default_input else ' '} {info['index']:>3} {info['name']} "
        f"({info['max_input_channels']} in, {info['default_samplerate']:g} Hz)"
        for info in sd.query_devices()
        if info["max_input_channels"] > 0
    ]
    return "\n".join(lines) if lines else "  (no input devices)"


def input_device(sd: ModuleType, device: int | str | None) -> dict:
    """The device's info (sounddevice's dict), or MicError listing the input devices there are."""
    listing = describe_devices(sd)
    if not any(info["max_input_channels"] > 0 for info in sd.query_devices()):
        raise MicError("no audio input device found; connect a microphone (and check that this user may use it). "
                       f"Devices:\n{listing}")
    try:
        info = dict(sd.query_devices(device, kind="input"))
    except (ValueError, sd.PortAudioError) as error:
        raise MicError(f"no usable input device {device!r} ({error}); pick one with --device N:\n{listing}") from None
    if info["max_input_channels"] < 1:
        raise MicError(f"device {device!r} ({info['name']}) has no input channels; "
                       f"pick one with --device N:\n{listing}")
    return info


class Capture:
    """Mono float32 blocks from an input device, at the device's default sample rate.

    Use as a context manager; ``blocks()`` yields what the device captured
    until the device stops or ``stop`` is set.
    """

    def __init__(self, device: int | str | None = None, block_s: float = BLOCK_S) -> None:
        self._sd = import_sounddevice()
        self.device = input_device(self._sd, device)
        self.sample_rate = int(self.device["default_samplerate"])
        self.block_samples = max(1, round(self.sample_rate * block_s))
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=math.ceil(QUEUE_S / block_s))
        self.dropped_blocks = 0
        self._stream = None

    @property
    def name(self) -> str:
        return f"{self.device['name']} ({self.sample_rate} Hz)"

    def __enter__(self) -> Capture:
        try:
            self._stream = self._sd.InputStream(
                device=self.device["index"], channels=1, samplerate=self.sample_rate,
                blocksize=self.block_samples, dtype="float32", callback=self._callback,
            )
            self._stream.start()
        except self._sd.PortAudioError as error:
            raise MicError(f"cannot open input device {self.name}: {error}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.stop()
        self._stream.close()

    def _callback(self, indata: np.ndarray, frames: int, time: object, status: object) -> None:
        try:
            self._queue.put_nowait(indata[:, 0].copy())  # PortAudio reuses its buffer
        except queue.Full:
            self.dropped_blocks += 1

    def blocks(self, stop: threading.Event | None = None, *, drain: bool = False) -> Iterator[np.ndarray]:
        """Captured blocks until the device stops (the rest of the queue included) or ``stop`` is set; with
        ``drain``, the blocks already queued when ``stop`` is seen are still yielded (the audio captured
        before it)."""
        while stop is None or not stop.is_set():
            try:
                yield self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if not self._stream.active:
                    break
        if stop is not None and stop.is_set():
            for _ in range(self._queue.qsize() if drain else 0):  # bounded: blocks captured later are left
                yield self._queue.get_nowait()
            return
        while True:  # the device stopped: the callback may have queued a last block before it did
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return


class Engine:
    """Turns captured blocks into events (the JSON form of service.events); ``with`` releases what it holds."""

    def push(self, block: np.ndarray) -> Events:
        raise NotImplementedError

    def finish(self) -> Events:
        """The events that end the stream (the last segment)."""
        raise NotImplementedError

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LocalEngine(Engine):
    """Classifies in this process with an AudioStream."""

    def __init__(self, classifier: Classifier, config: StreamConfig, sample_rate: int) -> None:
        self._stream = AudioStream(classifier, config, sample_rate=sample_rate)

    def push(self, block: np.ndarray) -> Events:
        return [event.to_dict() for event in self._stream.push(block)]

    def finish(self) -> Events:
        return [event.to_dict() for event in self._stream.flush()]


def stream_url(server: str, sample_rate: int, config: StreamConfig) -> str:
    """The /v1/stream URL for float32 mono audio at ``sample_rate``; ``server`` is ws://HOST:PORT (or http://)."""
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise MicError(f"the server must be given as ws://HOST:PORT (or wss://), got {server!r}")
    path = parts.path if parts.path.strip("/") else STREAM_PATH
    query = urlencode({"sample_rate": sample_rate, "encoding": "pcm_f32le", "window": config.window_s,
                       "hop": config.hop_s, "min_segment": config.min_segment_s, "min_pause": config.min_pause_s,
                       "silence_threshold": config.silence_threshold_db})
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class RemoteEngine(Engine):
    """Streams blocks to a running service's WS /v1/stream and returns the events it sends back."""

    def __init__(self, server: str, sample_rate: int, config: StreamConfig) -> None:
        self.url = stream_url(server, sample_rate, config)
        try:
            self._ws = connect(self.url, open_timeout=10)
        except (OSError, WebSocketException) as error:
            raise MicError(f"cannot connect to {self.url} ({error}); is 'swishnet serve' running there?") from None

    def __enter__(self) -> RemoteEngine:
        self._ws.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ws.__exit__(*exc)  # closes the connection

    def push(self, block: np.ndarray) -> Events:
        try:
            self._ws.send(block.astype("<f4").tobytes())
        except ConnectionClosed:
            self._received(0)  # the server's error message, if it sent one, says why
            raise MicError(f"the server closed the stream ({self._ws.close_code})") from None
        return self._received(0)

    def finish(self) -> Events:
        """Ask the server to flush; its last events arrive before it closes the connection."""
        self._ws.send(json.dumps({"type": "end"}))
        events = self._received(END_TIMEOUT_S, until_closed=True)
        self._ws.close()
        return events

    def _received(self, timeout_s: float, until_closed: bool = False) -> Events:
        """The events the server has sent (waiting up to ``timeout_s`` for each); MicError on an error event."""
        events = []
        while True:
            try:
                event = json.loads(self._ws.recv(timeout=timeout_s))
            except (TimeoutError, ConnectionClosed):
                if until_closed and self._ws.close_code is None:
                    raise MicError(f"the server sent no end of stream within {END_TIMEOUT_S:g} s") from None
                return events
            if event["type"] == "error":
                raise MicError(f"the server refused the stream: {event['message']}")
            events.append(event)


def run_capture(capture: Capture, engine: Engine, on_events: Callable[[Events], None],
                stop: threading.Event | None = None, *, drain: bool = False) -> None:
    """Feed captured blocks to the engine until the device stops, ``stop`` is set or Ctrl-C; then flush it.

    With ``drain``, the blocks captured before ``stop`` was set are classified too (see Capture.blocks).
    """
    try:
        for block in capture.blocks(stop, drain=drain):
            events = engine.push(block)
            if events:
                on_events(events)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a user ends a live session: close the last segment below
    on_events(engine.finish())


@contextmanager
def ctrl_c_sets(stop: threading.Event) -> Iterator[threading.Event]:
    """Inside, the first Ctrl-C (SIGINT) sets ``stop`` instead of raising KeyboardInterrupt; a second one raises.

    A KeyboardInterrupt lands wherever the main thread is: half-way through an engine's push (a stream
    left half-updated, a WebSocket frame half-sent) or between taking the capture queue's lock and the
    ``with`` that would release it, after which the audio callback waits for that lock for ever and
    stopping the device hangs. A flag checked between blocks has none of these. Applies in the main
    thread when Ctrl-C raises KeyboardInterrupt there (Python's default); a SIGINT the process was
    started with ignored (a background job of a shell) or a handler someone else installed is kept.
    """
    if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield stop
        return

    def first_ctrl_c(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts the flush

    signal.signal(signal.SIGINT, first_ctrl_c)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
