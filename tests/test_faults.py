"""Reliability under faults and load (issue 23): slow consumers, the shutdown deadline, hostile JSON, big
messages, load shedding. Each test runs a real uvicorn on 127.0.0.1 and real clients; waits are bounded by
deadlines that only guard against hanging, and nothing is asserted on wall-clock time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.client import connect

from service import server as server_module
from service.app import create_app
from service.config import Settings
from service.server import SHUTTING_DOWN
from tests.conftest import make_signal
from tests.live_server import LiveServer
from tests.test_api import LIMITS, encode, scene, stream_file

GUARD_S = 60  # the longest any wait below may take before the test fails: a guard against hanging only


def noise_pcm(seconds: float, seed: int = 0) -> bytes:
    return (make_signal("noise", seconds, seed) * 32767).astype("<i2").tobytes()


def metric(live: LiveServer, sample: str) -> float:
    for line in httpx.get(f"{live.http}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def small_buffered_socket(port: int) -> socket.socket:
    """A client socket whose receive buffer is tiny, so that not reading stops the server's sends soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def read_all(ws) -> list[dict]:
    events = []
    with pytest.raises(ConnectionClosed):
        while True:
            events.append(json.loads(ws.recv(timeout=GUARD_S)))
    return events


def slow_server(classifier, **settings) -> LiveServer:
    live = LiveServer(create_app(Settings(**{**LIMITS, "idle_timeout_s": 30.0, **settings}), classifier=classifier))
    live.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # inherited by connections: fills at once
    return live


def test_a_client_that_does_not_read_is_closed_with_1008_and_others_go_on(classifier, monkeypatch):
    monkeypatch.setattr(server_module, "CLOSE_GRACE_S", 3600.0)  # this client reads its last words, late
    with slow_server(classifier, max_pending_events=32) as live:
        pcm = (scene(seed=4) * 32767).astype("<i2").tobytes()
        expected, code = stream_file(live.ws(), pcm, [])
        assert code == 1000
        with connect(live.ws("?hop=0.01"), sock=small_buffered_socket(live.port), max_queue=1) as lazy, \
                ThreadPoolExecutor(1) as pool:
            healthy = pool.submit(stream_file, live.ws(), pcm, [16000] * 8)
            for second in range(40):  # 4000 label events, about 400 KB: more than the buffers and the queue
                lazy.send(noise_pcm(1.0, seed=second))
                if metric(live, 'swishnet_streams_total{outcome="slow_client"}'):
                    break
            wait_until(lambda: metric(live, 'swishnet_streams_total{outcome="slow_client"}') == 1,
                       "the non-reading client was closed as slow")
            assert healthy.result(timeout=GUARD_S) == (expected, 1000)  # the other stream never noticed
            events = read_all(lazy)  # it reads at last: its events, then the explanation and the close
        assert lazy.close_code == 1008 and "not reading its events" in lazy.close_reason
        assert events[-1]["type"] == "error" and "behind full buffers" in events[-1]["message"]
        assert all(e["type"] in ("label", "segment") for e in events[:-1])
        assert metric(live, 'swishnet_streams_total{outcome="error_1011"}') == 0


def test_a_client_that_never_reads_is_cut_off_and_released(classifier):
    with slow_server(classifier, max_pending_events=32) as live:
        sock = small_buffered_socket(live.port)
        with connect(live.ws("?hop=0.01"), sock=sock, max_queue=1) as lazy:
            for second in range(40):
                lazy.send(noise_pcm(1.0, seed=second))
                if metric(live, 'swishnet_streams_total{outcome="slow_client"}'):
                    break
            # it never reads: CLOSE_GRACE_S after its close the server drops the connection, buffers and all
            wait_until(lambda: not live.server.server_state.connections, "the connection was released")
            assert metric(live, "swishnet_streams_open") == 0
            assert httpx.get(f"{live.http}/healthz").json()["streams_open"] == 0


def frames(sock: socket.socket) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames a server sends, after its handshake answer, until EOF."""
    data = b""
    sock.settimeout(GUARD_S)
    while chunk := sock.recv(65536):
        data += chunk
    data = data.split(b"\r\n\r\n", 1)[1]
    parsed = []
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        start = 2
        if length == 126:
            length, start = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, start = struct.unpack("!Q", data[2:10])[0], 10
        parsed.append((opcode, data[start:start + length]))
        data = data[start + length:]
    return parsed


def handshake(sock: socket.socket, path: str = "/v1/stream") -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())


def test_a_client_that_does_not_answer_pings_gets_1008(classifier, monkeypatch):
    monkeypatch.setattr(server_module, "PING_INTERVAL_S", 0.2)
    monkeypatch.setattr(server_module, "PING_TIMEOUT_S", 0.2)
    with LiveServer(create_app(Settings(**{**LIMITS, "idle_timeout_s": 30.0}), classifier=classifier)) as live:
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            handshake(sock)  # then it never reads, so it never answers a ping
            received = frames(sock)
        close = [payload for opcode, payload in received if opcode == 0x8]
        assert close and struct.unpack("!H", close[0][:2])[0] == 1008 and b"not reading" in close[0]
        wait_until(lambda: metric(live, 'swishnet_streams_total{outcome="slow_client"}') == 1, "counted as slow")


@pytest.mark.parametrize("text", ["[" * 1000 + "]" * 1000, '{"type": "end"' + " " * 300 + "}",
                                  "[" * 100 + "]" * 100, '{"type": ' * 60 + "1" + "}" * 60, "null", "[]"])
def test_hostile_or_odd_control_text_gets_1003(classifier, text):
    with LiveServer(create_app(Settings(**LIMITS), classifier=classifier)) as live:
        with connect(live.ws()) as ws:
            ws.send(text)
            events = read_all(ws)
        assert ws.close_code == 1003 and events == [{"type": "error", "message": events[0]["message"]}]
        assert '{"type": "end"}' in events[0]["message"]
        assert metric(live, 'swishnet_streams_total{outcome="error_1011"}') == 0


@pytest.mark.parametrize("size", [150_000, 300_000, 9 * 2**20])
def test_messages_over_either_limit_get_the_error_event_and_1009(classifier, size):
    """max_message_bytes is the application's limit (150 kB: its own error); uvicorn refuses messages over
    twice that as they arrive (300 kB, and 9 MiB: the client is still sending when the refusal comes): the
    error event and the close reach the client there too."""
    with LiveServer(create_app(Settings(**{**LIMITS, "max_message_bytes": 100_000}), classifier=classifier)) as live:
        with connect(live.ws(), max_size=None) as ws:
            ws.send(bytes(size))
            events = read_all(ws)
        assert ws.close_code == 1009
        assert events[-1]["type"] == "error" and "100000" in events[-1]["message"]


def test_uploads_past_the_queue_get_503_with_retry_after(classifier, monkeypatch):
    from service import app as app_module

    release, real = threading.Event(), app_module.classify_file

    def held(*args, **kwargs):
        assert release.wait(GUARD_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "classify_file", held)
    clip = encode(make_signal("music", 2.0), 16_000, "FLAC")
    app = create_app(Settings(**{**LIMITS, "max_rest_jobs": 1, "max_rest_queue": 2}), classifier=classifier)
    with LiveServer(app) as live, ThreadPoolExecutor(3) as pool:
        held_uploads = [pool.submit(httpx.post, f"{live.http}/v1/classify", content=clip, timeout=GUARD_S)
                        for _ in range(3)]  # one runs, two wait: the queue is full
        wait_until(lambda: app.state.uploads.admitted == 3, "three uploads in hand")
        refused = httpx.post(f"{live.http}/v1/classify", content=clip, timeout=GUARD_S)
        assert refused.status_code == 503 and "busy" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert httpx.get(f"{live.http}/healthz", timeout=GUARD_S).status_code == 200  # probes still answered
        assert metric(live, "swishnet_uploads_refused_total") == 1
        assert metric(live, "swishnet_uploads_admitted") == 3
        release.set()
        assert [u.result().status_code for u in held_uploads] == [200] * 3
        assert metric(live, "swishnet_uploads_admitted") == 0


def test_sigterm_with_a_non_reading_client_ends_cleanly(tiny_model_path, tmp_path):
    """`swishnet serve` in its own process: SIGTERM while a client reads and another never does. The reader
    gets the error event and 1012; the process exits 0 without its deadline having to cancel anything."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SWISHNET_SHUTDOWN_TIMEOUT_S": "20", "SWISHNET_MAX_PENDING_EVENTS": "100000",
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())", "serve",
               "--port", str(port), "--model", str(tiny_model_path)]
    log = open(tmp_path / "serve.log", "w+")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _healthy(port), "the server started")
        url = f"ws://127.0.0.1:{port}/v1/stream"
        with connect(url) as reader, connect(url + "?hop=0.01", sock=small_buffered_socket(port),
                                             max_queue=1) as lazy:
            reader.send(noise_pcm(2.0))
            assert json.loads(reader.recv(timeout=GUARD_S))["type"] == "label"
            for second in range(20):  # 2000 events it will never read
                lazy.send(noise_pcm(1.0, seed=second))
            process.send_signal(signal.SIGTERM)
            events = read_all(reader)
            assert process.wait(timeout=GUARD_S) == 0
        assert events[-1] == {"type": "error", "message": SHUTTING_DOWN}
        assert reader.close_code == 1012 and reader.close_reason == SHUTTING_DOWN
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log.seek(0)
    output = log.read()
    assert "Traceback" not in output and "ERROR" not in output, output
    assert "timeout graceful shutdown exceeded" not in output  # the cut-off ended it, not the deadline


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


class FakeTransport:
    """What the WebSocket protocol writes, without a socket."""

    def __init__(self) -> None:
        self.written, self.closed, self.aborted = b"", False, False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.parametrize("client_sent_since_the_ping,reading_paused,closed", [
    (False, False, True), (True, False, False), (False, True, False)])
def test_keepalive_counts_arriving_bytes_as_life(client_sent_since_the_ping, reading_paused, closed):
    """A pong may wait behind audio the client sends faster than the service reads it: the ping's deadline
    closes only a connection silent in both directions (the soak's 1-hour stream was closed otherwise)."""
    async def scenario() -> FakeTransport:
        config = uvicorn.Config(lambda scope, receive, send: None, **server_module.uvicorn_options(Settings()))
        config.load()
        protocol = server_module.ServiceWebSocketProtocol(config, ServerState(), {}, asyncio.get_running_loop())
        protocol.transport = transport = FakeTransport()
        protocol.handshake_complete, protocol.conn.state = True, State.OPEN
        protocol.ping_sent_at = 10.0
        protocol.last_received = 11.0 if client_sent_since_the_ping else 9.0
        protocol.read_paused = reading_paused
        protocol.keepalive_timeout()
        assert (protocol.ping_timer is None) == closed  # alive: the next ping is scheduled instead
        protocol.stop_keepalive()
        if protocol.close_timer is not None:
            protocol.close_timer.cancel()
        return transport

    transport = asyncio.run(scenario())
    assert (b"not reading" in transport.written) == closed
