"""Audio shared across splits: val and test clips whose sound is also in a train clip.

Splitting by package and game does not stop games shipping each other's assets
(a soundtrack, an effect), so a held-out clip can be a train clip re-encoded,
resampled or at another level. Each clip is cut into blocks of BLOCK_FRAMES
MFCC frames (a shorter clip is one block); a block is described by the mean and
spread of MFCCs 1 to 19 (c0, the level, is left out). The train block nearest
to each held-out block by cosine similarity is a candidate, confirmed when the
two MFCC trajectories correlate at some lag: the same sound follows the same
path, two recordings of the same kind of noise do not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.dataset import Clip, read_manifest
from models.pool import parallel_map
from service.audio import load_audio
from service.features import FRAMES_PER_SECOND, mfcc

BLOCK_FRAMES = 2 * FRAMES_PER_SECOND
BLOCK_HOP = FRAMES_PER_SECOND
MIN_FRAMES = 30  # shorter clips (0.3 s) are not compared
CANDIDATE_COSINE = 0.75  # loose: blocks of the same sound may be offset by half a block
MATCH_CORRELATION = 0.9
MAX_LAG = FRAMES_PER_SECOND // 2
HELD_OUT = ("val", "test")
SIMILARITY_ROWS = 512  # held-out blocks scored against all train blocks at once


@dataclass(frozen=True)
class Leak:
    """A held-out clip and the train clip it shares audio with."""

    clip: Clip
    train_clip: Clip
    correlation: float

    COLUMNS = ("split", "clip_id", "package", "path", "train_clip_id", "train_package", "train_path", "correlation")

    def to_row(self) -> dict:
        return {"split": self.clip.split, "clip_id": self.clip.clip_id, "package": self.clip.package,
                "path": str(self.clip.path), "train_clip_id": self.train_clip.clip_id,
                "train_package": self.train_clip.package, "train_path": str(self.train_clip.path),
                "correlation": round(self.correlation, 3)}


def trajectories(clip: Clip) -> np.ndarray:
    """MFCCs 1 to 19 of a clip, (frames, 19)."""
    return mfcc(load_audio(clip.path))[:, 1:]


def block_starts(n_frames: int) -> list[int]:
    if n_frames < MIN_FRAMES:
        return []
    return list(range(0, max(1, n_frames - BLOCK_FRAMES + 1), BLOCK_HOP))


def clip_descriptors(clip: Clip) -> np.ndarray:
    """(blocks, 38) mean and standard deviation of each block's trajectories."""
    features = trajectories(clip)
    blocks = [features[start : start + BLOCK_FRAMES] for start in block_starts(len(features))]
    return np.array([np.concatenate([b.mean(axis=0), b.std(axis=0)]) for b in blocks],
                    dtype=np.float32).reshape(-1, 2 * features.shape[1])


def correlation(query: np.ndarray, reference: np.ndarray) -> float:
    """Best mean per-coefficient Pearson correlation of the shorter trajectory with every stretch of the
    longer one of its length (0 if the shorter has under MIN_FRAMES frames)."""
    short, long = sorted((query, reference), key=len)
    if len(short) < MIN_FRAMES:
        return 0.0
    windows = np.lib.stride_tricks.sliding_window_view(long, len(short), axis=0)  # (lags, coefficients, frames)
    windows = windows - windows.mean(axis=2, keepdims=True)
    centred = (short - short.mean(axis=0)).T
    covariance = np.einsum("lcf,cf->lc", windows, centred)
    norms = np.sqrt(np.einsum("lcf,lcf->lc", windows, windows) * np.einsum("cf,cf->c", centred, centred))
    moving = norms > 1e-6  # a coefficient that stays put says nothing about identity
    r = np.where(moving, covariance / np.where(moving, norms, 1.0), 0.0)
    return float(np.max(r.sum(axis=1) / np.maximum(moving.sum(axis=1), 1)))


def _standardise(train: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    unit = [(x - mean) / std for x in (train, held)]
    return tuple(x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9) for x in unit)


def find_leaks(corpus: Path, workers: int = 2) -> list[Leak]:
    """Every val or test clip that shares audio with a train clip, with its best-matching train clip."""
    clips = read_manifest(corpus)
    if not any(clip.split == "train" for clip in clips) or not any(clip.split in HELD_OUT for clip in clips):
        return []
    descriptors = parallel_map(clip_descriptors, clips, workers, "describing clips")
    owner = np.concatenate([np.full(len(d), i, dtype=np.int64) for i, d in enumerate(descriptors)])
    block = np.concatenate([np.arange(len(d), dtype=np.int64) for d in descriptors])  # index within its clip
    blocks = np.concatenate(descriptors)
    split = np.array([clips[i].split for i in owner])
    train, held = np.flatnonzero(split == "train"), np.flatnonzero(np.isin(split, HELD_OUT))
    if train.size == 0 or held.size == 0:
        return []
    train_unit, held_unit = _standardise(blocks[train], blocks[held])
    nearest, cosine = np.empty(held.size, np.int64), np.empty(held.size, np.float32)
    for row in range(0, held.size, SIMILARITY_ROWS):
        similarity = held_unit[row : row + SIMILARITY_ROWS] @ train_unit.T
        nearest[row : row + SIMILARITY_ROWS] = similarity.argmax(axis=1)
        cosine[row : row + SIMILARITY_ROWS] = similarity.max(axis=1)
    return _confirm(clips, owner, block, train, held, nearest, cosine)


def _confirm(clips: list[Clip], owner: np.ndarray, block: np.ndarray, train: np.ndarray, held: np.ndarray,
             nearest: np.ndarray, cosine: np.ndarray) -> list[Leak]:
    @functools.lru_cache(maxsize=256)
    def frames(index: int) -> np.ndarray:
        return trajectories(clips[index])

    best: dict[int, Leak] = {}
    candidates = np.flatnonzero(cosine >= CANDIDATE_COSINE)
    for h in tqdm(candidates, desc="comparing candidate blocks", unit="block", leave=False):
        query_clip, train_clip = int(owner[held[h]]), int(owner[train[nearest[h]]])
        q0, t0 = int(block[held[h]]) * BLOCK_HOP, int(block[train[nearest[h]]]) * BLOCK_HOP
        query = frames(query_clip)[q0 : q0 + BLOCK_FRAMES]
        # the matching block's neighbourhood: the same sound may start up to half a block away
        reference = frames(train_clip)[max(0, t0 - MAX_LAG) : t0 + BLOCK_FRAMES + MAX_LAG]
        score = correlation(query, reference)
        if score >= MATCH_CORRELATION and score > getattr(best.get(query_clip), "correlation", 0.0):
            best[query_clip] = Leak(clips[query_clip], clips[train_clip], score)
    return sorted(best.values(), key=lambda leak: (leak.clip.split, leak.clip.clip_id))
