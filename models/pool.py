"""Pools of ready feature windows, built by a worker pool and cached on disk.

SwishNet is tiny, so preparing data (decoding, augmenting, MP3 round trips,
MFCCs) costs far more CPU than training on it.

Each stored window carries up to ``CONTEXT_S`` of the audio before it, so a
crop is scored with the left context a stream has at run time (the runtime
scores every frame with its full history); only the crop's own non-silent
frames are pooled. Silent frames follow the runtime rule (``frame_activity``). Training therefore draws its
windows from a fixed number of *variants*: each variant is a fresh sample of
windows (``plan_windows``) passed through the augmentation chain, turned into
MFCCs once and cached as ``.npz`` (float16: the rounding is far below the
features' spread). Epochs cycle through the variants and crop each window to
a new random length and offset, which is exact because MFCC frames depend
only on their own samples. The cache key covers the manifest and every
setting, so the slim and wide runs share one cache and stale caches are never
reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from models.augment import EVAL_MP3_COMPRESSION, AugmentConfig, active_frames, augment, mp3_round_trip, telephone
from models.dataset import (WINDOW_MAX_FRAMES, WINDOW_MIN_FRAMES, Clip, SamplingConfig, plan_windows,
                            read_segment)
from models.labels import LABELS
from service.features import FRAMES_PER_SECOND, HOP_LENGTH, N_MFCC, SAMPLE_RATE, WIN_LENGTH, mfcc

log = logging.getLogger(__name__)

POOL_VERSION = 2  # bump when window making changes, so that old caches are not reused
CHANNELS = ("augmented", "clean", "telephone", "mp3")
CONTEXT_S = 1.2  # left context stored before each window: more than any shipped receptive field (108 frames)
CONTEXT_FRAMES = round(CONTEXT_S * FRAMES_PER_SECOND)
CONTEXT_SAMPLES = CONTEXT_FRAMES * HOP_LENGTH
STORED_FRAMES = CONTEXT_FRAMES + WINDOW_MAX_FRAMES
SILENCE_THRESHOLD_DB = -50.0  # the runtime's default silence_threshold_db
ACTIVITY_S = 0.1  # ... over the runtime's default hop of audio around each frame
MIN_ACTIVE_FRACTION = 0.5  # windows with less non-silent audio are redrawn, then dropped
SILENCE_RETRIES = 4
CHUNK = 64  # windows per worker task


class WindowTask(NamedTuple):
    """One window to make; ``seed`` seeds its silence redraws and augmentation."""

    path: Path
    start: int
    length: int  # of the window, after ``context`` samples of left context
    context: int
    clip_samples: int
    label: int
    seed: list[int]
    channel: str


@dataclass(frozen=True)
class PoolSpec:
    """What a pool holds; everything that changes its contents is part of the cache key."""

    split: str
    channel: str
    n_per_class: int
    seed: int
    sampling: SamplingConfig = SamplingConfig()
    augment: AugmentConfig = AugmentConfig()

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown channel {self.channel!r}: expected one of {CHANNELS}")

    def key(self, manifest_digest: str) -> str:
        text = json.dumps([POOL_VERSION, manifest_digest, asdict(self)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WindowSet:
    """Feature windows with their left context, zero-padded to STORED_FRAMES; counts in frames."""

    features: np.ndarray  # (n, STORED_FRAMES, N_MFCC) float16
    lengths: np.ndarray  # (n,) int: context and window frames
    labels: np.ndarray  # (n,) int
    contexts: np.ndarray  # (n,) int: the first ``contexts`` frames are context, never pooled
    active: np.ndarray  # (n, STORED_FRAMES) bool: frames the runtime would not call silent
    packages: np.ndarray  # (n,) str: each window's source package (validation reports per package)

    def __len__(self) -> int:
        return int(self.labels.size)


class NoiseBank:
    """Random noise segments from the training split's noise clips (real and synthetic)."""

    def __init__(self, clips: Sequence[Clip]):
        self.paths = [clip.path for clip in clips]
        weights = np.array([min(clip.duration_s, 2.0) for clip in clips])  # favours ambiences over blips
        self.probabilities = weights / weights.sum()
        self.durations = np.array([clip.duration_s for clip in clips])

    def __call__(self, rng: np.random.Generator, n_samples: int) -> np.ndarray:
        index = rng.choice(len(self.paths), p=self.probabilities)
        total = int(self.durations[index] * SAMPLE_RATE)
        start = int(rng.integers(0, max(1, total - n_samples + 1)))
        segment = read_segment(self.paths[index], start, n_samples)
        return np.resize(segment, n_samples) if segment.size else np.zeros(n_samples, np.float32)


_WORKER: dict = {}


def init_worker(noise: NoiseBank | None = None, augment_config: AugmentConfig = AugmentConfig()) -> None:
    """Per-process state; one BLAS thread, since the pool itself supplies the parallelism
    (BLAS only: with ``workers=0`` this runs in the training process, whose OpenMP threads are torch's)."""
    from threadpoolctl import threadpool_limits

    _WORKER.update(noise=noise, augment=augment_config, limits=threadpool_limits(1, user_api="blas"))


def _channel(audio: np.ndarray, channel: str, label: int, rng: np.random.Generator) -> np.ndarray:
    if channel == "augmented":
        return augment(audio, LABELS[label] == "noise", rng, _WORKER["augment"], _WORKER["noise"])
    if channel == "mp3":
        return mp3_round_trip(audio, EVAL_MP3_COMPRESSION)[0]
    return telephone(audio) if channel == "telephone" else audio


def frame_activity(audio: np.ndarray, threshold_db: float = SILENCE_THRESHOLD_DB) -> np.ndarray:
    """Per MFCC frame: is the ``ACTIVITY_S`` of audio around the frame's centre above ``threshold_db`` (RMS)?"""
    count = 1 + (audio.size - WIN_LENGTH) // HOP_LENGTH if audio.size >= WIN_LENGTH else 0
    power = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
    centres = np.arange(count) * HOP_LENGTH + WIN_LENGTH // 2
    half = int(ACTIVITY_S * SAMPLE_RATE) // 2
    low, high = np.clip(centres - half, 0, audio.size), np.clip(centres + half, 0, audio.size)
    mean = (power[high] - power[low]) / np.maximum(high - low, 1)
    return mean > 10 ** (threshold_db / 10)


def _context_start(start: int, context: int) -> int:
    """Where a window's stored audio begins: up to ``context`` samples earlier, on the frame grid."""
    return start - min(context // HOP_LENGTH * HOP_LENGTH, start // HOP_LENGTH * HOP_LENGTH)


def make_window(task: WindowTask) -> tuple[np.ndarray, int, int, np.ndarray] | None:
    """Cut, check, transform and featurise one window with its context; None if it stays mostly silent.

    Returns (features, frames, context frames, frame activity), padded to STORED_FRAMES.
    """
    path, start, length, _, clip_samples, label, seed, channel = task
    rng = np.random.default_rng(seed)
    for _ in range(SILENCE_RETRIES):
        audio = read_segment(path, start, length)
        if audio.size and np.mean(active_frames(audio)) >= MIN_ACTIVE_FRACTION:
            break
        start = int(rng.integers(0, max(1, clip_samples - length + 1)))
    else:
        return None
    first = _context_start(start, task.context)
    audio = _channel(read_segment(path, first, start - first + length), channel, label, rng)
    features = mfcc(audio)
    context = (start - first) // HOP_LENGTH
    if features.shape[0] - context < WINDOW_MIN_FRAMES // 2:
        return None
    padded = np.zeros((STORED_FRAMES, N_MFCC), dtype=np.float16)
    padded[: features.shape[0]] = features
    active = np.zeros(STORED_FRAMES, dtype=bool)
    active[: features.shape[0]] = frame_activity(audio)[: features.shape[0]]
    return padded, features.shape[0], context, active


def _make_chunk(tasks: list[WindowTask]) -> list[tuple[np.ndarray, int, int, np.ndarray] | None]:
    return [make_window(task) for task in tasks]


def parallel_map(function: Callable, items: Sequence, workers: int, desc: str, initargs: tuple = ()) -> list:
    """``[function(item) for item in items]`` in order, on ``workers`` spawned processes (0: here).

    A process pool executor, not multiprocessing.Pool: a worker that dies
    raises BrokenProcessPool here instead of being respawned forever.
    """
    with tqdm(total=len(items), desc=desc, unit="task", leave=False) as bar:
        if workers == 0:
            init_worker(*initargs)
            return [_counted(function(item), bar) for item in items]
        context = multiprocessing.get_context("spawn")  # fork after torch's threads start is unsafe
        with ProcessPoolExecutor(workers, context, initializer=init_worker, initargs=initargs) as pool:
            return [_counted(result, bar) for result in pool.map(function, items)]


def _counted(result, bar: tqdm):
    bar.update()
    return result


def _tasks(spec: PoolSpec, clips: list[Clip], variant: int) -> list[WindowTask]:
    plan = plan_windows(clips, spec.n_per_class, np.random.default_rng([spec.seed, variant]), spec.sampling)
    return [
        WindowTask(clips[c].path, int(s), int(n), CONTEXT_SAMPLES, int(clips[c].duration_s * SAMPLE_RATE),
                   clips[c].label, [spec.seed, variant, i + 1], spec.channel)
        for i, (c, s, n) in enumerate(zip(plan.clip, plan.start, plan.length))
    ]


def build_variant(spec: PoolSpec, clips: list[Clip], noise: NoiseBank | None, variant: int,
                  workers: int) -> WindowSet:
    """Make one variant of a pool (no cache)."""
    tasks = _tasks(spec, clips, variant)
    by_path = {clip.path: clip.package for clip in clips}
    packages = [by_path[task.path] for task in tasks]
    chunks = [tasks[i : i + CHUNK] for i in range(0, len(tasks), CHUNK)]
    desc = f"{spec.split} {spec.channel} windows, variant {variant}"
    made = [w for chunk in parallel_map(_make_chunk, chunks, workers, desc, (noise, spec.augment)) for w in chunk]
    keep = [i for i, window in enumerate(made) if window is not None]
    if not keep:
        raise ValueError(f"every {spec.split} window was silent; check the corpus audio levels")
    return WindowSet(
        features=np.stack([made[i][0] for i in keep]),
        lengths=np.array([made[i][1] for i in keep], dtype=np.int64),
        labels=np.array([tasks[i].label for i in keep], dtype=np.int64),
        contexts=np.array([made[i][2] for i in keep], dtype=np.int64),
        active=np.stack([made[i][3] for i in keep]),
        packages=np.array([packages[i] for i in keep]),
    )


def load_or_build(spec: PoolSpec, clips: list[Clip], noise: NoiseBank | None, variant: int, workers: int,
                  cache_dir: Path, manifest_digest: str) -> WindowSet:
    """A variant from the cache, built and cached first if absent."""
    path = Path(cache_dir) / f"{spec.split}-{spec.channel}-{spec.key(manifest_digest)}" / f"variant-{variant:03d}.npz"
    if path.is_file():
        with np.load(path) as data:
            return WindowSet(**{name: data[name] for name in WindowSet.__dataclass_fields__})
    started = time.monotonic()
    windows = build_variant(spec, clips, noise, variant, workers)
    seconds = time.monotonic() - started
    log.info("%s %s variant %d: %d windows in %.0f s (%.0f windows/s, %d workers)", spec.split, spec.channel,
             variant, len(windows), seconds, len(windows) / seconds, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.npz")
    np.savez(partial, **{name: getattr(windows, name) for name in WindowSet.__dataclass_fields__})
    os.replace(partial, path)  # atomic: an interrupted run never leaves a truncated variant
    return windows


def crop_batch(windows: WindowSet, index: np.ndarray, n_frames: int | np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crops of at most ``n_frames`` window frames (one value, or one per row), each with the
    frames before it (up to CONTEXT_FRAMES) as left context.

    Returns ((batch, N_MFCC, frames) float32, (batch, frames) pooling weights):
    a weight is 1 on the crop's non-silent frames (on all its frames if every
    one is silent) and 0 on context and right padding, which a causal model
    ignores exactly.
    """
    contexts = windows.contexts[index]
    room = windows.lengths[index] - contexts
    lengths = np.minimum(room, n_frames)
    offsets = contexts + (rng.random(index.size) * (room - lengths + 1)).astype(np.int64)
    before = np.minimum(offsets, CONTEXT_FRAMES)
    span = int((before + lengths).max())
    frames = np.minimum(offsets[:, None] - before[:, None] + np.arange(span)[None, :], STORED_FRAMES - 1)
    batch = windows.features[index[:, None], frames].astype(np.float32)
    position = np.arange(span)[None, :]
    inside = (position >= before[:, None]) & (position < (before + lengths)[:, None])
    active = inside & windows.active[index[:, None], frames]
    weights = np.where(active.any(axis=1, keepdims=True), active, inside).astype(np.float32)
    return np.ascontiguousarray(batch.transpose(0, 2, 1)), weights


def training_batches(windows: WindowSet, batch_size: int,
                     rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of (features, pooling weights, labels) batches; each batch has its own crop length."""
    order = rng.permutation(len(windows))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        n_frames = int(rng.integers(WINDOW_MIN_FRAMES, WINDOW_MAX_FRAMES + 1))
        features, weights = crop_batch(windows, index, n_frames, rng)
        yield features, weights, windows.labels[index]
