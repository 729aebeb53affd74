"""Evaluation of a checkpoint or an exported ONNX model on one corpus split.

Clip classification: from every clip, up to ``MAX_WINDOWS_PER_CLIP``
non-overlapping windows of 0.5, 1 and 2 s, drawn with a seeded generator from
the positions where at least half the frames are not silence (the paper
removed silence; a long track cannot dominate). Each window is scored as the
engine scores it at run time: every frame of the clip gets its causal logits
with the full history before it (the clip is a stream), and a window's
decision is the softmax of the mean logits of its non-silent frames
(``models.pool.frame_activity``, the runtime's default silence rule). Every metric is
computed three times: on the clean audio, through an 8 kHz telephone channel
(300 to 3400 Hz), and through a low-bitrate CBR MP3 round trip.

Segmentation: seeded artificial concatenations of silence, noise, speech and
music segments cut from the split's clips, each sound segment at a random
level. Frame labels come from the segment a frame's centre falls in; silent
frames (models.augment.active_frames) are not scored. The sequences go
through the streaming engine (service.stream.AudioStream, default settings),
exactly as the service and ``swishnet classify`` run them. Three figures:
the engine's segments (smoothing, silence gate and segment rules included:
what a user gets); its raw decisions, each dated to the middle of its window
as the engine dates them, with no smoothing; and those decisions after a
centred median filter of ``MEDIAN_FRAMES`` frames on each class's
probability (the paper's 200-frame filter, made odd so it is centred).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.ndimage

from models.augment import EVAL_MP3_COMPRESSION, active_frames, mp3_round_trip, set_level, telephone
from models.dataset import Clip, CorpusError, read_manifest, select
from models.metrics import classification_report
from models.pool import frame_activity, parallel_map
from models.labels import LABELS
from service.audio import load_audio
from service.cli import CommandError
from service.events import LabelEvent, SegmentEvent
from service.features import HOP_LENGTH, N_MFCC, SAMPLE_RATE, WIN_LENGTH, mfcc, n_frames
from service.inference import open_session, pooled_probs, predict_windows, session_frame_logits
from service.stream import AudioStream, Decision, StreamConfig

log = logging.getLogger(__name__)

LENGTHS_S = (0.5, 1.0, 2.0)
CONDITIONS = ("clean", "telephone", "mp3")
MAX_WINDOWS_PER_CLIP = 8
MIN_ACTIVE_FRACTION = 0.5
MEDIAN_FRAMES = 201
SEGMENT_KINDS = ("silence", *LABELS)
SEGMENT_S = (1.0, 6.0)
SEGMENT_LEVEL_DBFS = (-35.0, -15.0)
SEGMENTS_PER_SEQUENCE = 10
SEQUENCES = 24
NOT_SCORED = -1  # frame label of silence (truth) or of a silent decision (prediction)


class Scorer(Protocol):
    """What evaluation scores: the interface of service.inference.Classifier, so the engine can run it."""

    labels: tuple[str, ...]
    receptive_field_frames: int

    def frame_logits(self, frames: np.ndarray) -> np.ndarray:
        """(batch, frames, N_MFCC) raw MFCCs -> (batch, frames, classes) causal logits."""


class TorchScorer:
    """A checkpoint, scored like its exported model."""

    labels = LABELS

    def __init__(self, model) -> None:
        import torch

        self.torch, self.model = torch, model.eval()
        self.receptive_field_frames = model.config.receptive_field

    def frame_logits(self, frames: np.ndarray) -> np.ndarray:
        channels_first = self.torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 2, 1), dtype=np.float32))
        with self.torch.no_grad():
            return self.model.frame_logits(channels_first).numpy()

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities of whole windows scored without left context (the network's own pooling)."""
        return pooled_probs(self.frame_logits(windows))


class OnnxScorer:
    """An exported model, run by onnxruntime as the service runs it (no card needed: it may not exist yet)."""

    labels = LABELS

    def __init__(self, path: Path, threads: int = 2) -> None:
        self.session = open_session(Path(path), Path(path).read_bytes(), threads)
        self.receptive_field_frames = receptive_field(self)

    def frame_logits(self, frames: np.ndarray) -> np.ndarray:
        return session_frame_logits(self.session, frames)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return predict_windows(self.session, windows)


def receptive_field(scorer, probe_frames: int = 400) -> int:
    """Frames one output sees, measured: how far a change of the first input frame reaches."""
    quiet = np.zeros((1, probe_frames, N_MFCC), dtype=np.float32)
    changed = quiet.copy()
    changed[0, 0] = 10.0
    reach = np.flatnonzero(np.abs(scorer.frame_logits(changed) - scorer.frame_logits(quiet))[0].max(axis=1) > 1e-6)
    return int(reach[-1]) + 1 if reach.size else 1


def load_scorer(path: Path) -> Scorer:
    """A TorchScorer for a .pt checkpoint, an OnnxScorer for a .onnx file."""
    path = Path(path)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CommandError(f"no ONNX model at {path}")
        return OnnxScorer(path)
    from models.swishnet import load_checkpoint

    return TorchScorer(load_checkpoint(path)[0])


@dataclass(frozen=True)
class ClipFeatures:
    """One clip's MFCCs under each condition, its non-silent frames, and bytes per second of its MP3."""

    features: dict  # condition -> (frames, N_MFCC)
    active: np.ndarray  # frames not silent relative to the clip (where windows are drawn)
    audible: np.ndarray  # frames the runtime would not call silent (what a decision pools)
    mp3_bytes_per_s: float


def clip_features(clip: Clip) -> ClipFeatures:
    """Decode a clip and featurise it clean, through the telephone channel and through MP3."""
    audio = load_audio(clip.path)
    coded, size = mp3_round_trip(audio, EVAL_MP3_COMPRESSION)
    features = {"clean": mfcc(audio), "telephone": mfcc(telephone(audio)), "mp3": mfcc(coded)}
    return ClipFeatures(features, active_frames(audio), frame_activity(audio), size / (audio.size / SAMPLE_RATE))


def window_starts(active: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Starts of up to MAX_WINDOWS_PER_CLIP non-overlapping, mostly non-silent windows."""
    starts = np.arange(0, active.size - length + 1, length)
    keep = [s for s in starts if active[s : s + length].mean() >= MIN_ACTIVE_FRACTION]
    if len(keep) > MAX_WINDOWS_PER_CLIP:
        keep = np.sort(rng.choice(keep, MAX_WINDOWS_PER_CLIP, replace=False))
    return np.asarray(keep, dtype=np.int64)


def length_key(length_s: float) -> str:
    return f"{length_s:g}s"


def window_decisions(logits: np.ndarray, audible: np.ndarray, starts: np.ndarray, frames: int) -> np.ndarray:
    """Class index of each window ``[start, start + frames)``: argmax of the mean logits of its audible
    frames (of all its frames when none is audible), as the engine decides."""
    decisions = []
    for start in starts:
        weights = audible[start : start + frames].astype(np.float64)
        if not weights.any():
            weights = np.ones(frames)
        decisions.append(int(np.argmax(weights @ logits[start : start + frames])))
    return np.array(decisions, dtype=np.int64)


def clip_classification(scorer: Scorer, clips: list[Clip], prepared: list[ClipFeatures], seed: int) -> dict:
    """Classification reports per window length and condition (see the module docstring)."""
    picks = {}
    for length_s in LENGTHS_S:
        frames = n_frames(int(length_s * SAMPLE_RATE))
        rng = np.random.default_rng([seed, int(length_s * 1000)])
        picks[length_s] = [window_starts(clip.active, frames, rng) for clip in prepared]
        if not any(len(starts) for starts in picks[length_s]):
            raise CorpusError(f"no clip has {length_s:g} s of non-silent audio; the split is too small to evaluate")
    predicted = {(length_s, condition): [] for length_s in LENGTHS_S for condition in CONDITIONS}
    for index, clip in enumerate(prepared):
        for condition in CONDITIONS:
            logits = scorer.frame_logits(clip.features[condition][None])[0].astype(np.float64)
            for length_s in LENGTHS_S:
                starts = picks[length_s][index]
                predicted[length_s, condition].append(window_decisions(
                    logits, clip.audible, starts, n_frames(int(length_s * SAMPLE_RATE))))
    result = {}
    for length_s in LENGTHS_S:
        labels = np.concatenate([np.full(len(s), clips[i].label) for i, s in enumerate(picks[length_s])])
        packages = np.concatenate([np.full(len(s), clips[i].package) for i, s in enumerate(picks[length_s])])
        result[length_key(length_s)] = {
            condition: classification_report(labels, np.concatenate(predicted[length_s, condition]), packages)
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
    return set_level(audio[start : start + n_samples], rng.uniform(*SEGMENT_LEVEL_DBFS))


def make_sequences(clips: list[Clip], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Concatenations of segments of changing kind: (audio, frame labels, NOT_SCORED for silence)."""
    clips_by_label = {label: [c for c in clips if c.label == label] for label in range(len(LABELS))}
    sequences = []
    for _ in range(SEQUENCES):
        kinds = [int(rng.integers(len(SEGMENT_KINDS)))]
        while len(kinds) < SEGMENTS_PER_SEQUENCE:
            kinds.append(int(rng.choice([k for k in range(len(SEGMENT_KINDS)) if k != kinds[-1]])))
        segments = [_segment(kind, clips_by_label, rng) for kind in kinds]
        sample_labels = np.concatenate([np.full(s.size, kind - 1) for kind, s in zip(kinds, segments)])
        audio = np.concatenate(segments)
        sequences.append((audio, sample_labels[frame_centres(audio.size)]))
    return sequences


def frame_centres(n_samples: int) -> np.ndarray:
    """Sample index of the centre of every MFCC frame of ``n_samples`` of audio."""
    return np.arange(n_frames(n_samples)) * HOP_LENGTH + WIN_LENGTH // 2


@dataclass(frozen=True)
class EngineFrames:
    """One sequence through the engine, on the MFCC frame grid."""

    segments: np.ndarray  # label index of the segment each frame lies in, NOT_SCORED for silence
    decisions: np.ndarray  # (frames, classes) probabilities of the decision nearest each frame, 0 when silent


def engine_frames(scorer: Scorer, audio: np.ndarray, config: StreamConfig) -> EngineFrames:
    """Run ``audio`` through an AudioStream and spread its segments and decisions over the frames."""
    stream = AudioStream(scorer, config)
    events = stream.push(audio) + stream.flush()
    times = frame_centres(audio.size) / SAMPLE_RATE
    segments = [e for e in events if isinstance(e, SegmentEvent)]
    ends = np.array([segment.end for segment in segments])
    names = [segment.label for segment in segments]
    index = np.minimum(np.searchsorted(ends, times), len(segments) - 1)
    segment_labels = np.array([scorer.labels.index(n) if n in scorer.labels else NOT_SCORED for n in names])
    hops = [e for e in events if isinstance(e, LabelEvent)]
    centres = np.array([Decision.at(round(e.time * SAMPLE_RATE / HOP_LENGTH), config).centre_tick for e in hops])
    probs = np.array([[e.probs[label] for label in scorer.labels] for e in hops], dtype=np.float32)
    nearest = np.abs((times * SAMPLE_RATE / HOP_LENGTH)[:, None] - centres[None, :]).argmin(axis=1)
    return EngineFrames(segment_labels[index], probs[nearest])


def _argmax_or_silent(probs: np.ndarray) -> np.ndarray:
    return np.where(probs.sum(axis=1) > 0, probs.argmax(axis=1), NOT_SCORED)


def segmentation(scorer: Scorer, clips: list[Clip], seed: int) -> dict:
    """Frame accuracy on artificial concatenations through the engine (see the module docstring)."""
    config = StreamConfig()
    truth, engine, raw, smoothed = [], [], [], []
    for audio, labels in make_sequences(clips, np.random.default_rng([seed, 7])):
        frames = engine_frames(scorer, audio, config)
        scored = (labels >= 0) & active_frames(audio)
        filtered = scipy.ndimage.median_filter(frames.decisions, size=(MEDIAN_FRAMES, 1), mode="nearest")
        truth.append(labels[scored])
        engine.append(frames.segments[scored])
        raw.append(_argmax_or_silent(frames.decisions)[scored])
        smoothed.append(_argmax_or_silent(filtered)[scored])
    truth, engine, raw, smoothed = (np.concatenate(x) for x in (truth, engine, raw, smoothed))
    called = engine != NOT_SCORED
    return {
        "frames_scored": int(truth.size),
        "accuracy_engine": round(100.0 * float(np.mean(truth == engine)), 2),
        "accuracy_raw": round(100.0 * float(np.mean(truth == raw)), 2),
        "accuracy_median": round(100.0 * float(np.mean(truth == smoothed)), 2),
        "engine_silence_percent": round(100.0 * float(np.mean(~called)), 2),
        "engine_report": classification_report(truth[called], engine[called]),
        "method": f"{SEQUENCES} sequences of {SEGMENTS_PER_SEQUENCE} segments of {SEGMENT_S[0]:g} to "
                  f"{SEGMENT_S[1]:g} s ({', '.join(SEGMENT_KINDS)}), sound segments at {SEGMENT_LEVEL_DBFS[0]:g} to "
                  f"{SEGMENT_LEVEL_DBFS[1]:g} dBFS; streaming engine with default settings ({config.window_s:g} s "
                  f"window every {config.hop_s:g} s); engine: its segments; raw: its decisions, each dated to "
                  f"the middle of its window; median: raw after a {MEDIAN_FRAMES}-frame median filter per class "
                  "probability; silent frames not scored, frames the engine calls silence count as errors.",
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
