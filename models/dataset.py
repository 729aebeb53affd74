"""The training corpus: manifest, window sampling plan and audio segments.

The corpus (written by the corpus builder) is a directory with
``manifest.csv`` and 16 kHz mono FLAC clips of 0.5 to 30 s. Training cuts
windows of up to ``WINDOW_MAX_S`` from them; this module decides which
(``plan_windows``) and reads them (``read_segment``).

Sampling, per class, so that no soundtrack or long clip dominates (DATA.md,
trap 2): a package's share grows with the square root of its duration and is
capped at ``max_package_share``; inside a package every second of audio is
equally likely, but one clip yields at most ``max_windows_per_second`` windows
per second of its duration (expected count). Classes are balanced by drawing
the same number of windows for each.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from models.corpus_config import SPLITS, CorpusError
from models.labels import LABELS
from service.audio import to_model_input
from service.features import SAMPLE_RATE, n_frames

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("clip_id", "path", "label", "split", "package", "source", "licence", "duration_s",
                    "orig_sample_rate", "speech_ratio", "synthetic", "style", "render")
WINDOW_MIN_S = 0.5
WINDOW_MAX_S = 2.0
WINDOW_MAX_SAMPLES = int(WINDOW_MAX_S * SAMPLE_RATE)
WINDOW_MIN_FRAMES = n_frames(int(WINDOW_MIN_S * SAMPLE_RATE))
WINDOW_MAX_FRAMES = n_frames(WINDOW_MAX_SAMPLES)


@dataclass(frozen=True)
class Clip:
    clip_id: str
    path: Path
    label: int  # index into LABELS
    split: str
    package: str
    licence: str
    duration_s: float
    synthetic: bool
    style: str = ""


@dataclass(frozen=True)
class SamplingConfig:
    max_package_share: float = 0.2
    max_windows_per_second: float = 2.0


def manifest_path(corpus: Path) -> Path:
    path = Path(corpus) / MANIFEST
    if not path.is_file():
        raise CorpusError(f"no {MANIFEST} in {corpus}: pass --corpus the directory the corpus builder wrote")
    return path


def _parse_row(row: dict, corpus: Path, line: int) -> Clip:
    if row["label"] not in LABELS or row["split"] not in SPLITS:
        raise CorpusError(f"{MANIFEST} line {line}: label must be one of {LABELS} and split one of {SPLITS}, "
                          f"got {row['label']!r}, {row['split']!r}")
    try:
        return Clip(row["clip_id"], corpus / row["path"], LABELS.index(row["label"]), row["split"],
                    row["package"], row["licence"], float(row["duration_s"]), row["synthetic"] == "1", row["style"])
    except ValueError as error:
        raise CorpusError(f"{MANIFEST} line {line}: {error}") from None


def read_manifest(corpus: Path) -> list[Clip]:
    """All clips of the corpus, checked: exact columns, known labels and splits, files present."""
    corpus = Path(corpus)
    with open(manifest_path(corpus), newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise CorpusError(f"{MANIFEST} columns are {reader.fieldnames}; expected exactly {list(MANIFEST_COLUMNS)}")
        clips = [_parse_row(row, corpus, line) for line, row in enumerate(reader, start=2)]
    missing = [str(clip.path) for clip in clips if not clip.path.is_file()]
    if missing:
        raise CorpusError(f"{len(missing)} clip files listed in {MANIFEST} are missing, e.g. {missing[0]}")
    return clips


def manifest_sha256(corpus: Path) -> str:
    return hashlib.sha256(manifest_path(Path(corpus)).read_bytes()).hexdigest()


def corpus_summary(clips: list[Clip]) -> dict:
    """Per split and class: hours, real (non-synthetic) hours, band-music hours and packages; hours per licence.

    Model cards copy it as ``training.corpus``.
    """
    summary: dict = {}
    for split in SPLITS:
        summary[split] = {}
        for index, label in enumerate(LABELS):
            chosen = [c for c in clips if c.split == split and c.label == index]
            summary[split][label] = {
                "clips": len(chosen),
                "hours": round(sum(c.duration_s for c in chosen) / 3600, 3),
                "real_hours": round(sum(c.duration_s for c in chosen if not c.synthetic) / 3600, 3),
                "band_hours": round(sum(c.duration_s for c in chosen if c.style == "band") / 3600, 3),
                "packages": sorted({c.package for c in chosen}),
            }
    hours: dict[str, float] = {}
    for clip in clips:
        hours[clip.licence] = hours.get(clip.licence, 0.0) + clip.duration_s / 3600
    summary["licence_hours"] = {licence: round(h, 3) for licence, h in sorted(hours.items())}
    return summary


def select(clips: list[Clip], split: str) -> list[Clip]:
    """The clips of one split; every class must be present."""
    chosen = [clip for clip in clips if clip.split == split]
    absent = [label for index, label in enumerate(LABELS) if not any(c.label == index for c in chosen)]
    if absent:
        raise CorpusError(f"the {split!r} split has no clips labelled {absent}; rebuild the corpus with all classes")
    return chosen


def cap_shares(weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Shares proportional to ``weights``, none above its cap, summing to 1 where caps allow.

    Water-filling: capped entries are fixed at their cap and the remainder is
    spread over the others in proportion to their weights, until none exceeds.
    """
    weights = np.asarray(weights, dtype=np.float64)
    caps = np.broadcast_to(np.asarray(caps, dtype=np.float64), weights.shape)
    capped = np.zeros(weights.shape, dtype=bool)
    while True:
        free = weights * ~capped
        remainder = 1.0 - caps[capped].sum()
        shares = np.where(capped, caps, free / max(free.sum(), 1e-300) * max(remainder, 0.0))
        over = ~capped & (shares > caps)
        if not over.any():
            return shares
        capped |= over


def clip_shares(clips: list[Clip], n_windows: int, config: SamplingConfig) -> np.ndarray:
    """Expected share of one class's windows for each of its clips (see the module docstring)."""
    packages = sorted({clip.package for clip in clips})
    index = np.array([packages.index(clip.package) for clip in clips])
    durations = np.array([clip.duration_s for clip in clips])
    package_hours = np.bincount(index, weights=durations)
    cap = max(config.max_package_share, 1.0 / len(packages))
    package_share = cap_shares(np.sqrt(package_hours), cap)
    within = durations / package_hours[index]
    clip_caps = np.maximum(1.0, config.max_windows_per_second * durations) / n_windows
    return cap_shares(package_share[index] * within, clip_caps)


@dataclass(frozen=True)
class WindowPlan:
    """Which windows to cut: parallel arrays, one entry per window."""

    clip: np.ndarray  # index into the clip list
    start: np.ndarray  # first sample
    length: np.ndarray  # samples, at most WINDOW_MAX_SAMPLES


def plan_windows(clips: list[Clip], n_per_class: int, rng: np.random.Generator, config: SamplingConfig) -> WindowPlan:
    """Draw ``n_per_class`` windows of each class (fewer where the caps leave less audio)."""
    chosen = []
    for label in range(len(LABELS)):
        members = np.flatnonzero([clip.label == label for clip in clips])
        shares = clip_shares([clips[i] for i in members], n_per_class, config)
        counts = rng.multinomial(int(round(n_per_class * shares.sum())), shares / shares.sum())
        chosen.append(np.repeat(members, counts))
    clip_index = np.concatenate(chosen)
    total = np.array([int(clips[i].duration_s * SAMPLE_RATE) for i in clip_index], dtype=np.int64)
    length = np.minimum(total, WINDOW_MAX_SAMPLES)
    start = (rng.random(clip_index.size) * (total - length + 1)).astype(np.int64)
    return WindowPlan(clip_index, start, length)


def read_segment(path: Path, start: int, n_samples: int) -> np.ndarray:
    """``n_samples`` of a corpus clip from ``start`` (fewer at the end), float32 mono 16 kHz.

    service.audio.load_audio decodes whole files; training reads a 2 s window
    from clips of up to 30 s many times, so this seeks instead, and passes
    the samples through the same conversion (to_model_input) as load_audio.
    """
    with sf.SoundFile(path) as handle:
        handle.seek(min(start, handle.frames))
        data = handle.read(n_samples, dtype="float32", always_2d=True)
        rate = handle.samplerate
    if rate != SAMPLE_RATE:
        raise CorpusError(f"{path} is {rate} Hz; corpus clips must be 16 kHz (rebuild the corpus)")
    return to_model_input(data, rate)
