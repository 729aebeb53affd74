"""Soak: `swishnet serve` with its defaults under a long stream, churn, uploads, floods and bad input, then
SIGTERM with a client that does not read (an opt-in section: ``python -m bench soak``).

One server process on a free loopback port, started as users start it. While
one stream sends ``long_s`` of audio (at the service's speed limit, 50x real
time after its burst, so an hour takes about 72 s) and must get every label
in order, the other phases run one after another:

- churn: ``cycles`` open/send/close cycles ending five ways in turn: the end
  message, a close frame without it, TCP FIN without a close frame, TCP RST,
  and a close in the middle of a frame;
- uploads: ``clips`` 2-s clips (20 at a time) and ``long_uploads`` 60-s files
  (4 at a time); then a burst of ``burst`` clips at once, past the upload
  queue: answered 200 or 503 with Retry-After, never queued for ever, while
  /healthz keeps answering;
- floods: ``max_streams + flood`` WebSockets opened at once: those past the
  limit get 1013;
- bad input, each beside the long stream: the twelve cases of BAD_INPUTS.

Before and after (once idle), the server's resident memory (RSS), its peak
(VmHWM: the high-water mark), open files and threads are read from /proc.
Last, SIGTERM while one client reads and one never does: the reader must get
1012, the process must exit 0 before its deadline without cancelling
anything, and its log must hold no traceback and no 1011.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bench.common import Options, num, rounded, table
from service.features import SAMPLE_RATE
from tests.conftest import make_signal

START_TIMEOUT_S = 60.0
GUARD_S = 120.0  # the longest any one operation may take before the soak records it as failed
HOP_S = 0.1  # the service's default hop: one label per 0.1 s of audio


@dataclass(frozen=True)
class SoakSize:
    long_s: float
    cycles: int
    clips: int
    long_uploads: int
    burst: int
    max_streams: int
    flood: int


FULL = SoakSize(long_s=3600.0, cycles=1000, clips=200, long_uploads=20, burst=500, max_streams=256, flood=20)
QUICK = SoakSize(long_s=60.0, cycles=25, clips=10, long_uploads=2, burst=40, max_streams=16, flood=4)


class Server:
    """`swishnet serve` in its own process on a free loopback port."""

    def __init__(self, model: Path | None, env: dict[str, str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = tempfile.TemporaryFile()
        command = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())", "serve",
                   "--port", str(self.port)] + (["--model", str(model)] if model else [])
        self.process = subprocess.Popen(command, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {self.log_text()[-2000:]}")
            time.sleep(0.1)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream{query}"

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.http}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def vitals(self) -> dict:
        """RSS, peak RSS (VmHWM), threads and open files of the server process, from /proc."""
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{self.process.pid}/status").read_text().splitlines() if ":" in line)
        return {"rss_mib": rounded(int(status["VmRSS"].split()[0]) / 1024),
                "peak_rss_mib": rounded(int(status["VmHWM"].split()[0]) / 1024),
                "threads": int(status["Threads"]),
                "fds": len(os.listdir(f"/proc/{self.process.pid}/fd"))}

    def metrics(self) -> dict[str, float]:
        values = {}
        for line in httpx.get(f"{self.http}/metrics", timeout=GUARD_S).text.splitlines():
            if line.startswith("swishnet_") and not line.startswith("#") and "_created" not in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def pcm(kind: str, seconds: float, seed: int = 0) -> bytes:
    return (np.clip(make_signal(kind, seconds, seed), -1, 1) * 32767).astype("<i2").tobytes()


def wav(kind: str, seconds: float, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, make_signal(kind, seconds, seed), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def read_until_closed(ws) -> list[dict]:
    events = []
    try:
        while True:
            events.append(json.loads(ws.recv(timeout=GUARD_S)))
    except ConnectionClosed:
        pass
    return events


def long_stream(server: Server, seconds: float, result: dict) -> None:
    """One stream of ``seconds`` of audio (music and noise, no silence) in 100-ms messages."""
    piece = pcm("music", 5.0) + pcm("noise", 5.0)
    message = int(SAMPLE_RATE * HOP_S) * 2
    started = time.monotonic()
    labels: list[float] = []
    with connect(server.ws(), max_size=None) as ws:
        def receive() -> None:
            for event in read_until_closed(ws):
                if event["type"] == "label":
                    labels.append(event["time"])
                elif event["type"] == "error":
                    result["error"] = event["message"]

        reader = threading.Thread(target=receive)
        reader.start()
        sent = 0
        while sent < seconds * SAMPLE_RATE * 2:
            offset = sent % len(piece)
            ws.send(piece[offset:offset + message])
            sent += message
        ws.send(json.dumps({"type": "end"}))
        reader.join(GUARD_S)
        result["close_code"] = ws.close_code
    steps = np.diff(labels)
    result.update(seconds=rounded(seconds), labels=len(labels),
                  expected_labels=int(round(seconds / HOP_S)) - 9,  # the first decision comes after 1 s
                  in_order=bool(len(labels) and np.allclose(steps, HOP_S)), wall_s=rounded(time.monotonic() - started))


def churn(server: Server, cycles: int) -> dict:
    """Open, send 0.5 s, and leave in one of five ways, ``cycles`` times."""
    audio = pcm("noise", 0.5)
    endings = ("end message", "close frame", "fin", "rst", "mid-frame")
    counts = dict.fromkeys(endings, 0)
    for cycle in range(cycles):
        ending = endings[cycle % len(endings)]
        ws = connect(server.ws()).__enter__()  # entered by hand: most endings must skip the close handshake
        ws.send(audio)
        if ending == "end message":
            ws.send(json.dumps({"type": "end"}))
            read_until_closed(ws)
        elif ending == "close frame":
            ws.close()
        else:
            sock = ws.socket
            if ending == "mid-frame":  # a binary frame header promising 1000 masked bytes, then 10 of them
                sock.sendall(struct.pack("!BBH", 0x82, 0xFE, 1000) + bytes(4) + bytes(10))
            if ending == "rst":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        counts[ending] += 1
    return counts


def uploads(server: Server, count: int, seconds: float, at_once: int) -> dict:
    body = wav("music", seconds)

    def one(_: int) -> tuple[int, float]:
        started = time.monotonic()
        status = httpx.post(f"{server.http}/v1/classify", content=body, timeout=GUARD_S).status_code
        return status, time.monotonic() - started

    with ThreadPoolExecutor(at_once) as pool:
        results = list(pool.map(one, range(count)))
    return _answers(results)


HEALTH_PROBE = """
import sys, time, urllib.request
while True:
    started = time.monotonic()
    urllib.request.urlopen(sys.argv[1], timeout=60).read()
    print(time.monotonic() - started, flush=True)
    time.sleep(0.05)
"""


def burst(server: Server, count: int) -> dict:
    """``count`` 2-s clips at once, and /healthz meanwhile from a process of its own (the burst's client
    threads would otherwise slow the probe down in this one)."""
    body = wav("music", 2.0)
    probe = subprocess.Popen([sys.executable, "-c", HEALTH_PROBE, f"{server.http}/healthz"],
                             stdout=subprocess.PIPE, text=True)

    def one(_: int) -> tuple[int, float, str | None]:
        started = time.monotonic()
        response = httpx.post(f"{server.http}/v1/classify", content=body, timeout=GUARD_S)
        return response.status_code, time.monotonic() - started, response.headers.get("retry-after")

    try:
        with ThreadPoolExecutor(min(count, 256)) as pool:
            results = list(pool.map(one, range(count)))
    finally:
        probe.terminate()
        health = [float(line) for line in probe.communicate(timeout=GUARD_S)[0].split()]
    answers = _answers([(status, took) for status, took, _ in results])
    answers["retry_after_on_every_503"] = all(retry for status, _, retry in results if status == 503)
    answers["healthz_p50_ms"] = rounded(1000 * float(np.percentile(health, 50))) if health else None
    answers["healthz_p99_ms"] = rounded(1000 * float(np.percentile(health, 99))) if health else None
    return answers


def _answers(results: list[tuple[int, float]]) -> dict:
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    served = [took for status, took in results if status == 200]
    return {"statuses": statuses,
            "p50_ms": rounded(1000 * float(np.percentile(served, 50))) if served else None,
            "p99_ms": rounded(1000 * float(np.percentile(served, 99))) if served else None}


def flood(server: Server, count: int) -> dict:
    """``count`` streams open at once; each sends a little audio and waits for a label or a refusal."""
    codes: dict[str, int] = {}
    lock = threading.Lock()
    opened = threading.Barrier(count, timeout=GUARD_S)  # every stream holds on until all have an answer

    def one(index: int) -> None:
        with connect(server.ws()) as ws:
            try:
                ws.send(pcm("noise", 1.2, seed=index))
                first = json.loads(ws.recv(timeout=GUARD_S))
            except ConnectionClosed:  # refused before it could send
                first = {"type": "error"}
            outcome = first["type"]
            try:
                opened.wait()
            except threading.BrokenBarrierError:
                outcome = f"{outcome} (not all open at once)"
            if first["type"] == "error":
                read_until_closed(ws)
                outcome = f"closed {ws.close_code}"
        with lock:
            codes[outcome] = codes.get(outcome, 0) + 1

    with ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(one, index) for index in range(count)]:
            future.result()
    return codes


def _expect(server: Server, query: str, messages: list, code: int) -> bool:
    try:
        with connect(server.ws(query), max_size=None) as ws:
            for message in messages:
                ws.send(message)
            events = read_until_closed(ws)
            return ws.close_code == code and bool(events) and events[-1]["type"] == "error"
    except (ConnectionClosed, OSError):
        return False


def _not_reading(server: Server) -> bool:
    """A client with a tiny receive buffer that sends fast and reads nothing until it has been closed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    with connect(server.ws("?hop=0.01"), sock=sock, max_queue=1) as ws:
        before = server.metrics().get('swishnet_streams_total{outcome="slow_client"}', 0)
        deadline = time.monotonic() + GUARD_S
        while server.metrics().get('swishnet_streams_total{outcome="slow_client"}', 0) == before:
            if time.monotonic() > deadline:
                return False
            try:
                ws.send(pcm("noise", 1.0))
            except ConnectionClosed:
                break
        return True


def _stalled_body(server: Server) -> bool:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n\r\n0123456789")
        sock.settimeout(GUARD_S)
        return sock.recv(4096).startswith(b"HTTP/1.1 408")


def _status(server: Server, body: bytes, expected: int) -> bool:
    return httpx.post(f"{server.http}/v1/classify", content=body, timeout=GUARD_S).status_code == expected


def _ends_normally(server: Server) -> bool:
    """An odd byte count (half a sample, carried over), then the end message: a normal close."""
    with connect(server.ws()) as ws:
        ws.send(pcm("noise", 1.5)[:-1])
        ws.send(json.dumps({"type": "end"}))
        events = read_until_closed(ws)
    return ws.close_code == 1000 and not any(event["type"] == "error" for event in events)


BAD_INPUTS: dict[str, Callable[[Server], bool]] = {
    "odd byte count, then end (1000)": _ends_normally,
    "NaN float32 (1007)": lambda s: _expect(s, "?encoding=pcm_f32le", [np.full(16000, np.nan, "<f4").tobytes()], 1007),
    "text that is not the end message (1003)": lambda s: _expect(s, "", ["hello"], 1003),
    "deeply nested JSON (1003)": lambda s: _expect(s, "", ["[" * 1000 + "]" * 1000], 1003),
    "5 MiB message (1009)": lambda s: _expect(s, "", [bytes(5 * 2**20)], 1009),
    "9 MiB message (1009)": lambda s: _expect(s, "", [bytes(9 * 2**20)], 1009),
    "unknown parameter (1008)": lambda s: _expect(s, "?samplerate=8000", [], 1008),
    "absurd sample rate (1008)": lambda s: _expect(s, "?sample_rate=5", [], 1008),
    "idle client (1008)": lambda s: _expect(s, "", [pcm("noise", 0.2)], 1008),
    "client that does not read (1008)": _not_reading,
    "garbage upload (400)": lambda s: _status(s, b"not audio at all" * 100, 400),
    "stalled upload body (408)": _stalled_body,
}


def bad_inputs(server: Server) -> dict[str, bool]:
    with ThreadPoolExecutor(len(BAD_INPUTS)) as pool:
        futures = {name: pool.submit(check, server) for name, check in BAD_INPUTS.items()}
        return {name: bool(future.result()) for name, future in futures.items()}


def sigterm(server: Server) -> dict:
    """SIGTERM with one reading and one non-reading client open."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    with connect(server.ws()) as reader, connect(server.ws("?hop=0.01"), sock=sock, max_queue=1) as lazy:
        reader.send(pcm("noise", 2.0))
        reader.recv(timeout=GUARD_S)
        for second in range(5):
            lazy.send(pcm("noise", 1.0, seed=second))
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        events = read_until_closed(reader)
        status = server.process.wait(timeout=GUARD_S)
        exit_s = time.monotonic() - started
    log = server.log_text()
    return {"exit_status": status, "exit_s": rounded(exit_s), "reader_close_code": reader.close_code,
            "reader_got_error_event": bool(events) and events[-1]["type"] == "error",
            "deadline_hit": "timeout graceful shutdown exceeded" in log,
            "tracebacks": log.count("Traceback"), "internal_errors_1011": log.count("1011")}


def run(options: Options, model: Path | None) -> dict:
    if not Path("/proc/self/status").exists():
        return {"skipped": "needs Linux /proc to read the server's memory, threads and files"}
    size = QUICK if options.quick else FULL
    env = {"SWISHNET_MAX_STREAMS": str(size.max_streams)}
    if options.quick:  # the idle and stalled-body cases wait for these: the defaults are 30 s and 15 s
        env.update(SWISHNET_IDLE_TIMEOUT_S="3", SWISHNET_UPLOAD_TIMEOUT_S="2")
    server = Server(model, env)
    try:
        time.sleep(1.0)
        before = server.vitals()
        stream: dict = {}
        streamer = threading.Thread(target=long_stream, args=(server, size.long_s, stream))
        streamer.start()
        phases = {"churn": churn(server, size.cycles),
                  "clips": uploads(server, size.clips, 2.0, 20),
                  "long_uploads": uploads(server, size.long_uploads, 60.0, 4),
                  "burst": burst(server, size.burst),
                  "flood": flood(server, size.max_streams + size.flood),
                  "bad_inputs": bad_inputs(server)}
        streamer.join(GUARD_S + size.long_s)
        time.sleep(3.0)  # idle: the last stream and upload have ended and given memory back
        after = server.vitals()
        metrics = server.metrics()
        stopped = sigterm(server)
    finally:
        server.stop()
    outcomes = {name.split('"')[1]: int(value) for name, value in metrics.items()
                if name.startswith("swishnet_streams_total{")}
    return {"size": size.__dict__, "before": before, "after": after, "long_stream": stream, **phases,
            "stream_outcomes": outcomes, "sigterm": stopped}


def render(result: dict) -> str:
    before, after = result["before"], result["after"]
    vitals = table(["", "RSS MiB", "peak RSS MiB", "threads", "open files"],
                   [[name, num(v["rss_mib"]), num(v["peak_rss_mib"]), v["threads"], v["fds"]]
                    for name, v in (("before", before), ("after", after))])
    stream = result["long_stream"]
    lines = [vitals,
             f"long stream: {stream.get('labels')} labels of {stream.get('expected_labels')} expected for "
             f"{num(stream.get('seconds'))} s of audio, in order: {stream.get('in_order')}, closed "
             f"{stream.get('close_code')}, {num(stream.get('wall_s'))} s",
             f"churn: {result['churn']}",
             f"clips: {result['clips']}", f"60-s uploads: {result['long_uploads']}", f"burst: {result['burst']}",
             f"flood: {result['flood']}",
             "bad inputs: " + ", ".join(f"{name}: {'ok' if ok else 'FAILED'}"
                                        for name, ok in result["bad_inputs"].items()),
             f"stream outcomes: {result['stream_outcomes']}",
             f"SIGTERM: {result['sigterm']}"]
    return "\n".join(lines)
