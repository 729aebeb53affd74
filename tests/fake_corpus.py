"""A tiny generated corpus in the manifest format the corpus builder writes (see models/dataset.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from models.dataset import MANIFEST, MANIFEST_COLUMNS
from models.labels import LABELS
from service.features import SAMPLE_RATE
from tests.conftest import make_signal


def _clip(label: str, seconds: float, seed: int) -> np.ndarray:
    """Generated audio with some per-clip variety in level and (for music) phase."""
    rng = np.random.default_rng(seed)
    audio = make_signal(label, seconds=seconds, seed=seed) * rng.uniform(0.2, 1.0)
    if label == "music":
        audio = np.roll(audio, int(rng.integers(0, audio.size)))
    return audio.astype(np.float32)


def make_corpus(root: Path, clips_per_split: dict[str, int] | None = None,
                seconds: tuple[float, ...] = (0.6, 1.5, 3.0)) -> Path:
    """Write clips of each class and split, FLAC 16 kHz mono, and the manifest; return ``root``."""
    clips_per_split = clips_per_split or {"train": 6, "val": 3, "test": 3}
    rows = []
    for split, count in clips_per_split.items():
        for label in LABELS:
            for i in range(count):
                seed = len(rows)
                duration = seconds[i % len(seconds)]
                path = Path("clips") / split / f"{label}-{i}.flac"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                sf.write(root / path, _clip(label, duration, seed), SAMPLE_RATE)
                package = f"{label}-pkg-{i % 2}-{split}"
                rows.append([f"{split}-{label}-{i}", path.as_posix(), label, split, package, "generated", "CC0-1.0",
                             f"{duration:.3f}", SAMPLE_RATE, "0.0", int(label == "noise" and i % 3 == 0),
                             "band" if label == "music" and i % 2 else "", ""])
    with open(root / MANIFEST, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return root
