"""Archive scale-out: ``classify_file`` over many files with Ray Data, on this machine or a Ray cluster.

The driver (the ``swishnet batch`` process) lists the files, drops those that
already have a row in the output folder, and hands the rest to a Ray Data
pipeline: a pool of ``workers`` actors, each holding one ``Classifier``
(loaded once per actor, from model bytes the driver sends, so workers need
no copy of a custom model) and running ``classify_file`` on one file after
another. Files stream through the engine block by block, so a worker's memory
is bounded whatever the files' lengths. Rows come back to the driver, which
writes them to shards (service.batch_output): rows are small (the segments
of a file), and one writer is what makes "each file exactly once" simple.

Reliability: a file that cannot be classified becomes a row with its error;
an actor that dies (killed, out of memory, node lost) is restarted by Ray and
its unfinished task is retried (Ray Data's actor pools set ``max_restarts``
and ``max_task_retries`` to -1, unlimited; tests/test_batch.py kills one); the
driver drops any row for a file it has already written.

A driver connected through Ray Client (``--address ray://...``) cannot run
Ray Data's executor, so there the pipeline runs in a RowSource actor on the
cluster and the driver takes its rows a few at a time; it still writes them.

Ray is imported only when a job runs, so this module imports without it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from service.batch_output import (
    FORMATS,
    OutputLock,
    done_files,
    error_row,
    make_writer,
    new_run_id,
    prepare,
)
from service.batch_sources import is_uri
from service.stream import StreamConfig

if TYPE_CHECKING:
    import numpy as np

    from service.inference import Classifier
    from service.stream import FileResult

log = logging.getLogger(__name__)

Classify = Callable[..., "FileResult"]
"""``classify_file``'s signature: (source, classifier, config, *, file) -> FileResult."""

DEFAULT_OBJECT_STORE_MB = 256  # a local Ray's shared memory: the job moves file names and small rows only
MAX_FILES_PER_TASK = 32
TASKS_PER_WORKER = 8  # the automatic task size aims at this many tasks per worker, for balance at the end
ROWS_PER_CALL = 16  # rows a Ray Client driver takes from the cluster per call
INSTALL_HINT = "pip install 'swishnet[batch]' (from a checkout: pip install -e '.[batch]')"


class BatchError(Exception):
    """A job that cannot start or did not finish; the message says what to do."""


class RayMissing(BatchError):
    """Ray (the batch extra) is not installed."""


@dataclass(frozen=True)
class BatchOptions:
    """How a job runs and writes; every field is checked at construction."""

    out_format: str = "jsonl"
    """Shard format: "jsonl" (JSON lines) or "parquet"."""
    workers: int = 1
    """Ray actors, each with its own classifier."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves per actor; its onnxruntime threads are the whole part of it (at least 1)."""
    address: str | None = None
    """A Ray cluster to join ("auto", "ray://HOST:PORT"); None: $RAY_ADDRESS, else a local Ray in-process."""
    files_per_task: int | None = None
    """Files per Ray task (the unit of scheduling and of retry); None picks one from the job's size."""
    shard_rows: int = 1000
    """Rows per output shard."""
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB
    """Shared memory of a local Ray (ignored when joining a cluster)."""
    progress: bool = True
    """A progress bar on stderr (shown only on a terminal)."""
    retry_errors: bool = False
    """Classify again the files whose rows in the output are errors (those rows are removed first)."""

    def __post_init__(self) -> None:
        if self.out_format not in FORMATS:
            raise ValueError(f"out_format must be one of {', '.join(FORMATS)}, got {self.out_format!r}")
        for name in ("workers", "shard_rows", "object_store_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.files_per_task is not None and self.files_per_task < 1:
            raise ValueError(f"files_per_task must be at least 1, got {self.files_per_task}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be more than 0, got {self.cpus_per_worker}")

    @property
    def threads_per_worker(self) -> int:
        return max(1, int(self.cpus_per_worker))

    def task_size(self, files: int) -> int:
        if self.files_per_task is not None:
            return self.files_per_task
        return max(1, min(MAX_FILES_PER_TASK, files // (self.workers * TASKS_PER_WORKER)))


@dataclass(frozen=True)
class ModelFiles:
    """A model and its card as bytes: sent to every worker, which loads it from a private folder."""

    stem: str
    onnx: bytes
    card: bytes

    @classmethod
    def of(cls, classifier: Classifier) -> ModelFiles:
        path = Path(classifier.path)
        return cls(path.stem, path.read_bytes(), path.with_suffix(".json").read_bytes())

    def load(self, folder: Path, threads: int) -> Classifier:
        from service.inference import Classifier

        path = folder / f"{self.stem}.onnx"
        path.write_bytes(self.onnx)
        path.with_suffix(".json").write_bytes(self.card)
        return Classifier(path, intra_op_num_threads=threads)


def classify_row(name: str, classifier: Classifier, config: StreamConfig, classify: Classify | None = None) -> dict:
    """One output row: ``classify --format json``'s object plus ``error`` (null), or the file's error row."""
    if classify is None:
        from service.stream import classify_file as classify
    try:
        with _opened(name) as source:
            result = classify(source, classifier, config, file=name)
    except Exception as error:  # noqa: BLE001  (any failure of one file is its row; the job goes on)
        log.debug("%s failed", name, exc_info=True)
        return error_row(name, _message(error))
    return {**result.to_dict(), "error": None}


def _message(error: Exception) -> str:
    from service.audio import AudioError

    return str(error) if isinstance(error, AudioError) else f"{type(error).__name__}: {error}"


@contextmanager
def _opened(name: str) -> Iterator[Any]:
    """A local path as it is (classify_file streams it); a URI opened with fsspec as a binary file object."""
    if not is_uri(name):
        yield name
        return
    import fsspec

    with fsspec.open(name, "rb") as handle:
        yield handle


class ClassifyWorker:
    """A Ray Data actor: one classifier for its life, then one row (JSON text) per file of each batch."""

    def __init__(self, model: ModelFiles, config: StreamConfig, threads: int, classify: Classify | None = None):
        self._folder = tempfile.TemporaryDirectory(prefix="swishnet-batch-model-")
        self.classifier = model.load(Path(self._folder.name), threads)
        self.config = config
        self.classify = classify

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        rows = [json.dumps(classify_row(str(name), self.classifier, self.config, self.classify))
                for name in batch["file"]]
        return {"row": np.array(rows, dtype=object)}


@dataclass
class BatchSummary:
    """What one run did; ``line()`` is the command's last line, ``to_dict()`` its ``_run-RUN.json`` in the output."""

    out: Path
    files: int
    """Files the sources list."""
    skipped: int = 0
    """Files that already had a row in the output."""
    classified: int = 0
    """Rows this run wrote, errors included."""
    errors: int = 0
    audio_s: float = 0.0
    """Audio of the files this run classified."""
    wall_s: float = 0.0
    """The run's wall time, from listing the output to the last row (Ray's start included)."""
    shards: list[str] = field(default_factory=list)

    def add(self, row: dict) -> None:
        self.classified += 1
        if row["error"] is not None:
            self.errors += 1
        else:
            self.audio_s += row["duration"]

    @property
    def audio_s_per_wall_s(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        return (f"swishnet batch: {self.files} files: {self.classified} classified ({self.errors} errors), "
                f"{self.skipped} already done; {self.audio_s / 3600:.3f} h of audio in {self.wall_s:.1f} s, "
                f"{self.audio_s_per_wall_s:.1f} audio-s per wall-s; rows in {self.out}")

    def to_dict(self) -> dict:
        return {"out": str(self.out), "files": self.files, "skipped": self.skipped, "classified": self.classified,
                "errors": self.errors, "audio_s": round(self.audio_s, 3), "wall_s": round(self.wall_s, 3),
                "audio_s_per_wall_s": round(self.audio_s_per_wall_s, 2), "shards": self.shards}


def run_batch(files: Sequence[str], out: Path, classifier: Classifier, config: StreamConfig | None = None,
              options: BatchOptions | None = None, *, classify: Classify | None = None) -> BatchSummary:
    """Classify every file of ``files`` that has no row in ``out`` yet, with Ray; write their rows there.

    ``classifier`` is the driver's copy of the model: its file and card are sent to the workers.
    ``classify`` replaces ``classify_file`` on the workers (tests use it to kill a worker).
    Raises BatchError (and service.batch_output.OutputError) with a message for the user.
    """
    config, options = config or StreamConfig(), options or BatchOptions()
    started = time.perf_counter()
    prepare(out)
    with OutputLock(out):
        done = done_files(out, options.retry_errors)
        todo = [name for name in dict.fromkeys(files) if name not in done]
        summary = BatchSummary(out, files=len(set(files)), skipped=len(set(files)) - len(todo))
        if todo:
            run_id = new_run_id()
            try:
                _classify_all(todo, out, run_id, classifier, config, options, classify, summary)
            finally:  # a record of every run that wrote rows, also of one that stopped half-way
                summary.wall_s = time.perf_counter() - started
                if summary.classified:
                    (out / f"_run-{run_id}.json").write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
    summary.wall_s = time.perf_counter() - started
    return summary


def _classify_all(todo: list[str], out: Path, run_id: str, classifier: Classifier, config: StreamConfig,
                  options: BatchOptions, classify: Classify | None, summary: BatchSummary) -> None:
    writer = make_writer(options.out_format, out, run_id, options.shard_rows, classifier.labels)
    expected, written = set(todo), set()
    bar = _progress_bar(len(todo), options.progress)
    try:
        with closing(_ray_rows(todo, ModelFiles.of(classifier), config, options, classify)) as rows:
            for row in rows:
                if row["file"] not in expected or row["file"] in written:
                    log.warning("dropped a second row for %s (a retried task)", row["file"])
                    continue
                writer.write(row)
                written.add(row["file"])
                summary.add(row)
                bar.update(1)
                bar.set_postfix_str(f"{summary.audio_s / 3600:.2f} h of audio, {summary.errors} errors",
                                    refresh=False)
    except (BatchError, KeyboardInterrupt):
        raise
    except Exception as error:  # Ray's own errors: a job that cannot be scheduled, a worker that cannot load
        raise BatchError(f"the Ray job stopped after {len(written)} of {len(todo)} files ({error}); "
                         "the rows written are kept and a re-run resumes") from error
    finally:
        bar.close()
        writer.close()
        summary.shards = [shard.name for shard in writer.shards]
    if len(written) < len(todo):
        raise BatchError(f"Ray returned rows for {len(written)} of {len(todo)} files; a re-run classifies the rest")


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="swishnet batch", file=sys.stderr, disable=None if enabled else True)


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayMissing(f"swishnet batch needs Ray ({error}): {INSTALL_HINT}") from None
    return ray


def _ray_rows(todo: list[str], model: ModelFiles, config: StreamConfig, options: BatchOptions,
              classify: Classify | None) -> Iterator[dict]:
    ray = import_ray()
    started_here = _start_ray(ray, options)
    try:
        if ray.util.client.ray.is_connected():  # a Ray Client (ray://) driver cannot run Ray Data's executor
            yield from rows_from_cluster(ray, todo, model, config, options, classify)
        else:
            yield from dataset_rows(todo, model, config, options, classify)
    finally:
        if started_here:
            ray.shutdown()


def dataset_rows(todo: list[str], model: ModelFiles, config: StreamConfig, options: BatchOptions,
                 classify: Classify | None) -> Iterator[dict]:
    """The rows of ``todo`` as the pool of ClassifyWorker actors makes them, in no particular order."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts files and hours; Ray's counts blocks
    per_task = options.task_size(len(todo))
    dataset = ray.data.from_items([{"file": name} for name in todo],
                                  override_num_blocks=math.ceil(len(todo) / per_task))
    dataset = dataset.map_batches(
        ClassifyWorker,
        fn_constructor_kwargs={"model": model, "config": config, "threads": options.threads_per_worker,
                               "classify": classify},
        batch_size=per_task, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=options.cpus_per_worker,
    )  # Ray Data's actor pools restart dead actors and retry their tasks without limit (max_restarts=-1)
    for item in dataset.iter_rows():
        yield json.loads(item["row"])


class RowSource:
    """An actor on the cluster that runs ``dataset_rows`` for a Ray Client driver, which takes rows in turns."""

    def __init__(self, *args: Any) -> None:
        self._rows = dataset_rows(*args)

    def take(self, count: int) -> list[dict]:
        return list(itertools.islice(self._rows, count))


def rows_from_cluster(ray: Any, *args: Any) -> Iterator[dict]:
    """``dataset_rows(*args)`` run by a RowSource actor (no CPU of its own), ROWS_PER_CALL rows at a time."""
    source = ray.remote(num_cpus=0)(RowSource).remote(*args)
    try:
        while rows := ray.get(source.take.remote(ROWS_PER_CALL)):
            yield from rows
    finally:
        ray.kill(source)


def _start_ray(ray: Any, options: BatchOptions) -> bool:
    """Join the cluster, or start a local Ray sized for the job; False when Ray was already running here."""
    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(address="local",  # a new Ray, even if this machine runs one (join that with --address auto)
                     num_cpus=math.ceil(options.workers * options.cpus_per_worker),
                     object_store_memory=options.object_store_mb * 2**20,
                     include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise BatchError(f"cannot start {where}: {error}") from None
    return True
