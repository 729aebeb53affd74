"""Stream events and the segmenter that turns smoothed labels into segments.

Segments tile the stream: the first starts at 0, each starts where the
previous ends, the last ends at the end of the audio. Two rules merge runs of
labels before a segment is emitted:

- a run shorter than ``min_segment_s`` is absorbed by the segment before it
  (by the one after it at the start of a stream);
- a run shorter than ``min_pause_s`` between two runs of the same label is
  absorbed, joining the two.

A segment is therefore emitted once the run after it has lasted long enough
that neither rule can change it any more.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SILENCE = "silence"  # the label the runtime's energy gate adds; no model may use it
TIME_DECIMALS = 3  # milliseconds
PROB_DECIMALS = 4


@dataclass(frozen=True)
class LabelEvent:
    """The smoothed label after each decision hop.

    ``time`` is the end of the audio seen when the decision was made, in
    seconds from the start of the stream; ``label`` is the smoothed label
    (segments may still merge it away); ``probs`` are the model's raw
    probabilities for the window that ends there, all 0 when the hop is silent.
    """

    time: float
    label: str
    probs: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "type": "label",
            "time": round(self.time, TIME_DECIMALS),
            "label": self.label,
            "probs": {name: round(float(p), PROB_DECIMALS) for name, p in self.probs.items()},
        }


@dataclass(frozen=True)
class SegmentEvent:
    """A closed segment; ``confidence`` is the mean score of its label over its hops."""

    start: float
    end: float
    label: str
    confidence: float

    def to_dict(self) -> dict:
        return {
            "type": "segment",
            "start": round(self.start, TIME_DECIMALS),
            "end": round(self.end, TIME_DECIMALS),
            "label": self.label,
            "confidence": round(self.confidence, PROB_DECIMALS),
        }


Event = LabelEvent | SegmentEvent


class Run:
    """A stretch of one label: start time and the summed scores of its hops."""

    def __init__(self, label: int, start_s: float, n_labels: int) -> None:
        self.label = label
        self.start_s = start_s
        self.end_s = start_s
        self.score_sum = np.zeros(n_labels)
        self.n_hops = 0

    def add(self, scores: np.ndarray) -> None:
        self.score_sum += scores
        self.n_hops += 1

    def absorb(self, other: Run) -> None:
        self.end_s = other.end_s
        self.score_sum += other.score_sum
        self.n_hops += other.n_hops

    def relabel(self, label: int) -> Run:
        """This run's span and hops under another label."""
        run = Run(label, self.start_s, self.score_sum.size)
        run.absorb(self)
        return run

    def event(self, names: tuple[str, ...]) -> SegmentEvent:
        confidence = self.score_sum[self.label] / self.n_hops if self.n_hops else 0.0
        return SegmentEvent(self.start_s, self.end_s, names[self.label], float(confidence))


class Segmenter:
    """Smoothed labels of successive hops -> SegmentEvents.

    Each hop comes with its centre time (the time its decision describes) and
    its scores. A label change confirmed ``lag_hops`` hops late is dated
    half-way between the centres of the hop where it started and the hop
    before, and the hops since then are counted in the new segment.
    """

    def __init__(self, names: tuple[str, ...], lag_hops: int, min_segment_s: float, min_pause_s: float) -> None:
        self.names = names
        self.min_segment_s = min_segment_s
        self.min_pause_s = min_pause_s
        self._unassigned: deque[tuple[float, np.ndarray]] = deque()
        self._lag_hops = lag_hops
        self._current: Run | None = None
        self._pending: Run | None = None
        self._settled_s = 0.0

    def add(self, centre_s: float, scores: np.ndarray, label: int, changed: bool) -> list[SegmentEvent]:
        self._unassigned.append((centre_s, scores))
        events = []
        if self._current is None:
            self._current = Run(label, 0.0, len(self.names))
        elif changed:  # the change lies between the last hop settled and the first unassigned one
            events = self._close((self._settled_s + self._unassigned[0][0]) / 2, label)
        while len(self._unassigned) > self._lag_hops:
            self._settle()
        return events + self._release_pending()

    def flush(self, end_s: float) -> list[SegmentEvent]:
        """Close the last segment at ``end_s`` (the end of the audio) and emit what is left."""
        if self._current is None:
            return []
        while self._unassigned:
            self._settle()
        events = self._close(max(end_s, self._current.start_s), None)
        events += [self._pending.event(self.names)] if self._pending else []
        self.reset()
        return events

    def reset(self) -> None:
        self._unassigned.clear()
        self._current = self._pending = None
        self._settled_s = 0.0

    def _settle(self) -> None:
        """Count the oldest unassigned hop in the current run: no later change can be dated before it."""
        self._settled_s, scores = self._unassigned.popleft()
        self._current.add(scores)

    def _close(self, boundary_s: float, next_label: int | None) -> list[SegmentEvent]:
        """End the current run at ``boundary_s``; start one of ``next_label`` (None: end of stream)."""
        run, pending = self._current, self._pending
        run.end_s = boundary_s
        duration_s = run.end_s - run.start_s
        if run.n_hops == 0:  # a label no hop supports: the next label takes its span
            self._current = run.relabel(next_label)
            return []
        if pending is not None and (
            duration_s < self.min_segment_s or (duration_s < self.min_pause_s and next_label == pending.label)
        ):
            pending.absorb(run)
            if next_label == pending.label:
                self._current, self._pending = pending, None
            else:
                self._current = self._start(next_label, boundary_s)
            return []
        if pending is None and duration_s < self.min_segment_s and next_label is not None:
            self._current = run.relabel(next_label)  # too short at the start of a stream
            return []
        self._current, self._pending = self._start(next_label, boundary_s), run
        return [pending.event(self.names)] if pending is not None else []

    def _start(self, label: int | None, start_s: float) -> Run | None:
        return None if label is None else Run(label, start_s, len(self.names))

    def _release_pending(self) -> list[SegmentEvent]:
        """Emit the pending segment once the current run is too long to be absorbed."""
        if self._pending is None:
            return []
        if self._settled_s - self._current.start_s < max(self.min_segment_s, self.min_pause_s):
            return []
        event, self._pending = self._pending.event(self.names), None
        return [event]
