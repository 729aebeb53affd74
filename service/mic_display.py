"""The terminal display of ``swishnet mic``: redrawn in place with ANSI escapes (no curses).

On a terminal it shows the current label, a probability bar per class, a
strip of the last half minute's labels and the last segments. When the output
is not a terminal (a pipe, a file) it prints one line per closed segment instead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, TextIO

from service.events import SILENCE

BAR_WIDTH = 30
TIMELINE_CELLS = 60
TIMELINE_S = 30.0
RECENT_SEGMENTS = 5
COLOURS = {"speech": "36", "music": "35", "noise": "33", SILENCE: "90"}  # ANSI foreground colour codes
OTHER_COLOUR = "37"
# Hide the cursor and turn line wrapping off while drawing, so that a narrow terminal clips long lines
# instead of wrapping them, which would throw off the count of lines to move up over.
START_DRAWING, STOP_DRAWING = "\x1b[?25l\x1b[?7l", "\x1b[?7h\x1b[?25h"


@dataclass
class LiveState:
    """What the display shows, folded from events (the JSON form of service.events)."""

    time_s: float = 0.0
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    recent_labels: deque[tuple[float, str]] = field(default_factory=deque)
    segments: deque[dict] = field(default_factory=lambda: deque(maxlen=RECENT_SEGMENTS))
    seconds_per_label: dict[str, float] = field(default_factory=dict)

    def add(self, events: Iterable[dict]) -> None:
        for event in events:
            if event["type"] == "label":
                self.time_s, self.label, self.probs = event["time"], event["label"], event["probs"]
                self.recent_labels.append((self.time_s, self.label))
            elif event["type"] == "segment":
                self.segments.append(event)
                duration_s = event["end"] - event["start"]
                self.seconds_per_label[event["label"]] = self.seconds_per_label.get(event["label"], 0.0) + duration_s
        while self.recent_labels and self.recent_labels[0][0] < self.time_s - TIMELINE_S:
            self.recent_labels.popleft()


def timeline_cells(recent: Iterable[tuple[float, str]], now_s: float) -> list[str | None]:
    """The label shown in each cell of the strip ending at ``now_s``: the last one decided by the cell's end."""
    step_s = TIMELINE_S / TIMELINE_CELLS
    pending = iter(recent)
    upcoming = next(pending, None)
    current, cells = None, []
    for cell in range(TIMELINE_CELLS):
        cell_end_s = now_s - TIMELINE_S + (cell + 1) * step_s
        while upcoming is not None and upcoming[0] <= cell_end_s + 1e-9:
            current, upcoming = upcoming[1], next(pending, None)
        cells.append(current)
    return cells


class LiveDisplay:
    """Shows a LiveState on ``out``; ``update(events)`` is the on_events callback of service.mic.run_capture."""

    def __init__(self, out: TextIO, title: str, ansi: bool | None = None) -> None:
        self.out = out
        self.title = title
        self.state = LiveState()
        self.ansi = out.isatty() if ansi is None else ansi
        self._lines_drawn = 0

    def update(self, events: list[dict]) -> None:
        self.state.add(events)
        if self.ansi:
            self._redraw()
        else:
            for event in events:
                if event["type"] == "segment":
                    self.out.write(format_segment(event) + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.ansi and self._lines_drawn:
            self.out.write(STOP_DRAWING)
            self.out.flush()

    def _redraw(self) -> None:
        lines = self.render()
        # Move up over the last frame and clear to the end of the screen.
        self.out.write((f"\x1b[{self._lines_drawn}F\x1b[J" if self._lines_drawn else START_DRAWING)
                       + "\n".join(lines) + "\n")
        self.out.flush()
        self._lines_drawn = len(lines)

    def render(self) -> list[str]:
        state = self.state
        lines = [f"SwishNet Live · {self.title} · {state.time_s:7.1f} s",
                 f"Now: {self._paint(state.label, (state.label or 'listening…').upper())}", ""]
        for name, p in state.probs.items():
            filled = round(p * BAR_WIDTH)
            lines.append(f"  {name:<8} {self._paint(name, '█' * filled)}{'░' * (BAR_WIDTH - filled)} {p:4.2f}")
        cells = timeline_cells(state.recent_labels, state.time_s)
        strip = "".join(self._paint(label, cell_mark(label)) for label in cells)
        lines += ["", f"Last {TIMELINE_S:g} s: {strip}", "Segments:"]
        lines += [f"  {self._paint(s['label'], format_segment(s))}" for s in state.segments] or ["  (none yet)"]
        return lines + ["", "Ctrl-C to stop"]

    def _paint(self, label: str | None, text: str) -> str:
        if not self.ansi or label is None:
            return text
        return f"\x1b[{COLOURS.get(label, OTHER_COLOUR)}m{text}\x1b[0m"


def cell_mark(label: str | None) -> str:
    """One character per timeline cell: the label's initial, '·' for silence, blank before the first label."""
    if label is None:
        return " "
    return "·" if label == SILENCE else label[0].upper()


def format_segment(segment: dict) -> str:
    return (f"{segment['start']:8.2f} – {segment['end']:8.2f} s  {segment['label']:<8} "
            f"{segment['confidence']:.2f}")


def format_summary(seconds_per_label: dict[str, float]) -> str:
    """Seconds per class, longest first, with the share of the total."""
    total_s = sum(seconds_per_label.values())
    if not total_s:
        return "Summary: no segment was completed (less than 0.5 s of audio)."
    lines = [f"Summary: {total_s:.1f} s of audio"]
    for label, seconds in sorted(seconds_per_label.items(), key=lambda item: -item[1]):
        lines.append(f"  {label:<8} {seconds:7.1f} s  {100 * seconds / total_s:5.1f} %")
    return "\n".join(lines)
