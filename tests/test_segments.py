"""The smoother and the segmenter on hand-made label sequences (no audio, no model)."""

import numpy as np
import pytest

from service.events import Segmenter
from service.smoothing import LabelSmoother

NAMES = ("a", "b", "s")  # s: silence
HOP_S = 0.1


def one_hot(label: int) -> np.ndarray:
    return np.eye(len(NAMES))[label]


def smooth(labels: str, median_hops: int, switch_hops: int) -> str:
    smoother = LabelSmoother(median_hops, switch_hops)
    out = ""
    for label in labels:
        smoother.update(one_hot(NAMES.index(label)))
        out += NAMES[smoother.label]
    return out


def test_hysteresis_needs_consecutive_wins():
    assert smooth("aaabbaabbbaa", median_hops=1, switch_hops=3) == "aaaaaaaaabbb"
    assert smooth("aaabbaabbbaa", median_hops=1, switch_hops=1) == "aaabbaabbbaa"


def test_median_removes_single_outliers():
    assert smooth("aaaabaaaabbbbb", median_hops=3, switch_hops=1) == "aaaaaaaaaabbbb"


def test_lag_hops():
    assert LabelSmoother(5, 3).lag_hops == 4
    assert LabelSmoother(1, 1).lag_hops == 0


def segment(labels: str, lag_hops: int = 0, min_segment_s: float = 0.0, min_pause_s: float = 0.0,
            end_s: float | None = None) -> list[tuple[float, float, str]]:
    """Segments of a hop-by-hop label string; hop i is centred at (i + 0.5) * HOP_S."""
    segmenter = Segmenter(NAMES, lag_hops, min_segment_s, min_pause_s)
    events, previous = [], None
    for i, label in enumerate(labels):
        index = NAMES.index(label)
        events += segmenter.add((i + 0.5) * HOP_S, one_hot(index), index, index != previous)
        previous = index
    events += segmenter.flush(len(labels) * HOP_S if end_s is None else end_s)
    return [(round(e.start, 3), round(e.end, 3), e.label) for e in events]


def test_segments_tile_the_stream():
    assert segment("aaabbbbaa") == [(0, 0.3, "a"), (0.3, 0.7, "b"), (0.7, 0.9, "a")]
    assert segment("aaabbbbaa", end_s=0.95)[-1] == (0.7, 0.95, "a")


def test_lag_dates_changes_back():
    # The label string is what a smoother reports; with a lag of 2 hops the
    # change confirmed at hop 5 started at hop 3.
    assert segment("aaaaabbbbb", lag_hops=2) == [(0, 0.3, "a"), (0.3, 1.0, "b")]


def test_confidence_counts_the_hops_of_each_segment():
    segmenter = Segmenter(NAMES, 1, 0.0, 0.0)
    scores = [np.array([0.8, 0.2, 0]), np.array([0.6, 0.4, 0]), np.array([0.3, 0.7, 0]), np.array([0.1, 0.9, 0])]
    events = []
    for i, (row, label, changed) in enumerate(zip(scores, [0, 0, 0, 1], [True, False, False, True])):
        events += segmenter.add(i * HOP_S, row, label, changed)
    first, second = events + segmenter.flush(0.4)
    assert (first.label, first.end) == ("a", pytest.approx(0.15))  # between the centres of hops 1 and 2
    assert first.confidence == pytest.approx(0.7)  # hops 0 and 1; hop 2 belongs to "b"
    assert second.confidence == pytest.approx(0.8)


def test_short_interruption_between_one_label_is_absorbed():
    assert segment("aaaaabbaaaaa", min_pause_s=0.3) == [(0, 1.2, "a")]
    assert segment("aaaaabbbaaaa", min_pause_s=0.3) == [(0, 0.5, "a"), (0.5, 0.8, "b"), (0.8, 1.2, "a")]


def test_short_segment_joins_the_one_before():
    assert segment("aaaaabbsssss", min_segment_s=0.3) == [(0, 0.7, "a"), (0.7, 1.2, "s")]
    assert segment("aaaaasssbbbbb", min_segment_s=0.3) == [(0, 0.5, "a"), (0.5, 0.8, "s"), (0.8, 1.3, "b")]


def test_short_first_segment_joins_the_next():
    assert segment("abbbbb", min_segment_s=0.3) == [(0, 0.6, "b")]


def test_short_last_segment_joins_the_one_before():
    assert segment("aaaaab", min_segment_s=0.3) == [(0, 0.6, "a")]


def test_segment_is_released_once_it_cannot_change():
    segmenter = Segmenter(NAMES, 0, 0.3, 0.5)
    released_at = None
    for i, label in enumerate([0] * 10 + [1] * 10):
        if segmenter.add((i + 0.5) * HOP_S, one_hot(label), label, i in (0, 10)):
            released_at = i
            break
    assert released_at == 15  # "b" has lasted 0.5 s: neither rule can absorb it any more
    assert segmenter.flush(2.0)[0].label == "b"


def test_flush_without_hops_is_empty():
    assert Segmenter(NAMES, 2, 0.3, 0.5).flush(1.0) == []
