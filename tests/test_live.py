"""swishnet serve --mic: live input in the service, published on WS /v1/live (fake sounddevice, real server)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import numpy as np
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.app import create_app
from service.cli import main
from service.config import Settings
from service.live import Broadcaster
from service.metrics import Metrics
from tests.conftest import make_signal
from tests.fake_sounddevice import MIC, install
from tests.live_server import LiveServer

DEVICE_RATE = int(MIC["default_samplerate"])
SPEED = 5.0  # the fake device plays this many times faster than real time
HOP_S = 0.1


def scene() -> np.ndarray:
    return np.concatenate([make_signal("music", 2.0, sample_rate=DEVICE_RATE),
                           make_signal("noise", 2.0, sample_rate=DEVICE_RATE)])


def live_server(classifier, monkeypatch, loop: bool = True, speed: float = SPEED, **settings) -> LiveServer:
    install(monkeypatch, scene(), speed=speed, loop=loop)
    return LiveServer(create_app(Settings(mic_device="default", **settings), classifier=classifier))


def subscribe(live: LiveServer):
    """A /v1/live client; its reader never pauses, so closing needs no wait behind unread events."""
    return connect(live.ws(path="/v1/live"), max_queue=None)


def receive(ws, count: int) -> list[dict]:
    return [json.loads(ws.recv(timeout=10)) for _ in range(count)]


def label_times(events: list[dict]) -> list[float]:
    return [e["time"] for e in events if e["type"] == "label"]


def assert_contiguous(times: list[float]) -> None:
    """Every hop is there: nothing was skipped."""
    assert np.allclose(np.diff(times), HOP_S), times


def metric(live: LiveServer, name: str) -> float:
    for line in httpx.get(f"{live.http}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_two_subscribers_get_the_same_events(classifier, monkeypatch):
    with live_server(classifier, monkeypatch) as live, subscribe(live) as first, \
            subscribe(live) as second:
        a, b = receive(first, 60), receive(second, 40)
    assert {e["label"] for e in a if e["type"] == "segment"} >= {"music", "noise"}
    assert all(set(e) == {"type", "time", "label", "probs"} for e in a if e["type"] == "label")
    assert_contiguous(label_times(a))
    assert_contiguous(label_times(b))
    start = a.index(b[0])  # the first joined earlier: it got everything the second got, in the same order
    assert a[start:start + len(b)] == b


def stalled_subscriber(port: int) -> socket.socket:
    """A /v1/live client that sends the opening handshake and then never reads; its receive buffer is tiny."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /v1/live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return sock


def test_a_stalled_subscriber_skips_events_and_holds_up_no_one(classifier, monkeypatch):
    server = live_server(classifier, monkeypatch, speed=20.0, live_queue_events=128)
    server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # inherited by connections: fills in seconds
    with server as live, stalled_subscriber(live.port), subscribe(live) as fast:
        events = []
        deadline = time.monotonic() + 30
        while metric(live, "swishnet_live_events_dropped_total") == 0:
            assert time.monotonic() < deadline, "the stalled subscriber's queue never dropped an event"
            events += receive(fast, 50)
        events += receive(fast, 50)
        assert metric(live, "swishnet_live_subscribers") == 2
    assert_contiguous(label_times(events))


def test_subscribers_leaving_mid_stream_do_not_disturb_capture(classifier, monkeypatch):
    with live_server(classifier, monkeypatch) as live, subscribe(live) as staying:
        with subscribe(live) as polite:
            receive(polite, 5)
        with subscribe(live) as vanishing:
            receive(vanishing, 5)
            vanishing.socket.shutdown(socket.SHUT_RDWR)  # no close handshake: it just vanishes
        events = receive(staying, 80)
        deadline = time.monotonic() + 10
        while metric(live, "swishnet_live_subscribers") != 1:
            assert time.monotonic() < deadline, "departed subscribers were never released"
            time.sleep(0.1)
        events += receive(staying, 10)
    assert_contiguous(label_times(events))


def test_device_end_closes_subscribers_with_1011(classifier, monkeypatch):
    with live_server(classifier, monkeypatch, loop=False) as live, subscribe(live) as ws:
        events = []
        with pytest.raises(ConnectionClosed):
            while True:
                events.append(json.loads(ws.recv(timeout=10)))
        assert ws.close_code == 1011
    assert events[-1] == {"type": "error", "message": "the input device Fake Mic (48000 Hz) stopped"}
    assert events[-2]["type"] == "segment" and events[-2]["label"] == "noise"


@pytest.mark.parametrize("mic_device,send,code,message", [
    (None, None, 1008, "live input is off"),
    ("default", "hello", 1003, "read-only"),
])
def test_live_refusals(classifier, monkeypatch, mic_device, send, code, message):
    install(monkeypatch, scene(), speed=SPEED, loop=True)
    app = create_app(Settings(mic_device=mic_device), classifier=classifier)
    with LiveServer(app) as live, subscribe(live) as ws:
        if send:
            ws.send(send)
        replies = []
        with pytest.raises(ConnectionClosed):
            while True:
                replies.append(json.loads(ws.recv(timeout=10)))
        assert ws.close_code == code
    assert message in replies[-1]["message"]


def test_subscribers_beyond_max_streams_are_refused_with_1013(classifier, monkeypatch):
    with live_server(classifier, monkeypatch, max_streams=1) as live, subscribe(live) as first:
        receive(first, 1)
        with subscribe(live) as second, pytest.raises(ConnectionClosed):
            reply = json.loads(second.recv(timeout=10))
            second.recv(timeout=10)
        assert second.close_code == 1013 and "at capacity (1 subscribers)" in reply["message"]
        receive(first, 3)  # the first subscriber is not disturbed


def test_broadcaster_drops_the_oldest_events_of_a_full_queue():
    async def scenario() -> tuple[list, list, Metrics]:
        metrics = Metrics()
        broadcaster = Broadcaster(queue_events=3, metrics=metrics)
        slow, fast = broadcaster.subscribe(), broadcaster.subscribe()
        received = []
        for n in range(10):
            broadcaster.publish([{"n": n}])
            received.append(fast.get_nowait())  # the fast one keeps up
        broadcaster.unsubscribe(fast)
        return [slow.get_nowait() for _ in range(slow.qsize())], received, metrics

    slow, fast, metrics = asyncio.run(scenario())
    assert [json.loads(text)["n"] for text in slow] == [7, 8, 9]
    assert [json.loads(text)["n"] for text in fast] == list(range(10))
    assert metrics.live_events_dropped._value.get() == 7
    assert metrics.live_subscribers._value.get() == 1


def isolate_serve_environment(monkeypatch) -> None:
    """serve passes its options through os.environ: make sure they are removed afterwards."""
    for name in ("HOST", "PORT", "MODEL_PATH", "WORKERS", "MIC_DEVICE"):
        monkeypatch.setenv(f"SWISHNET_{name}", "")
        monkeypatch.delenv(f"SWISHNET_{name}")


def test_serve_mic_reaches_the_app_settings(monkeypatch, tiny_model_path):
    isolate_serve_environment(monkeypatch)
    install(monkeypatch, np.zeros(1))
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: served.append(Settings()))
    assert main(["serve", "--model", str(tiny_model_path), "--mic"]) == 0
    assert main(["serve", "--model", str(tiny_model_path), "--mic", "fake"]) == 0
    assert [settings.mic_device for settings in served] == ["default", "fake"]


@pytest.mark.parametrize("options,message", [
    (["--mic", "--workers", "2"], "needs a single worker"),
    (["--mic", "5"], "no usable input device 5"),
])
def test_serve_mic_refusals(monkeypatch, tiny_model_path, capsys, options, message):
    isolate_serve_environment(monkeypatch)
    install(monkeypatch, np.zeros(1))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("served despite a bad option"))
    assert main(["serve", "--model", str(tiny_model_path), *options]) == 2
    assert message in capsys.readouterr().err
