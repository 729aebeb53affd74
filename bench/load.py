"""Service: latency, CPU and memory under N concurrent real-time WebSocket streams.

The server is a separate process (``python -m uvicorn service.app:create_app
--factory``, as ``swishnet serve`` runs it, one worker) on a free 127.0.0.1
port, so its CPU time and memory are read apart from the client's (Linux
/proc). The client opens N streams, one coroutine each, then every stream
sends 100 ms of 16 kHz pcm_s16le every 100 ms of wall time, on a fixed
schedule, the N streams' phases spread evenly over the 100 ms. Label latency
is the wall time a label event arrives minus the wall time the client sent
the chunk that completed the audio it covers (its ``time`` field).

Steps of N run one after another until a step's p99 passes 100 ms, or the
last step; every step is bounded in time, and the server is stopped at the
end whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

try:  # the client shares the machine with the server: the leaner event loop when there is one
    from uvloop import run as run_client
except ImportError:  # uvicorn[standard] brings uvloop, except on Windows and PyPy
    from asyncio import run as run_client

from bench.common import Options, num, rounded, show, skipped, summary, table
from service.features import SAMPLE_RATE
from service.stream import StreamConfig
from tests.conftest import make_signal

CHUNK_S = 0.1
CHUNK_SAMPLES = round(CHUNK_S * SAMPLE_RATE)
LATENCY_LIMIT_MS = 100.0
LATE_S = 0.05  # a send this far behind its schedule means the client could not keep up
START_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 15.0
STEP_GRACE_S = 30.0  # a step may overrun its audio by the close timeout and this much, no more
CONNECT_CONCURRENCY = 50
SAMPLE_EVERY_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerProcess:
    """The service in its own process on a free loopback port; stopped on exit whatever happens."""

    def __init__(self, model: Path, max_streams: int) -> None:
        self.model, self.max_streams = model, max_streams
        self.port = _free_port()
        self._log: IO[bytes] = tempfile.TemporaryFile()
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        env = dict(os.environ, SWISHNET_MODEL_PATH=str(self.model), SWISHNET_MAX_STREAMS=str(self.max_streams))
        command = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
                   "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self._process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_healthy()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream?sample_rate={SAMPLE_RATE}&encoding=pcm_s16le"

    def _wait_until_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self._process.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the server did not answer /healthz within {START_TIMEOUT_S:g} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ProcessProbe:
    """CPU seconds and memory of another process, from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self._stat = Path(f"/proc/{pid}/stat")
        self._status = Path(f"/proc/{pid}/status")

    def cpu_s(self) -> float:
        fields = self._stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def memory_mib(self) -> dict[str, float]:
        """Resident set now (VmRSS) and its peak so far (VmHWM)."""
        values = dict(line.split(":", 1) for line in self._status.read_text().splitlines() if ":" in line)
        return {key: int(values[name].split()[0]) / 1024 for key, name in (("rss", "VmRSS"), ("peak", "VmHWM"))}


@dataclass
class StreamLog:
    """What one client stream saw."""

    sent_at: list[float] = field(default_factory=list)  # time.monotonic() at the send of chunk k
    latencies_s: list[float] = field(default_factory=list)
    late_sends: int = 0
    error: str | None = None


def stream_audio() -> bytes:
    """12 s of speech, music and noise as pcm_s16le, no silence: the model scores nearly every hop."""
    audio = np.concatenate([make_signal(kind, 4.0, seed=2) for kind in ("speech", "music", "noise")])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def chunks_for(audio: bytes, index: int, count: int) -> Iterator[bytes]:
    """``count`` chunks of 100 ms from the looped audio, stream ``index`` starting at its own offset."""
    size = CHUNK_SAMPLES * 2
    total = len(audio) // size
    for k in range(count):
        start = ((index * 7 + k) % total) * size
        yield audio[start : start + size]


def chunk_of(label_time_s: float) -> int:
    """Index of the chunk whose sending completed the audio up to ``label_time_s``."""
    return math.ceil(round(label_time_s * SAMPLE_RATE) / CHUNK_SAMPLES) - 1


async def _receive(ws: ClientConnection, log: StreamLog) -> None:
    async for message in ws:  # until the server closes the stream
        arrived = time.monotonic()
        event = json.loads(message)
        if event["type"] == "label":
            log.latencies_s.append(arrived - log.sent_at[chunk_of(event["time"])])
        elif event["type"] == "error":
            log.error = event["message"]


async def _send(ws: ClientConnection, chunks: Iterator[bytes], start: float, log: StreamLog) -> None:
    for k, chunk in enumerate(chunks):
        delay = start + k * CHUNK_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -LATE_S:
            log.late_sends += 1
        log.sent_at.append(time.monotonic())
        await ws.send(chunk)
    await ws.send(json.dumps({"type": "end"}))


async def _stream(ws: ClientConnection | str, chunks: Iterator[bytes], start: float, log: StreamLog) -> None:
    if isinstance(ws, str):
        log.error = ws
        return
    receiver = asyncio.create_task(_receive(ws, log))
    try:
        await _send(ws, chunks, start, log)
        await asyncio.wait_for(receiver, CLOSE_TIMEOUT_S)
    except (WebSocketException, OSError, asyncio.TimeoutError) as error:
        log.error = log.error or f"{type(error).__name__}: {error}"
    finally:
        receiver.cancel()
        await ws.close()


async def _open(url: str, n: int, deflate: bool) -> list[ClientConnection | str]:
    """N connections; a failed one is replaced by its error message."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    compression = "deflate" if deflate else None

    async def one() -> ClientConnection | str:
        async with gate:
            try:
                return await connect(url, max_size=None, open_timeout=CONNECT_TIMEOUT_S, compression=compression)
            except (WebSocketException, OSError, asyncio.TimeoutError) as error:
                return f"connect failed: {type(error).__name__}: {error}"

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _sample(probe: ProcessProbe, cpu: list[float], rss: list[float]) -> None:
    """Server CPU % and RSS once a second, until cancelled."""
    before, then = probe.cpu_s(), time.monotonic()
    while True:
        await asyncio.sleep(SAMPLE_EVERY_S)
        now_cpu, now = probe.cpu_s(), time.monotonic()
        cpu.append(100 * (now_cpu - before) / (now - then))
        rss.append(probe.memory_mib()["rss"])
        before, then = now_cpu, now


async def _run_streams(sockets: list[ClientConnection | str], logs: list[StreamLog], audio: bytes,
                       step_s: float) -> bool:
    """Run every stream to its end, phases spread over one chunk; False if the step overran its time limit."""
    n, count = len(sockets), round(step_s / CHUNK_S)
    start = time.monotonic() + 0.2
    streams = asyncio.gather(*(_stream(ws, chunks_for(audio, i, count), start + CHUNK_S * i / n, log)
                               for i, (ws, log) in enumerate(zip(sockets, logs))))
    try:
        await asyncio.wait_for(streams, step_s + CLOSE_TIMEOUT_S + STEP_GRACE_S)
    except asyncio.TimeoutError:
        return False
    return True


async def _step(server: ServerProcess, probe: ProcessProbe, audio: bytes, n: int, options: Options) -> dict:
    step_s = options.step_s
    sockets = await _open(server.url(), n, options.deflate)
    logs = [StreamLog() for _ in range(n)]
    cpu: list[float] = []
    rss: list[float] = []
    sampler = asyncio.create_task(_sample(probe, cpu, rss))
    client_cpu_before, started = _cpu_s(), time.monotonic()
    finished = await _run_streams(sockets, logs, audio, step_s)
    sampler.cancel()
    result = _step_result(n, step_s, logs, cpu, rss, (_cpu_s() - client_cpu_before) / (time.monotonic() - started))
    if not finished:
        result["errors"].append(f"the step overran its limit of {step_s + CLOSE_TIMEOUT_S + STEP_GRACE_S:g} s")
    result["ws_extensions"] = next(
        (ws.response.headers.get("Sec-WebSocket-Extensions") for ws in sockets if not isinstance(ws, str)), None
    )
    return result


def _cpu_s() -> float:
    """CPU seconds of this (the client) process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _expected_labels(step_s: float) -> int:
    config = StreamConfig()
    return int((step_s - config.first_decision_s) / config.hop_s + 1e-9) + 1


def _percentiles(latencies_ms: np.ndarray) -> dict[str, float | None]:
    if not latencies_ms.size:
        return dict.fromkeys(("p50", "p90", "p99", "max"))
    p50, p90, p99, top = np.percentile(latencies_ms, [50, 90, 99, 100])
    return {"p50": rounded(p50), "p90": rounded(p90), "p99": rounded(p99), "max": rounded(top)}


def _p99_ok(step: dict) -> bool:
    p99 = step["latency_ms"]["p99"]
    return p99 is not None and p99 <= LATENCY_LIMIT_MS


def _within_limit(step: dict) -> bool:
    return _p99_ok(step) and not step["errors"]


def _step_result(n: int, step_s: float, logs: list[StreamLog], cpu: list[float], rss: list[float],
                 client_cpu_share: float) -> dict:
    latencies_ms = 1000 * np.array([value for log in logs for value in log.latencies_s])
    steady_rss = rss[len(rss) // 2 :] or rss  # the second half: every stream open and running
    return {
        "streams": n,
        "latency_ms": _percentiles(latencies_ms),
        "labels_received": int(latencies_ms.size),
        "labels_expected": n * _expected_labels(step_s),
        "late_sends": sum(log.late_sends for log in logs),
        "errors": [log.error for log in logs if log.error][:5],
        "server_cpu_percent": summary(cpu) if cpu else None,
        "client_cpu_percent": rounded(100 * client_cpu_share),
        "server_rss_mib": rounded(float(np.median(steady_rss))) if steady_rss else None,
    }


async def _load(server: ServerProcess, options: Options) -> list[dict]:
    """Run the steps until one fails the latency limit or has errors."""
    probe = ProcessProbe(server.pid)
    audio = stream_audio()
    steps = []
    for n in options.streams:
        steps.append(await _step(server, probe, audio, n, options))
        if not _within_limit(steps[-1]):
            break
    return steps


def _per_stream_kib(idle_rss_mib: float, steps: list[dict]) -> dict:
    """Memory per open stream: the slope of steady RSS over N (fixed costs such as threads cancel out), and
    the growth over idle divided by N at the largest step."""
    measured = [(step["streams"], step["server_rss_mib"]) for step in steps if step["server_rss_mib"] is not None]
    if not measured:
        return {"slope_kib": None, "growth_over_idle_kib_at_largest": None}
    ns, rss = np.array(measured, dtype=float).T
    slope = np.polyfit(ns, rss, 1)[0] * 1024 if len(set(ns)) > 1 else None
    return {
        "slope_kib": rounded(slope) if slope is not None else None,
        "growth_over_idle_kib_at_largest": rounded((rss[-1] - idle_rss_mib) * 1024 / ns[-1]),
    }


def run(options: Options, model: Path | None) -> tuple[dict, dict]:
    """The load result and the memory result."""
    if model is None:
        reason = "no model to serve (pass --model PATH, or --tiny)"
        return skipped(reason), skipped(reason)
    if not Path("/proc/self/stat").exists():
        reason = "needs Linux /proc to read the server's CPU and memory"
        return skipped(reason), skipped(reason)
    with ServerProcess(model, max_streams=max(options.streams) + 10) as server:
        idle = ProcessProbe(server.pid).memory_mib()
        steps = run_client(_load(server, options))
        after = ProcessProbe(server.pid).memory_mib()
    within = [step["streams"] for step in steps if _within_limit(step)]
    over = [step["streams"] for step in steps if not _p99_ok(step)]
    load = {
        "model": model.stem,
        "chunk_s": CHUNK_S,
        "step_s": options.step_s,
        "deflate_offered": options.deflate,
        "client_event_loop": run_client.__module__.split(".")[0],
        "latency_limit_ms": LATENCY_LIMIT_MS,
        "steps": steps,
        "p99_passes_limit_at_streams": min(over, default=None),
        "most_streams_within_limit": max(within, default=None),
    }
    memory = {
        "idle_rss_mib": rounded(idle["rss"]),
        "idle_peak_rss_mib": rounded(idle["peak"]),
        "peak_rss_mib_under_load": rounded(after["peak"]),
        "per_stream": _per_stream_kib(idle["rss"], steps),
    }
    return load, memory


def render(load: dict) -> str:
    rows = [
        (step["streams"], num(step["latency_ms"]["p50"]), num(step["latency_ms"]["p99"]), num(step["latency_ms"]["max"]),
         f"{step['labels_received']}/{step['labels_expected']}", show(step["server_cpu_percent"]),
         num(step["client_cpu_percent"]), num(step["server_rss_mib"]), step["late_sends"], len(step["errors"]))
        for step in load["steps"]
    ]
    headers = ("streams", "p50 ms", "p99 ms", "max ms", "labels", "server CPU %", "client CPU %", "server RSS MiB",
               "late sends", "errors")
    return f"{table(headers, rows)}\n{_verdict(load)} (model {load['model']})"


def _verdict(load: dict) -> str:
    limit, last, passed = load["latency_limit_ms"], load["steps"][-1], load["p99_passes_limit_at_streams"]
    if passed is not None:
        return f"p99 passes {limit:g} ms at {passed} streams"
    if last["errors"]:
        return f"stopped at {last['streams']} streams on errors, first: {last['errors'][0]}"
    return f"p99 stays within {limit:g} ms up to {last['streams']} streams"


def render_memory(memory: dict) -> str:
    per_stream = memory["per_stream"]
    rows = [
        ("service idle, RSS", num(memory["idle_rss_mib"]), "MiB"),
        ("service idle, peak RSS", num(memory["idle_peak_rss_mib"]), "MiB"),
        ("service peak RSS under load", num(memory["peak_rss_mib_under_load"]), "MiB"),
        ("per open stream: slope of RSS over N", num(per_stream["slope_kib"]), "KiB"),
        ("per open stream: (RSS - idle) / N at the largest N", num(per_stream["growth_over_idle_kib_at_largest"]), "KiB"),
    ]
    return table(("memory", "value", ""), rows)
