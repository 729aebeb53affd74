"""The streaming engine: audio chunks in, label and segment events out.

One ``AudioStream`` per connection or microphone; one classifier shared by
all of them. Offline classification (``classify_audio``, ``classify_file``)
pushes the whole recording through the same ``AudioStream``, block by block.

Every MFCC frame goes through the network once. A stream keeps the last
``receptive_field_frames - 1`` frames of MFCC history as left context, scores
only its new frames with that context (``feed``, then a scorer, then
``complete``: ``push`` runs the three in a row; the server batches the middle
step across all its streams, see service.batching), and keeps the frame
logits of the last window. The network is causal, so a frame's logits are
the same whatever the chunking.

Timing, in seconds from the start of the stream:

- Audio is cut into hops of ``hop_s``. After each hop a decision is made on
  the window of MFCC frames that ends with it: no decision until
  ``WARMUP_S`` (0.5 s) of audio has arrived; after that the window grows with
  the stream up to ``window_s``. The first label therefore comes 0.5 s after
  the start (rounded up to a whole hop).
- A decision's probabilities are the softmax of the mean frame logits of the
  window's non-silent frames. A frame is silent when the ``hop_s`` of audio
  around it (clipped to the window) is below ``silence_threshold_db`` (dBFS);
  the hop is silence, whatever the model says, when the window's middle frame
  is silent. The work per hop does not grow with the window: the sums of
  logits over frames whose silence test the window's edges cannot change are
  kept as running prefix sums, and only the frames within half a hop of the
  window's edges are tested at each decision.
- A LabelEvent's ``time`` is the end of the audio seen at that decision.
- A decision describes the middle of its window, about half a window before
  ``time``.
- Smoothing confirms a change a fixed number of hops late; a segment boundary
  is dated back to half-way between the window middles of the last hop of the
  old label and the first of the new, so boundaries land near the true change.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from service.audio import AudioError, AudioSource, decoded_blocks, open_audio
from service.batching import FrameRequest, score_requests
from service.buffers import BLOCKS_PER_FRAME, BLOCKS_PER_HOP, BlockEnergy, History
from service.events import SILENCE, Event, LabelEvent, Segmenter, SegmentEvent
from service.features import HOP_LENGTH, N_MFCC, SAMPLE_RATE, WIN_LENGTH, StreamingMfcc, n_frames
from service.pcm import StreamInput
from service.smoothing import LabelSmoother

__all__ = [
    "EVENT_MODES", "OPTION_FIELDS", "AudioStream", "Event", "FileResult", "FrameScorer", "LabelEvent",
    "SegmentEvent", "StreamConfig", "classify_audio", "classify_file", "file_events",
]

WARMUP_S = 0.5  # the shortest window scored: the paper's shortest clip
MIN_WINDOW_S, MAX_WINDOW_S = WARMUP_S, 10.0
MIN_HOP_S, MAX_HOP_S = HOP_LENGTH / SAMPLE_RATE, WARMUP_S
MAX_BLOCK_SAMPLES = 10 * SAMPLE_RATE  # long pushes are processed in blocks: bounded memory, one scoring call each
_TICK_S = HOP_LENGTH / SAMPLE_RATE  # one MFCC hop, the engine's time grid
# The knobs users set, by their user-facing names: HTTP query parameters, and CLI options after "--".
OPTION_FIELDS = {"window": "window_s", "hop": "hop_s", "silence_threshold": "silence_threshold_db",
                 "min_segment": "min_segment_s", "min_pause": "min_pause_s"}
# What a stream returns: a label event every hop, label events only when the smoothed label changes,
# or segment events only. Segment events come in every mode.
EVENT_MODES = ("labels", "changes", "segments")


class FrameScorer(Protocol):
    """What the engine scores with: service.inference.Classifier, or any causal frame-logit model."""

    labels: tuple[str, ...]
    receptive_field_frames: int

    def frame_logits(self, frames: np.ndarray) -> np.ndarray:
        """(batch, frames, N_MFCC) raw MFCCs -> (batch, frames, classes) causal logits."""


def _ticks(seconds: float, name: str) -> int:
    """``seconds`` as a whole number of 10 ms feature hops, or ValueError."""
    ticks = round(seconds / _TICK_S)
    if not math.isclose(ticks * _TICK_S, seconds, abs_tol=1e-9):
        raise ValueError(f"{name} must be a multiple of {_TICK_S * 1000:g} ms, got {seconds!r}")
    return ticks


@dataclass(frozen=True)
class StreamConfig:
    """Runtime knobs of one stream; every field is checked at construction."""

    window_s: float = 1.0
    """Analysis window scored at each hop, 0.5 to 10 s, a multiple of 10 ms."""
    hop_s: float = 0.1
    """Time between decisions, 10 ms to 0.5 s, a multiple of 10 ms."""
    silence_threshold_db: float = -50.0
    """Audio whose RMS over hop_s is below this (dBFS, full-scale square wave = 0) is silence."""
    min_segment_s: float = 0.3
    """Shorter runs of a label are absorbed by the segment before them."""
    min_pause_s: float = 0.5
    """A shorter interruption between two runs of the same label is absorbed."""
    median_hops: int = 5
    """Causal median filter length over per-hop scores (odd; 1 turns it off)."""
    switch_hops: int = 3
    """Hysteresis: a new label must win this many consecutive hops."""
    events: str = "labels"
    """What push returns besides segment events: "labels" (a label event every hop), "changes" (a label
    event only when the smoothed label changes) or "segments" (no label events)."""

    def __post_init__(self) -> None:
        self._check_range("window_s", MIN_WINDOW_S, MAX_WINDOW_S)
        self._check_range("hop_s", MIN_HOP_S, MAX_HOP_S)
        self._check_range("silence_threshold_db", -150.0, 0.0)
        self._check_range("min_segment_s", 0.0, 60.0)
        self._check_range("min_pause_s", 0.0, 60.0)
        self._check_range("median_hops", 1, 51, integer=True)
        self._check_range("switch_hops", 1, 50, integer=True)
        if self.median_hops % 2 == 0:
            raise ValueError(f"median_hops must be odd, so that the median is one of the hops, got {self.median_hops}")
        if self.events not in EVENT_MODES:
            raise ValueError(f"events must be one of {', '.join(EVENT_MODES)}, got {self.events!r}")
        _ticks(self.window_s, "window_s")
        _ticks(self.hop_s, "hop_s")

    @classmethod
    def from_options(cls, **options: float | None) -> StreamConfig:
        """A config from the user-facing knobs of OPTION_FIELDS; None keeps the default.

        Invalid values raise ValueError with a message that starts with the option's name.
        """
        unknown = set(options) - set(OPTION_FIELDS)
        if unknown:
            raise TypeError(f"unknown stream options: {sorted(unknown)}")
        try:
            return cls(**{OPTION_FIELDS[name]: value for name, value in options.items() if value is not None})
        except ValueError as error:  # its message starts with the field's name
            field, rest = str(error).split(" ", 1)
            names = {f: name for name, f in OPTION_FIELDS.items()}
            raise ValueError(f"{names.get(field, field)} {rest}") from None

    def _check_range(self, name: str, low: float, high: float, integer: bool = False) -> None:
        value = getattr(self, name)
        kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{name} must be {kind} from {low:g} to {high:g}, got {value!r}")

    @property
    def window_ticks(self) -> int:
        return _ticks(self.window_s, "window_s")

    @property
    def hop_ticks(self) -> int:
        return _ticks(self.hop_s, "hop_s")

    @property
    def window_frames(self) -> int:
        return n_frames(self.window_ticks * HOP_LENGTH)

    @property
    def first_decision_tick(self) -> int:
        """The warm-up rounded up to a whole hop, in 10 ms ticks."""
        warmup_ticks = _ticks(WARMUP_S, "WARMUP_S")
        return -(-warmup_ticks // self.hop_ticks) * self.hop_ticks

    @property
    def first_decision_s(self) -> float:
        """Stream time of the first label event: the first-decision latency."""
        return self.first_decision_tick * _TICK_S


@dataclass(frozen=True)
class Decision:
    """Where one decision lies on the time grid of 10 ms ticks (feature hops)."""

    tick: int  # end of the audio seen
    frame_range: tuple[int, int]  # the window's MFCC frames

    @classmethod
    def at(cls, tick: int, config: StreamConfig) -> Decision:
        end = n_frames(tick * HOP_LENGTH)
        return cls(tick, (end - min(config.window_frames, end), end))

    @property
    def centre_frame(self) -> int:
        """Index of the window's middle frame, within the window."""
        return (self.frame_range[1] - self.frame_range[0]) // 2

    @property
    def centre_tick(self) -> int:
        """The middle of the window's middle frame: the time the decision describes."""
        return self.frame_range[0] + self.centre_frame + 1


class SilenceRule:
    """Which frames of a window are silent, with the rule of the module docstring, at a cost per decision
    that does not grow with the window.

    A frame's neighbourhood is the ``hop_s`` of energy blocks centred on it, shifted right to start at
    the window's first block when it would start before it, and cut at the window's last block. Only
    the first ``edge_low`` and last ``edge_high`` frames of a window can be affected by those two edges;
    the frames between are tested once, on their own neighbourhood, when its blocks have arrived.
    """

    def __init__(self, config: StreamConfig) -> None:
        self.span = config.hop_ticks * BLOCKS_PER_HOP  # blocks in a neighbourhood
        self.power = 10 ** (config.silence_threshold_db / 10)
        # frame i's neighbourhood starts at block i * BLOCKS_PER_HOP + offset
        self.offset = BLOCKS_PER_FRAME // 2 - self.span // 2
        self.edge_low = max(0, -(self.offset // BLOCKS_PER_HOP))
        self.edge_high = max(0, -((BLOCKS_PER_FRAME - self.offset - self.span) // BLOCKS_PER_HOP))
        # a decision tests its centre frame, then its edge frames: edge_low from the window's first frame,
        # edge_high from the end of its interior (column 0 is the centre)
        self.edge_steps = np.r_[0, np.arange(self.edge_low), np.arange(self.edge_high)]
        self.from_interior_end = np.r_[False, np.zeros(self.edge_low, bool), np.ones(self.edge_high, bool)]

    def interior_ready(self, blocks: int) -> int:
        """How many frames' own neighbourhoods lie within the first ``blocks`` energy blocks."""
        return max(0, (blocks - self.offset - self.span) // BLOCKS_PER_HOP + 1)

    def interior_loud(self, frames: np.ndarray, cumulative: History) -> np.ndarray:
        """The test of frames away from any window edge; frames whose neighbourhood starts before the
        stream never are, and get False."""
        start = frames * BLOCKS_PER_HOP + self.offset
        blocks = np.maximum(np.stack([start + self.span, start]), 0)  # clipped: only read, never used, before 0
        ends, starts = cumulative.at(blocks)
        return ((ends - starts) / self.span >= self.power) & (start >= 0)

    def loud(self, frames: np.ndarray, first: np.ndarray, end: np.ndarray, cumulative: History) -> np.ndarray:
        """The test of ``frames`` in windows of frames ``first`` to ``end`` (arrays that broadcast)."""
        start = np.maximum(frames * BLOCKS_PER_HOP + self.offset, first * BLOCKS_PER_HOP)
        stop = np.minimum(start + self.span, (end - 1) * BLOCKS_PER_HOP + BLOCKS_PER_FRAME)
        at_stop, at_start = cumulative.at(np.stack([stop, start]))
        return (at_stop - at_start) / (stop - start) >= self.power


class AudioStream:
    """One live stream: ``push`` chunks of any size, get label and segment events.

    ``sample_rate``, ``channels`` and ``encoding`` describe what ``push`` gets:
    bytes in ``encoding`` ("pcm_s16le" or "pcm_f32le", interleaved), or an
    array of float or int16 samples, (n,) or (n, channels). Not thread-safe:
    one per stream; the scorer may be shared.

    ``push`` = ``blocks`` of 16 kHz audio, each through ``feed`` (features, the
    frames to score), a scorer, and ``complete`` (decisions, events). The server
    runs the same three steps with the scoring batched across streams.
    """

    def __init__(self, scorer: FrameScorer, config: StreamConfig | None = None, *,
                 sample_rate: float = SAMPLE_RATE, channels: int = 1, encoding: str = "pcm_f32le") -> None:
        self.scorer = scorer
        self.config = config = config or StreamConfig()
        self.labels: tuple[str, ...] = (*scorer.labels, SILENCE)
        self._input = StreamInput(sample_rate, channels, encoding)
        self._mfcc = StreamingMfcc()
        self._energy = BlockEnergy()
        self._rule = SilenceRule(config)
        n_classes, window = len(scorer.labels), config.window_frames
        self._context = History(max(scorer.receptive_field_frames - 1, 0), (N_MFCC,))
        self._logits = History(window + 1, (n_classes,))
        # prefix sums over the frames found loud away from window edges: their logits, then their count
        self._loud_sums = History(window + 1, (n_classes + 1,), np.float64)
        self._energy_sums = History((config.window_ticks + 2 * config.hop_ticks) * BLOCKS_PER_HOP + BLOCKS_PER_FRAME,
                                    (), np.float64)  # prefix sums of block energies
        self._smoother = LabelSmoother(config.median_hops, config.switch_hops)
        self._segmenter = Segmenter(self.labels, self._smoother.lag_hops, config.min_segment_s, config.min_pause_s)
        self.tally = HopTally(n_classes)
        self.reset()

    @property
    def time_s(self) -> float:
        """Seconds of (16 kHz) audio processed so far."""
        return self._samples_seen / SAMPLE_RATE

    def push(self, chunk: np.ndarray | bytes | bytearray | memoryview) -> list[Event]:
        """Add audio; return the events it completes (possibly none)."""
        events: list[Event] = []
        for block in self.blocks(chunk):
            events += self.process(block)
        return events

    def flush(self) -> list[Event]:
        """End the stream: close the last segment at the end of the audio, then reset."""
        return self.process(self.finish_input()) + self.end()

    def process(self, samples: np.ndarray) -> list[Event]:
        """``feed`` 16 kHz samples, score their frames with this stream's scorer alone, ``complete``."""
        return self.complete(score_requests(self.scorer, [self.feed(samples)])[0])

    def blocks(self, chunk: np.ndarray | bytes | bytearray | memoryview) -> Iterator[np.ndarray]:
        """The chunk as 16 kHz mono float32, in blocks of at most MAX_BLOCK_SAMPLES (AudioError if invalid)."""
        samples = self._input.convert(chunk)
        for start in range(0, samples.size, MAX_BLOCK_SAMPLES):
            yield samples[start : start + MAX_BLOCK_SAMPLES]

    def finish_input(self) -> np.ndarray:
        """The last samples the input converter holds back (resampler tail), as 16 kHz audio."""
        return self._input.finish()

    def end(self) -> list[Event]:
        """After the last ``complete``: the events that end the stream; then reset."""
        events = self._segmenter.flush(self.time_s)
        self.reset()
        return list(events)

    def reset(self) -> None:
        """Forget everything, as for a new stream starting at time 0."""
        for part in (self._input, self._mfcc, self._energy, self._context, self._logits, self._loud_sums,
                     self._energy_sums, self._smoother, self._segmenter, self.tally):
            part.reset()
        self._loud_sums.extend(np.zeros((1, len(self.scorer.labels) + 1)))
        self._energy_sums.extend(np.zeros(1))
        self._samples_seen = 0
        self._next_tick = self.config.first_decision_tick

    def feed(self, samples: np.ndarray) -> FrameRequest:
        """Take 16 kHz samples: compute their MFCC frames (one vectorised call) and energies; return the
        new frames with their left context, for a scorer."""
        self._samples_seen += samples.size
        frames = self._mfcc.push(samples)
        energies = self._energy.push(samples)
        if energies.size:
            cumulative = np.cumsum(np.concatenate([self._energy_sums.last(1), energies.astype(np.float64)]))
            self._energy_sums.extend(cumulative[1:])
        context = self._context.last(self._context.keep) if self._context.keep else frames[:0]
        request = FrameRequest(np.concatenate([context, frames]) if len(context) else frames, len(frames))
        self._context.extend(frames)
        return request

    def complete(self, logits: np.ndarray) -> list[Event]:
        """Take the logits of the frames the last ``feed`` returned; make the decisions they complete."""
        self._logits.extend(logits)
        self._extend_loud_sums()
        ticks = np.arange(self._next_tick, self._samples_seen // HOP_LENGTH + 1, self.config.hop_ticks)
        if not ticks.size:
            return []
        self._next_tick = int(ticks[-1]) + self.config.hop_ticks
        probs, silent, centre_ticks = self._decisions(ticks)
        return self._events(ticks, probs, silent, centre_ticks)

    def _extend_loud_sums(self) -> None:
        """Prefix sums of logits and counts over frames found loud away from window edges, as far as both
        their logits and their neighbourhood's energy have arrived."""
        done = self._loud_sums.total - 1
        ready = min(self._logits.total, self._rule.interior_ready(self._energy_sums.total - 1))
        if ready <= done:
            return
        loud = self._rule.interior_loud(np.arange(done, ready), self._energy_sums)
        rows = np.empty((ready - done + 1, len(self.scorer.labels) + 1))
        rows[0] = self._loud_sums.last(1)[0]
        rows[1:, :-1] = self._logits.slice(done, ready) * loud[:, None]
        rows[1:, -1] = loud
        self._loud_sums.extend(np.cumsum(rows, axis=0)[1:])

    def _decisions(self, ticks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities (0 when silent), silence and the centre tick of the decisions at ``ticks``."""
        rule = self._rule
        end = 1 + (ticks * HOP_LENGTH - WIN_LENGTH) // HOP_LENGTH  # n_frames: ticks start past the warm-up
        first = end - np.minimum(self.config.window_frames, end)
        centre = first + (end - first) // 2
        # frames whose test the window's edges cannot change: running sums; the others are tested here
        inner_start = np.minimum(first + rule.edge_low, end)
        inner_end = np.maximum(end - rule.edge_high, inner_start)
        inner_end_sums, inner_start_sums = self._loud_sums.at(np.stack([inner_end, inner_start]))
        inner = inner_end_sums - inner_start_sums  # logit sums, then the count
        # column 0: the centre frame; then the edge frames, each valid only inside its edge
        base = np.where(rule.from_interior_end, inner_end[:, None], first[:, None])
        frames = base + rule.edge_steps
        frames[:, 0] = centre
        limit = np.where(rule.from_interior_end, end[:, None], inner_start[:, None])
        valid = frames < limit
        valid[:, 0] = False
        frames = np.where(valid, frames, centre[:, None])
        loud = rule.loud(frames, first[:, None], end[:, None], self._energy_sums)
        silent = ~loud[:, 0]
        loud &= valid
        sums = inner[:, :-1] + np.einsum("kf,kfc->kc", loud, self._logits.at(frames))
        probs = softmax(sums / np.maximum(inner[:, -1] + loud.sum(axis=1), 1)[:, None])
        probs[silent] = 0.0
        return probs, silent, centre + 1

    def _events(self, ticks: np.ndarray, probs: np.ndarray, silent: np.ndarray,
                centre_ticks: np.ndarray) -> list[Event]:
        """Smooth and segment each hop; the events of the stream's mode."""
        mode, names, model_labels = self.config.events, self.labels, self.scorer.labels
        self.tally.add(probs, silent)
        scores = np.zeros((len(ticks), len(names)))
        scores[:, :-1] = probs
        scores[silent, -1] = 1.0
        changes = self._smoother.update_many(scores)
        events: list[Event] = []
        rows = zip(ticks.tolist(), centre_ticks.tolist(), scores, probs.tolist(), self._smoother.label_after, changes)
        for tick, centre_tick, hop_scores, hop_probs, label, changed in rows:
            if mode == "labels" or (mode == "changes" and changed):
                events.append(LabelEvent(tick * _TICK_S, names[label], dict(zip(model_labels, hop_probs))))
            events += self._segmenter.add(centre_tick * _TICK_S, hop_scores, label, changed)
        return events


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


class HopTally:
    """Running totals of a stream's decisions, for a file's summary: no label events need to be kept."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.reset()

    def add(self, probs: np.ndarray, silent: np.ndarray) -> None:
        """Probabilities of some hops, 0 for the silent ones."""
        self.hops += len(probs)
        self.voiced_hops += len(probs) - int(silent.sum())
        self.prob_sum += probs.sum(axis=0, dtype=np.float64)

    def reset(self) -> None:
        self.hops = self.voiced_hops = 0
        self.prob_sum = np.zeros(self.n_classes)


@dataclass(frozen=True)
class FileResult:
    """Offline result for one recording."""

    file: str | None
    duration_s: float
    label: str
    """The class with the highest mean probability over non-silent hops; "silence" if there are none."""
    probs: dict[str, float]
    """Mean model probabilities over the non-silent hops (all 0 if there are none)."""
    segments: tuple[SegmentEvent, ...]

    def to_dict(self) -> dict:
        segments = [segment.to_dict() for segment in self.segments]
        for segment in segments:
            del segment["type"]
        return {
            "file": self.file,
            "duration": round(self.duration_s, 3),
            "label": self.label,
            "probs": {name: round(p, 4) for name, p in self.probs.items()},
            "segments": segments,
        }


Progress = Callable[[float, float], None]
"""Called after each block with the seconds of audio processed so far and in all."""


def _run(stream: AudioStream, blocks: Iterable[np.ndarray], total_s: float, file: str | None,
         progress: Progress | None) -> FileResult:
    segments: list[SegmentEvent] = []
    for block in blocks:
        segments += stream.push(block)
        if progress is not None:
            progress(stream.time_s, total_s)
    segments += stream.process(stream.finish_input())
    duration_s, tally = stream.time_s, stream.tally
    hops, voiced, prob_sum = tally.hops, tally.voiced_hops, tally.prob_sum.copy()
    segments += stream.end()  # the last segment ends at the audio's end; the stream resets itself
    if not hops:
        raise AudioError(f"audio is {duration_s:.2f} s long; classification needs at least {WARMUP_S:g} s")
    labels = stream.scorer.labels
    mean = prob_sum / max(voiced, 1)
    label = labels[int(np.argmax(mean))] if voiced else SILENCE
    probs = {name: float(p) for name, p in zip(labels, mean)}
    return FileResult(file, segments[-1].end if segments else duration_s, label, probs, tuple(segments))


def _file_stream(scorer: FrameScorer, config: StreamConfig | None) -> AudioStream:
    """A stream that returns segment events only: a file's result needs no label events."""
    return AudioStream(scorer, replace(config or StreamConfig(), events="segments"))


def classify_audio(audio: np.ndarray, scorer: FrameScorer, config: StreamConfig | None = None, *,
                   file: str | None = None, progress: Progress | None = None) -> FileResult:
    """Classify float32 mono 16 kHz audio (as service.audio.load_audio gives) through an AudioStream."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(f"expected mono 16 kHz audio of shape (samples,), got {audio.shape}")
    stream = _file_stream(scorer, config)
    blocks = (audio[start : start + MAX_BLOCK_SAMPLES] for start in range(0, audio.size, MAX_BLOCK_SAMPLES))
    return _run(stream, blocks, audio.size / SAMPLE_RATE, file, progress)


def classify_file(source: AudioSource, scorer: FrameScorer, config: StreamConfig | None = None, *,
                  file: str | None = None, max_duration_s: float | None = None,
                  progress: Progress | None = None) -> FileResult:
    """Classify an audio file (a path, bytes or a binary file object), decoded and resampled block by
    block: memory is bounded by the block, not the file. ``file`` names it in the result (default: the
    path). Raises AudioError as service.audio.load_audio does."""
    if file is None and isinstance(source, (str, os.PathLike)):
        file = os.fspath(source)
    with open_audio(source, max_duration_s=max_duration_s) as handle:
        total_s = handle.frames / handle.samplerate
        return _run(_file_stream(scorer, config), decoded_blocks(handle, max_duration_s), total_s, file, progress)


def file_events(source: AudioSource, scorer: FrameScorer, config: StreamConfig | None = None, *,
                max_duration_s: float | None = None, progress: Progress | None = None) -> Iterator[Event]:
    """The events a stream of the file gives (label events as ``config.events`` says, and segments),
    decoded block by block as classify_file does."""
    stream = AudioStream(scorer, config)
    with open_audio(source, max_duration_s=max_duration_s) as handle:
        total_s = handle.frames / handle.samplerate
        for block in decoded_blocks(handle, max_duration_s):
            yield from stream.push(block)
            if progress is not None:
                progress(stream.time_s, total_s)
    yield from stream.flush()
