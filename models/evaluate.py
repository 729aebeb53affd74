"""Evaluation of a checkpoint or an exported ONNX model on one corpus split.

Clip classification: from every clip, up to ``MAX_WINDOWS_PER_CLIP``
non-overlapping windows of 0.5, 1 and 2 s, drawn with a seeded generator from
the positions where at least half the frames are not silence (the paper
removed silence; a long track cannot dominate). Each window is scored as the
model would be at run time: raw MFCCs in, ``probs`` out. Every metric is
computed three times: on the clean audio, through an 8 kHz telephone channel
(300 to 3400 Hz), and through a low-bitrate CBR MP3 round trip.

Segmentation: seeded artificial concatenations of silence, noise, speech and
music segments cut from the split's clips. Frame labels come from the
segment a frame's centre falls in; silent frames (models.augment.
active_frames) are not scored. Frame probabilities come from the checkpoint's
frame-wise causal logits over the whole sequence; an ONNX model, which only
outputs pooled ``probs``, is scored on trailing 1 s windows every 10 frames
(as a streaming engine would). Both are reported raw and after a centred
median filter of ``MEDIAN_FRAMES`` frames on each class's probability (the
paper's 200-frame filter, made odd so it is centred).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.ndimage

from models.augment import EVAL_MP3_COMPRESSION, active_frames, mp3_round_trip, telephone
from models.dataset import Clip, CorpusError, read_manifest, select
from models.metrics import classification_report
from models.pool import parallel_map
from models.labels import LABELS
from service.audio import load_audio
from service.cli import CommandError
from service.features import HOP_LENGTH, SAMPLE_RATE, WIN_LENGTH, mfcc, n_frames

log = logging.getLogger(__name__)

LENGTHS_S = (0.5, 1.0, 2.0)
CONDITIONS = ("clean", "telephone", "mp3")
MAX_WINDOWS_PER_CLIP = 8
MIN_ACTIVE_FRACTION = 0.5
MEDIAN_FRAMES = 201
SEGMENT_KINDS = ("silence", *LABELS)
SEGMENT_S = (1.0, 6.0)
SEGMENTS_PER_SEQUENCE = 10
SEQUENCES = 24
STREAM_WINDOW_FRAMES = n_frames(SAMPLE_RATE)  # 1 s of audio
STREAM_HOP_FRAMES = 10
SCORE_BATCH = 1024


class Scorer(Protocol):
    def window_probs(self, features: np.ndarray) -> np.ndarray:
        """(batch, N_MFCC, frames) raw MFCCs -> (batch, classes) probabilities."""

    def frame_probs(self, features: np.ndarray) -> np.ndarray:
        """(N_MFCC, frames) raw MFCCs of one long sequence -> (frames, classes) probabilities."""


class TorchScorer:
    """A checkpoint: pooled probabilities, and frame-wise ones from the causal frame logits."""

    def __init__(self, model) -> None:
        import torch

        self.torch, self.model = torch, model.eval()

    def window_probs(self, features: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.torch.softmax(self.model(self.torch.from_numpy(features)), dim=-1).numpy()

    def frame_probs(self, features: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            logits = self.model.frame_logits(self.torch.from_numpy(features)[None])[0]
        return self.torch.softmax(logits, dim=-1).numpy()


class OnnxScorer:
    """An exported model, run by onnxruntime exactly as the service runs it."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def window_probs(self, features: np.ndarray) -> np.ndarray:
        return self.session.run(["probs"], {"mfcc": np.ascontiguousarray(features, dtype=np.float32)})[0]

    def frame_probs(self, features: np.ndarray) -> np.ndarray:
        """Probabilities of the trailing 1 s window every STREAM_HOP_FRAMES frames, held until the next."""
        total = features.shape[1]
        ends = np.arange(STREAM_HOP_FRAMES, total + STREAM_HOP_FRAMES, STREAM_HOP_FRAMES).clip(max=total)
        probs = np.empty((ends.size, len(LABELS)), dtype=np.float32)
        full = ends >= STREAM_WINDOW_FRAMES
        for i in np.flatnonzero(~full):  # the first second: windows as long as the audio so far
            probs[i] = self.window_probs(features[None, :, : ends[i]])[0]
        if full.any():
            starts = ends[full] - STREAM_WINDOW_FRAMES
            windows = np.stack([features[:, s : s + STREAM_WINDOW_FRAMES] for s in starts])
            probs[full] = batched_probs(self, windows)
        return np.repeat(probs, np.diff(np.concatenate([[0], ends])), axis=0)


def load_scorer(path: Path) -> Scorer:
    """A TorchScorer for a .pt checkpoint, an OnnxScorer for a .onnx file."""
    path = Path(path)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CommandError(f"no ONNX model at {path}")
        return OnnxScorer(path)
    from models.swishnet import load_checkpoint

    return TorchScorer(load_checkpoint(path)[0])


def batched_probs(scorer: Scorer, windows: np.ndarray) -> np.ndarray:
    return np.concatenate([scorer.window_probs(windows[i : i + SCORE_BATCH])
                           for i in range(0, len(windows), SCORE_BATCH)])


@dataclass(frozen=True)
class ClipFeatures:
    """One clip's MFCCs under each condition, its non-silent frames, and bytes per second of its MP3."""

    features: dict  # condition -> (frames, N_MFCC)
    active: np.ndarray
    mp3_bytes_per_s: float


def clip_features(clip: Clip) -> ClipFeatures:
    """Decode a clip and featurise it clean, through the telephone channel and through MP3."""
    audio = load_audio(clip.path)
    coded, size = mp3_round_trip(audio, EVAL_MP3_COMPRESSION)
    features = {"clean": mfcc(audio), "telephone": mfcc(telephone(audio)), "mp3": mfcc(coded)}
    return ClipFeatures(features, active_frames(audio), size / (audio.size / SAMPLE_RATE))


def window_starts(active: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Starts of up to MAX_WINDOWS_PER_CLIP non-overlapping, mostly non-silent windows."""
    starts = np.arange(0, active.size - length + 1, length)
    keep = [s for s in starts if active[s : s + length].mean() >= MIN_ACTIVE_FRACTION]
    if len(keep) > MAX_WINDOWS_PER_CLIP:
        keep = np.sort(rng.choice(keep, MAX_WINDOWS_PER_CLIP, replace=False))
    return np.asarray(keep, dtype=np.int64)


def length_key(length_s: float) -> str:
    return f"{length_s:g}s"


def clip_classification(scorer: Scorer, clips: list[Clip], prepared: list[ClipFeatures], seed: int) -> dict:
    """Classification reports per window length and condition (see the module docstring)."""
    result = {}
    for length_s in LENGTHS_S:
        frames = n_frames(int(length_s * SAMPLE_RATE))
        rng = np.random.default_rng([seed, int(length_s * 1000)])
        picks = [(i, s) for i, clip in enumerate(prepared) for s in window_starts(clip.active, frames, rng)]
        if not picks:
            raise CorpusError(f"no clip has {length_s:g} s of non-silent audio; the split is too small to evaluate")
        labels = np.array([clips[i].label for i, _ in picks])
        packages = np.array([clips[i].package for i, _ in picks])
        result[length_key(length_s)] = {
            condition: classification_report(labels, batched_probs(scorer, np.stack(
                [prepared[i].features[condition][s : s + frames].T for i, s in picks])).argmax(axis=1), packages)
            for condition in CONDITIONS
        }
    return result


def _segment(kind: int, clips_by_label: dict, rng: np.random.Generator) -> np.ndarray:
    n_samples = int(rng.uniform(*SEGMENT_S) * SAMPLE_RATE)
    if SEGMENT_KINDS[kind] == "silence":
        return (1e-4 * rng.standard_normal(n_samples)).astype(np.float32)  # -80 dBFS: a quiet room, not zeros
    candidates = clips_by_label[kind - 1]
    audio = load_audio(candidates[rng.integers(len(candidates))].path)
    start = int(rng.integers(0, max(1, audio.size - n_samples + 1)))
    return audio[start : start + n_samples]


def make_sequences(clips: list[Clip], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Concatenations of segments of changing kind: (audio, frame labels with -1 for silence)."""
    clips_by_label = {label: [c for c in clips if c.label == label] for label in range(len(LABELS))}
    sequences = []
    for _ in range(SEQUENCES):
        kinds = [int(rng.integers(len(SEGMENT_KINDS)))]
        while len(kinds) < SEGMENTS_PER_SEQUENCE:
            kinds.append(int(rng.choice([k for k in range(len(SEGMENT_KINDS)) if k != kinds[-1]])))
        segments = [_segment(kind, clips_by_label, rng) for kind in kinds]
        sample_labels = np.concatenate([np.full(s.size, kind - 1) for kind, s in zip(kinds, segments)])
        audio = np.concatenate(segments)
        centres = np.arange(n_frames(audio.size)) * HOP_LENGTH + WIN_LENGTH // 2
        sequences.append((audio, sample_labels[centres]))
    return sequences


def segmentation(scorer: Scorer, clips: list[Clip], seed: int) -> dict:
    """Frame accuracy on artificial concatenations, raw and median-filtered (see the module docstring)."""
    truth, raw, smoothed = [], [], []
    for audio, labels in make_sequences(clips, np.random.default_rng([seed, 7])):
        probs = scorer.frame_probs(mfcc(audio).T)
        scored = (labels >= 0) & active_frames(audio)
        filtered = scipy.ndimage.median_filter(probs, size=(MEDIAN_FRAMES, 1), mode="nearest")
        truth.append(labels[scored])
        raw.append(probs.argmax(axis=1)[scored])
        smoothed.append(filtered.argmax(axis=1)[scored])
    truth, raw, smoothed = (np.concatenate(x) for x in (truth, raw, smoothed))
    method = ("frame-wise causal logits of the whole sequence" if isinstance(scorer, TorchScorer)
              else f"trailing {STREAM_WINDOW_FRAMES}-frame windows every {STREAM_HOP_FRAMES} frames")
    return {
        "frames_scored": int(truth.size),
        "accuracy_raw": round(100.0 * float(np.mean(truth == raw)), 2),
        "accuracy_median": round(100.0 * float(np.mean(truth == smoothed)), 2),
        "median_report": classification_report(truth, smoothed),
        "method": f"{SEQUENCES} sequences of {SEGMENTS_PER_SEQUENCE} segments of {SEGMENT_S[0]:g} to "
                  f"{SEGMENT_S[1]:g} s ({', '.join(SEGMENT_KINDS)}); {method}; median filter "
                  f"{MEDIAN_FRAMES} frames per class probability; silent frames not scored.",
    }


@dataclass(frozen=True)
class SplitData:
    """A split's clips, featurised once under every condition, for scoring any number of models."""

    split: str
    clips: list
    prepared: list
    mp3_kbps: float


def prepare_split(corpus: Path, split: str = "test", workers: int = 2) -> SplitData:
    clips = select(read_manifest(corpus), split)
    prepared = parallel_map(clip_features, clips, workers, f"featurising {split} clips")
    kbps = 8.0 * float(np.mean([p.mp3_bytes_per_s for p in prepared])) / 1000
    return SplitData(split, clips, prepared, round(kbps, 1))


def split_metrics(scorer: Scorer, data: SplitData, seed: int = 0) -> dict:
    """All metrics of one model on one featurised split, deterministic for a given seed."""
    log.info("scoring %d %s clips", len(data.clips), data.split)
    return {
        "split": data.split,
        "seed": seed,
        "clips": len(data.clips),
        "method": f"Up to {MAX_WINDOWS_PER_CLIP} non-overlapping, mostly non-silent windows per clip; "
                  f"telephone: 8 kHz round trip and 300 to 3400 Hz band-pass; mp3: CBR round trip at "
                  f"{data.mp3_kbps:g} kbit/s.",
        "mp3_kbps": data.mp3_kbps,
        "clip_classification": clip_classification(scorer, data.clips, data.prepared, seed),
        "segmentation": segmentation(scorer, data.clips, seed),
    }


def evaluate(model_path: Path, corpus: Path, split: str = "test", seed: int = 0, workers: int = 2) -> dict:
    """All metrics of a checkpoint or ONNX model on one corpus split."""
    return split_metrics(load_scorer(model_path), prepare_split(corpus, split, workers), seed)


def mean_clean_accuracy(metrics: dict) -> float:
    """Clean clip accuracy averaged over the window lengths: the figure quantisation must keep."""
    return float(np.mean([lengths["clean"]["accuracy"] for lengths in metrics["clip_classification"].values()]))
