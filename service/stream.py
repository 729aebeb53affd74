"""The streaming engine: audio chunks in, label and segment events out.

One ``AudioStream`` per connection or microphone; one ``Classifier`` shared
by all of them. Offline classification (``classify_audio``, ``classify_file``)
pushes the whole recording through the same ``AudioStream``.

Timing, in seconds from the start of the stream:

- Audio is cut into hops of ``hop_s``. After each hop a decision is made on
  the window of MFCC frames that ends with it: no decision until
  ``WARMUP_S`` (0.5 s) of audio has arrived; after that the window grows with
  the stream up to ``window_s``. The first label therefore comes 0.5 s after
  the start (rounded up to a whole hop).
- A LabelEvent's ``time`` is the end of the audio seen at that decision.
- A decision describes the middle of its window, about half a window before
  ``time``. A frame is silent when the ``hop_s`` of audio around it is below
  ``silence_threshold_db`` (dBFS); the model scores only the window's other
  frames, and the hop is silence, whatever the model says, when the
  window's middle frame is silent.
- Smoothing confirms a change a fixed number of hops late; a segment boundary
  is dated back to half-way between the window middles of the last hop of the
  old label and the first of the new, so boundaries land near the true change.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from service.audio import AudioError, AudioSource, decoded_blocks, open_audio
from service.buffers import (
    BLOCKS_PER_FRAME,
    BLOCKS_PER_HOP,
    BlockEnergy,
    History,
    frame_neighbourhood_energies,
)
from service.events import SILENCE, Event, LabelEvent, Segmenter, SegmentEvent
from service.features import HOP_LENGTH, N_MFCC, SAMPLE_RATE, StreamingMfcc, n_frames
from service.pcm import StreamInput
from service.smoothing import LabelSmoother

if TYPE_CHECKING:  # onnxruntime is imported only where a model is loaded
    from service.inference import Classifier

__all__ = [
    "OPTION_FIELDS", "AudioStream", "Event", "FileResult", "LabelEvent", "SegmentEvent", "StreamConfig",
    "classify_audio", "classify_file",
]

WARMUP_S = 0.5  # the shortest window scored: the paper's shortest clip
MIN_WINDOW_S, MAX_WINDOW_S = WARMUP_S, 10.0
MIN_HOP_S, MAX_HOP_S = HOP_LENGTH / SAMPLE_RATE, WARMUP_S
MAX_BLOCK_SAMPLES = 10 * SAMPLE_RATE  # long pushes are processed in blocks: bounded memory, batched scoring
_TICK_S = HOP_LENGTH / SAMPLE_RATE  # one MFCC hop, the engine's time grid
# The knobs users set, by their user-facing names: HTTP query parameters, and CLI options after "--".
OPTION_FIELDS = {"window": "window_s", "hop": "hop_s", "silence_threshold": "silence_threshold_db",
                 "min_segment": "min_segment_s", "min_pause": "min_pause_s"}


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

    @property
    def frame_blocks(self) -> tuple[int, int]:
        """Energy blocks under the window's frames."""
        start, end = self.frame_range
        return start * BLOCKS_PER_HOP, (end - 1) * BLOCKS_PER_HOP + BLOCKS_PER_FRAME


class AudioStream:
    """One live stream: ``push`` chunks of any size, get label and segment events.

    ``sample_rate``, ``channels`` and ``encoding`` describe what ``push`` gets:
    bytes in ``encoding`` ("pcm_s16le" or "pcm_f32le", interleaved), or an
    array of float or int16 samples, (n,) or (n, channels). Not thread-safe:
    one per stream; the classifier may be shared.

    The model scores only the window's frames above the silence threshold, as
    in training, where silence was removed. A hop is silence when the audio
    in the middle of its window is below the threshold; its probabilities
    are then reported as 0.
    """

    def __init__(self, classifier: Classifier, config: StreamConfig | None = None, *,
                 sample_rate: float = SAMPLE_RATE, channels: int = 1, encoding: str = "pcm_f32le") -> None:
        self.classifier = classifier
        self.config = config or StreamConfig()
        self.labels: tuple[str, ...] = (*classifier.labels, SILENCE)
        self._input = StreamInput(sample_rate, channels, encoding)
        self._mfcc = StreamingMfcc()
        self._energy = BlockEnergy()
        self._frames = History(self.config.window_frames, (N_MFCC,))
        window_blocks = (self.config.window_ticks + self.config.hop_ticks) * BLOCKS_PER_HOP + BLOCKS_PER_FRAME
        self._block_energy = History(window_blocks)
        self._smoother = LabelSmoother(self.config.median_hops, self.config.switch_hops)
        self._segmenter = Segmenter(
            self.labels, self._smoother.lag_hops, self.config.min_segment_s, self.config.min_pause_s
        )
        self._silence_power = 10 ** (self.config.silence_threshold_db / 10)
        self.reset()

    @property
    def time_s(self) -> float:
        """Seconds of (16 kHz) audio processed so far."""
        return self._samples_seen / SAMPLE_RATE

    def push(self, chunk: np.ndarray | bytes | bytearray | memoryview) -> list[Event]:
        """Add audio; return the events it completes (possibly none)."""
        samples = self._input.convert(chunk)
        events: list[Event] = []
        for start in range(0, samples.size, MAX_BLOCK_SAMPLES):
            events += self._process(samples[start : start + MAX_BLOCK_SAMPLES])
        return events

    def flush(self) -> list[Event]:
        """End the stream: close the last segment at the end of the audio, then reset."""
        events = self._process(self._input.finish())
        events += self._segmenter.flush(self.time_s)
        self.reset()
        return events

    def reset(self) -> None:
        """Forget everything, as for a new stream starting at time 0."""
        for part in (self._input, self._mfcc, self._energy, self._frames, self._block_energy,
                     self._smoother, self._segmenter):
            part.reset()
        self._samples_seen = 0
        self._next_tick = self.config.first_decision_tick

    def _process(self, samples: np.ndarray) -> list[Event]:
        """Buffer 16 kHz samples, then make the decisions they complete."""
        self._samples_seen += samples.size
        self._frames.extend(self._mfcc.push(samples))
        self._block_energy.extend(self._energy.push(samples))
        decisions = []
        while self._next_tick * HOP_LENGTH <= self._samples_seen:
            decisions.append(Decision.at(self._next_tick, self.config))
            self._next_tick += self.config.hop_ticks
        windows = [self._loud_window(decision) for decision in decisions]
        events: list[Event] = []
        for decision, window, probs in zip(decisions, windows, self._score(windows)):
            events += self._decide(decision, probs, silent=window is None)
        return events

    def _loud_window(self, decision: Decision) -> np.ndarray | None:
        """The window's non-silent frames, or None when the hop is silence.

        A frame is silent when the hop_s of audio around it is below the
        threshold (a brief dip inside a sound is kept); the hop is silence
        when the window's middle frame is.
        """
        start, end = decision.frame_range
        energies = frame_neighbourhood_energies(
            self._block_energy.slice(*decision.frame_blocks), end - start, self.config.hop_ticks * BLOCKS_PER_HOP
        )
        loud = energies >= self._silence_power
        return self._frames.slice(start, end)[loud] if loud[decision.centre_frame] else None

    def _score(self, windows: list[np.ndarray | None]) -> np.ndarray:
        """Model probabilities per window (0 for silence); windows of one length share a batch."""
        probs = np.zeros((len(windows), len(self.classifier.labels)), dtype=np.float32)
        for length in sorted({len(window) for window in windows if window is not None}):
            rows = [i for i, window in enumerate(windows) if window is not None and len(window) == length]
            probs[rows] = self.classifier.predict(np.stack([windows[i] for i in rows]))
        return probs

    def _decide(self, decision: Decision, probs: np.ndarray, silent: bool) -> list[Event]:
        """Smooth and segment one hop."""
        scores = np.zeros(len(self.labels))
        if silent:
            scores[-1] = 1.0
        else:
            scores[:-1] = probs
        changed = self._smoother.update(scores)
        label = self._smoother.label
        probs_by_label = dict(zip(self.classifier.labels, probs.tolist()))
        events: list[Event] = [LabelEvent(decision.tick * _TICK_S, self.labels[label], probs_by_label)]
        return events + self._segmenter.add(decision.centre_tick * _TICK_S, scores, label, changed)


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


class _Summary:
    """Folds a stream's events into a FileResult without keeping the label events."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.prob_sum = np.zeros(len(labels))
        self.voiced_hops = 0
        self.hops = 0
        self.segments: list[SegmentEvent] = []

    def add(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, SegmentEvent):
                self.segments.append(event)
                continue
            self.hops += 1
            if any(event.probs.values()):  # the model scored it: it was not silence
                self.voiced_hops += 1
                self.prob_sum += [event.probs[name] for name in self.labels]

    def result(self, file: str | None, duration_s: float) -> FileResult:
        if not self.hops:
            raise AudioError(f"audio is {duration_s:.2f} s long; classification needs at least {WARMUP_S:g} s")
        mean = self.prob_sum / max(self.voiced_hops, 1)
        label = self.labels[int(np.argmax(mean))] if self.voiced_hops else SILENCE
        probs = {name: float(p) for name, p in zip(self.labels, mean)}
        return FileResult(file, duration_s, label, probs, tuple(self.segments))


Progress = Callable[[float, float], None]
"""Called after each block with the seconds of audio processed so far and in all."""


def _run(stream: AudioStream, blocks: Iterable[np.ndarray], total_s: float, file: str | None,
         progress: Progress | None) -> FileResult:
    summary = _Summary(stream.classifier.labels)
    for block in blocks:
        summary.add(stream.push(block))
        if progress is not None:
            progress(stream.time_s, total_s)
    duration_s = stream.time_s
    summary.add(stream.flush())  # the stream resets itself: its last segment ends at the audio's end
    return summary.result(file, summary.segments[-1].end if summary.segments else duration_s)


def classify_audio(audio: np.ndarray, classifier: Classifier, config: StreamConfig | None = None, *,
                   file: str | None = None, progress: Progress | None = None) -> FileResult:
    """Classify float32 mono 16 kHz audio (as service.audio.load_audio gives) through an AudioStream."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(f"expected mono 16 kHz audio of shape (samples,), got {audio.shape}")
    stream = AudioStream(classifier, config)
    blocks = (audio[start : start + MAX_BLOCK_SAMPLES] for start in range(0, audio.size, MAX_BLOCK_SAMPLES))
    return _run(stream, blocks, audio.size / SAMPLE_RATE, file, progress)


def classify_file(source: AudioSource, classifier: Classifier, config: StreamConfig | None = None, *,
                  file: str | None = None, max_duration_s: float | None = None,
                  progress: Progress | None = None) -> FileResult:
    """Classify an audio file (a path, bytes or a binary file object), decoded and resampled block by
    block: memory is bounded by the block, not the file. ``file`` names it in the result (default: the
    path). Raises AudioError as service.audio.load_audio does."""
    if file is None and isinstance(source, (str, os.PathLike)):
        file = os.fspath(source)
    with open_audio(source, max_duration_s=max_duration_s) as handle:
        total_s = handle.frames / handle.samplerate
        return _run(AudioStream(classifier, config), decoded_blocks(handle, max_duration_s), total_s, file, progress)
