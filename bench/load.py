"""Service: latency, CPU and memory under N concurrent real-time WebSocket streams.

The server is separate processes (``python -m uvicorn service.app:create_app
--factory --workers W``, as ``swishnet serve --workers W`` runs it) on a free
127.0.0.1 port, so its CPU time and memory (summed over its processes) are
read apart from the client's (Linux /proc). The client is C processes (so
that the client is not the limit), each opening its share of the N streams,
one coroutine each; then every stream sends 100 ms of 16 kHz pcm_s16le every
100 ms of wall time, on a fixed schedule, the N streams' phases spread evenly
over the 100 ms. Label latency is the wall time a label event arrives minus
the wall time the client sent the chunk that completed the audio it covers
(its ``time`` field). The client's CPU is the sum over its processes.

Steps of N run one after another until a step's p99 passes 100 ms, or the
last step; every step is bounded in time, and the server is stopped at the
end whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import queue
import tempfile
import threading
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
    """The service in its own processes on a free loopback port; stopped on exit whatever happens."""

    def __init__(self, model: Path, max_streams: int, workers: int = 1) -> None:
        self.model, self.max_streams, self.workers = model, max_streams, workers
        self.port = _free_port()
        self._log: IO[bytes] = tempfile.TemporaryFile()
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        env = dict(os.environ, SWISHNET_MODEL_PATH=str(self.model), SWISHNET_MAX_STREAMS=str(self.max_streams))
        command = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--workers",
                   str(self.workers), "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                   "--ws-per-message-deflate", "false"]  # as swishnet serve runs it (Settings.ws_deflate)
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
    """CPU seconds and memory of another process and its descendants (uvicorn's workers), from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        """The process and its descendants now."""
        parents: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += parents.get(pid, [])
        return found

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        return total

    def memory_mib(self) -> dict[str, float]:
        """Resident set now (VmRSS) and the sum of each process's peak so far (VmHWM)."""
        totals = {"rss": 0.0, "peak": 0.0}
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            values = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            for key, name in (("rss", "VmRSS"), ("peak", "VmHWM")):
                totals[key] += int(values[name].split()[0]) / 1024 if name in values else 0.0
        return totals


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


def _sample(probe: ProcessProbe, cpu: list[float], rss: list[float], stop: threading.Event) -> None:
    """Server CPU % (of one core, summed over its processes) and RSS once a second, until ``stop``."""
    before, then = probe.cpu_s(), time.monotonic()
    while not stop.wait(SAMPLE_EVERY_S):
        now_cpu, now = probe.cpu_s(), time.monotonic()
        cpu.append(100 * (now_cpu - before) / (now - then))
        rss.append(probe.memory_mib()["rss"])
        before, then = now_cpu, now


async def _client(url: str, indices: list[int], n: int, options: Options, ready, results) -> None:
    """One client process's share of the streams: connect, wait for the others, run, report."""
    audio, count = stream_audio(), round(options.step_s / CHUNK_S)
    sockets = await _open(url, len(indices), options.deflate)
    logs = [StreamLog() for _ in indices]
    await asyncio.to_thread(ready.wait)  # every client process has connected
    cpu_before, started = _cpu_s(), time.monotonic()
    start = started + 0.3
    streams = asyncio.gather(*(_stream(ws, chunks_for(audio, i, count), start + CHUNK_S * i / n, log)
                               for i, ws, log in zip(indices, sockets, logs)))
    finished = True
    try:
        await asyncio.wait_for(streams, options.step_s + CLOSE_TIMEOUT_S + STEP_GRACE_S)
    except asyncio.TimeoutError:
        finished = False
    extensions = next((ws.response.headers.get("Sec-WebSocket-Extensions") for ws in sockets
                       if not isinstance(ws, str)), None)
    results.put({"latencies_s": [v for log in logs for v in log.latencies_s],
                 "late_sends": sum(log.late_sends for log in logs),
                 "errors": [log.error for log in logs if log.error][:5], "finished": finished,
                 "cpu_s": _cpu_s() - cpu_before, "wall_s": time.monotonic() - started, "extensions": extensions})


def _client_process(url: str, indices: list[int], n: int, options: Options, ready, results) -> None:
    try:
        run_client(_client(url, indices, n, options, ready, results))
    except BaseException as error:  # noqa: BLE001  (reported to the parent, which records it)
        ready.abort()
        results.put({"crash": f"{type(error).__name__}: {error}"})


def client_processes(n: int, options: Options) -> int:
    """How many client processes carry N streams: as given, or one per 250 streams (at most 4)."""
    return min(n, options.client_processes or min(4, math.ceil(n / 250)))


def _step(server: ServerProcess, probe: ProcessProbe, n: int, options: Options) -> dict:
    processes = client_processes(n, options)
    context = multiprocessing.get_context("fork")  # the children run the websockets client only
    ready, results = context.Barrier(processes + 1), context.Queue()
    clients = [context.Process(target=_client_process, daemon=True,
                               args=(server.url(), list(range(i, n, processes)), n, options, ready, results))
               for i in range(processes)]
    for client in clients:
        client.start()
    try:
        ready.wait(timeout=CONNECT_TIMEOUT_S * (1 + n / CONNECT_CONCURRENCY))
    except threading.BrokenBarrierError:
        pass  # a client failed to start: its report says why
    cpu, rss, stop = [], [], threading.Event()
    sampler = threading.Thread(target=_sample, args=(probe, cpu, rss, stop), daemon=True)
    sampler.start()
    limit = options.step_s + CLOSE_TIMEOUT_S + STEP_GRACE_S + 30
    reports = []
    for _ in clients:
        try:
            reports.append(results.get(timeout=limit))
        except queue.Empty:
            reports.append({"crash": f"a client process sent nothing within {limit:g} s"})
    stop.set()
    sampler.join()
    for client in clients:
        client.join(timeout=10)
        if client.is_alive():
            client.kill()
    return _step_result(n, options, processes, reports, cpu, rss)


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


def _step_result(n: int, options: Options, processes: int, reports: list[dict], cpu: list[float],
                 rss: list[float]) -> dict:
    latencies_ms = 1000 * np.array([value for report in reports for value in report.get("latencies_s", [])])
    steady_rss = rss[len(rss) // 2 :] or rss  # the second half: every stream open and running
    errors = [error for report in reports for error in report.get("errors", [])]
    errors += [report["crash"] for report in reports if "crash" in report]
    errors += [f"the step overran its limit of {options.step_s + CLOSE_TIMEOUT_S + STEP_GRACE_S:g} s"
               for report in reports if report.get("finished") is False]
    client_cpu = sum(r.get("cpu_s", 0.0) for r in reports) / max(max(r.get("wall_s", 0.0) for r in reports), 1e-9)
    server_cpu = summary(cpu) if cpu else None
    steady_cpu = float(np.median(cpu[len(cpu) // 2 :])) if cpu else None
    return {
        "streams": n,
        "client_processes": processes,
        "latency_ms": _percentiles(latencies_ms),
        "labels_received": int(latencies_ms.size),
        "labels_expected": n * _expected_labels(options.step_s),
        "late_sends": sum(report.get("late_sends", 0) for report in reports),
        "errors": errors[:5],
        "server_cpu_percent": server_cpu,
        "server_cpu_percent_per_stream": rounded(steady_cpu / n) if steady_cpu is not None else None,
        "client_cpu_percent": rounded(100 * client_cpu),
        "server_rss_mib": rounded(float(np.median(steady_rss))) if steady_rss else None,
        "ws_extensions": next((r["extensions"] for r in reports if r.get("extensions")), None),
    }


def _load(server: ServerProcess, options: Options) -> list[dict]:
    """Run the steps until one fails the latency limit or has errors."""
    probe = ProcessProbe(server.pid)
    steps = []
    for n in options.streams:
        steps.append(_step(server, probe, n, options))
        print(f"  {n} streams: p99 {steps[-1]['latency_ms']['p99']} ms, server CPU "
              f"{steps[-1]['server_cpu_percent'] and steps[-1]['server_cpu_percent']['median']} %, "
              f"client CPU {steps[-1]['client_cpu_percent']} %", file=sys.stderr, flush=True)
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
    with ServerProcess(model, max_streams=max(options.streams) + 10, workers=options.workers) as server:
        time.sleep(1.0)  # every worker has loaded its model
        idle = ProcessProbe(server.pid).memory_mib()
        steps = _load(server, options)
        after = ProcessProbe(server.pid).memory_mib()
    within = [step["streams"] for step in steps if _within_limit(step)]
    over = [step["streams"] for step in steps if not _p99_ok(step)]
    load = {
        "model": model.stem,
        "workers": options.workers,
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
         num(step["server_cpu_percent_per_stream"]), f"{num(step['client_cpu_percent'])} ({step['client_processes']})",
         num(step["server_rss_mib"]), step["late_sends"], len(step["errors"]))
        for step in load["steps"]
    ]
    headers = ("streams", "p50 ms", "p99 ms", "max ms", "labels", "server CPU %", "per stream %",
               "client CPU % (procs)", "server RSS MiB", "late sends", "errors")
    return (f"{table(headers, rows)}\n{_verdict(load)} (model {load['model']}, {load['workers']} server "
            f"worker(s); CPU in % of one core)")


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
