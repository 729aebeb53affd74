"""Batch: ``swishnet batch`` (Ray Data) with 1 and 2 workers against plain ``swishnet classify``, same files.

The generated recording of the files section (speech, music, noise and
silence in pieces of 2 to 20 s) is written as ``FILES`` 16 kHz WAV files
sharing ``--file-minutes`` of audio. Two measurements, each in rounds that
alternate the contestants:

- **Commands**: the whole command as a user runs it, in a fresh process:
  ``swishnet classify --output-dir`` (one process, one thread) and
  ``swishnet batch --workers 1`` and ``--workers 2`` (a local Ray started for
  the job, actors, shards). Its overhead against classify includes Ray's start.
- **Jobs** (in this process, Ray started once beforehand): ``run_batch`` with 1
  and 2 workers; actor start and Ray Data's scheduling included, Ray's start
  not. Scaling efficiency is the 2-worker throughput over twice the 1-worker
  throughput, within a round. CPU-seconds per hour of audio (workers x wall
  time per hour of audio) is the basis of a cluster's cost.

Every run writes to a fresh output folder (a folder that has the rows would
be skipped as done). Ray is imported only here and only when the section
runs: without the batch extra it is skipped with a note.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Options, num, paired_runs, ratios, rounded, show, skipped, summary, table
from bench.files import Timed, write_recording
from service.inference import Classifier

FILES, QUICK_FILES = 24, 4
WORKERS = (1, 2)
OBJECT_STORE_MB = 128
CLASSIFY = "classify (1 process)"


def _batch_name(workers: int) -> str:
    return f"batch, {workers} worker{'s' if workers > 1 else ''}"


def write_files(folder: Path, total_s: float, count: int) -> tuple[list[Path], float]:
    folder.mkdir(parents=True)
    paths = [folder / f"recording-{index:03d}.wav" for index in range(count)]
    return paths, sum(write_recording(path, total_s / count) for path in paths)


class Outputs:
    """A fresh output folder per run."""

    def __init__(self, root: Path) -> None:
        self.root, self._numbers = root, itertools.count()

    def __call__(self) -> Path:
        return self.root / f"out-{next(self._numbers)}"


def _command(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"swishnet {args[0]} exited with {result.returncode}: {result.stderr[-2000:]}")


def _command_runners(paths: list[Path], model: Path, fresh: Outputs) -> dict[str, Timed]:
    files = [str(path) for path in paths]
    runners = {CLASSIFY: Timed(lambda: _command(["classify", "--model", str(model), "--output-dir", str(fresh()),
                                                 *files]))}
    for workers in WORKERS:
        runners[_batch_name(workers)] = Timed(lambda w=workers: _command(
            ["batch", "--model", str(model), "--workers", str(w), "--object-store-mb", str(OBJECT_STORE_MB),
             "--no-progress", "--out", str(fresh()), *files]))
    return runners


def _job_runners(paths: list[Path], classifier: Classifier, fresh: Outputs) -> dict[str, Timed]:
    from service.batch import BatchOptions, run_batch

    files = [str(path) for path in paths]
    return {_batch_name(workers): Timed(lambda w=workers: run_batch(
        files, fresh(), classifier, options=BatchOptions(workers=w, progress=False))) for workers in WORKERS}


def _jobs(paths: list[Path], classifier: Classifier, fresh: Outputs, options: Options) -> tuple[dict, float | None]:
    """The jobs' seconds, and Ray's start in seconds (None when this process already ran Ray: the tests')."""
    import ray

    started_here, started = not ray.is_initialized(), time.perf_counter()
    if started_here:
        ray.init(address="local", num_cpus=max(WORKERS), object_store_memory=OBJECT_STORE_MB * 2**20,
                 include_dashboard=False, logging_level="WARNING")
    ray_start_s = rounded(time.perf_counter() - started) if started_here else None
    try:
        runners = _job_runners(paths, classifier, fresh)
        # One untimed round first (worker processes, imports), except in the quick mode of the tests.
        return paired_runs(runners, options.file_repeats, warm_up=not options.quick), ray_start_s
    finally:
        if started_here:
            ray.shutdown()


def run(options: Options, classifiers: dict[str, Classifier], notes: list[str]) -> dict:
    if not classifiers:
        return skipped("no model to measure (pass --model PATH, or --tiny)")
    if importlib.util.find_spec("ray") is None:
        notes.append("batch: skipped, Ray is not installed (pip install -e '.[batch]')")
        return skipped("Ray is not installed")
    name, classifier = next(iter(classifiers.items()))
    count = QUICK_FILES if options.quick else FILES
    with tempfile.TemporaryDirectory(prefix="swishnet-bench-batch-") as folder:
        paths, duration_s = write_files(Path(folder) / "audio", options.file_s, count)
        fresh = Outputs(Path(folder))
        commands = paired_runs(_command_runners(paths, classifier.path, fresh), options.file_repeats, warm_up=False)
        jobs, ray_start_s = _jobs(paths, classifier, fresh, options)
    one, two = _batch_name(1), _batch_name(2)
    return {
        "model": name, "files": count, "duration_s": duration_s, "format": "WAV, 16 kHz, mono, 16-bit",
        "passes": options.file_repeats,
        "commands": {
            "x_real_time": {runner: summary(duration_s / s for s in values) for runner, values in commands.items()},
            "wall_s": {runner: summary(values) for runner, values in commands.items()},
            "batch_wall_over_classify": {_batch_name(w): ratios(commands[_batch_name(w)], commands[CLASSIFY])
                                         for w in WORKERS},
        },
        "jobs": {
            "ray_start_s": ray_start_s,
            "x_real_time": {runner: summary(duration_s / s for s in values) for runner, values in jobs.items()},
            "scaling_efficiency": summary(a / (2 * b) for a, b in zip(jobs[one], jobs[two])),
            "cpu_s_per_audio_hour": {_batch_name(w): summary(w * s * 3600 / duration_s for s in jobs[_batch_name(w)])
                                     for w in WORKERS},
        },
        "load_average_1min_end": rounded(os.getloadavg()[0]),
    }


def render(result: dict) -> str:
    commands, jobs = result["commands"], result["jobs"]
    heading = (f"{result['files']} files, {result['duration_s'] / 60:.3g} min of generated audio in all "
               f"({result['format']}), model {result['model']}, {result['passes']} pass(es); "
               f"load average at the end {result['load_average_1min_end']}")
    rows = [(runner, show(stat), show(commands["wall_s"][runner]),
             show(commands["batch_wall_over_classify"].get(runner)))
            for runner, stat in commands["x_real_time"].items()]
    command_table = table(("whole command", "x real time", "wall s", "wall / classify's"), rows)
    rows = [(runner, show(stat), show(jobs["cpu_s_per_audio_hour"][runner]))
            for runner, stat in jobs["x_real_time"].items()]
    job_table = table(("job (Ray already running)", "x real time", "CPU-s per audio hour"), rows)
    return (f"{heading}\n{command_table}\n\n{job_table}\nscaling efficiency, 2 workers: "
            f"{show(jobs['scaling_efficiency'])}; Ray's start: {num(jobs['ray_start_s'])} s")
