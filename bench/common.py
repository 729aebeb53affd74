"""Shared pieces of the benchmark suite: options, summaries, paired timing, machine facts, models."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnxruntime

from service.inference import Classifier, ModelError

# The models the suite measures when no --model is given, in this order; missing ones are skipped.
BUNDLED_MODELS = ("swishnet-slim", "swishnet-slim-int8", "swishnet-wide", "swishnet-wide-int8")


@dataclass(frozen=True)
class Options:
    """What one run of the suite measures and how long it may take."""

    quick: bool = False
    repeats: int = 5
    """Repeated measurements behind each features and model figure."""
    file_repeats: int = 3
    """Repeated passes over the generated file (each model and Silero once per pass)."""
    file_s: float = 3600.0
    streams: tuple[int, ...] = (1, 10, 50, 100, 200, 400, 600, 800, 1000, 1200)
    """Load steps: concurrent streams; the run stops at the first step whose p99 passes the limit."""
    workers: int = 2
    """Server processes (swishnet serve --workers)."""
    client_processes: int = 0
    """Client processes carrying the streams; 0: one per 250 streams, at most 4."""
    step_s: float = 12.0
    """Seconds of audio each stream sends at each load step."""
    deflate: bool = True
    """Offer permessage-deflate, as browsers and the websockets client do by default."""
    models: tuple[Path, ...] = field(default_factory=tuple)


def summary(values: Iterable[float]) -> dict:
    """Median and p10-p90 spread of repeated measurements."""
    array = np.asarray(list(values), dtype=float)
    p10, median, p90 = np.percentile(array, [10, 50, 90])
    return {"median": rounded(median), "p10": rounded(p10), "p90": rounded(p90), "n": int(array.size)}


def rounded(value: float) -> float:
    """Four significant digits: more than any of these figures can support."""
    return float(f"{value:.4g}")


def num(value: float | None) -> str:
    """A figure for the tables: three significant digits, no exponent, no trailing noise."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) >= 1e-3 else f"{value:.1e}"


def show(stat: dict | None) -> str:
    """A summary as 'median (p10-p90)' for the tables."""
    if stat is None:
        return "-"
    if stat["n"] == 1:
        return num(stat["median"])
    return f"{num(stat['median'])} ({num(stat['p10'])}-{num(stat['p90'])})"


def paired_runs(runners: dict[str, Callable[[], float]], repeats: int, warm_up: bool = True) -> dict[str, list[float]]:
    """``repeats`` rounds of every runner in turn, after one untimed round unless ``warm_up`` is false.

    Interleaving puts each compared pair in the same conditions (machine load,
    caches), so a ratio is taken within a round, never across runs.
    """
    if warm_up:
        for runner in runners.values():
            runner()
    results: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            results[name].append(runner())
    return results


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> dict:
    """Summary of round-by-round ratios of two paired series."""
    return summary(a / b for a, b in zip(numerators, denominators))


def seconds_per_call(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def calls_to_fill(call: Callable[[], object], seconds: float) -> int:
    """How many calls take about ``seconds``, from one timed call (at least 3)."""
    return max(3, int(seconds / max(seconds_per_call(call, 1), 1e-7)))


def skipped(reason: str) -> dict:
    return {"skipped": reason}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def machine_info() -> dict:
    """Where the figures come from; the load average tells whether the machine was busy."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": rounded(os.getloadavg()[0]) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def bundled_model_paths() -> tuple[Path, ...]:
    folder = Path(str(files("models")))
    return tuple(folder / f"{name}.onnx" for name in BUNDLED_MODELS)


def load_models(paths: Sequence[Path], notes: list[str]) -> dict[str, Classifier]:
    """Load each model once (one intra-op thread); a missing or unusable one becomes a note."""
    classifiers = {}
    for path in paths:
        if not path.is_file():
            notes.append(f"model {path.stem}: skipped, {path} not found")
            continue
        try:
            classifiers[path.stem] = Classifier(path, intra_op_num_threads=1)
        except ModelError as error:
            notes.append(f"model {path.stem}: skipped, {error}")
    return classifiers


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain text table, columns left-aligned."""
    cells = [[str(cell) for cell in headers]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
