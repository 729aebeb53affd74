"""Features: the cost of one 10 ms hop of streaming MFCC against recomputing the 1 s window.

A live stream gets 160 new samples every 10 ms. ``StreamingMfcc.push``
computes the one new frame; the naive alternative recomputes all 98 frames of
the 1 s analysis window at every hop, with librosa (the reference definition
the tests check ``service.features`` against) or with our own ``mfcc``.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Callable

import numpy as np

from bench.common import Options, paired_runs, ratios, show, skipped, summary, table
from service.features import HOP_LENGTH, SAMPLE_RATE, StreamingMfcc, mfcc
from tests.conftest import make_signal

WINDOW_SAMPLES = SAMPLE_RATE  # the default 1 s analysis window


def _streaming(audio: np.ndarray, hops: int) -> Callable[[], float]:
    """Seconds per hop of pushing 160 samples into a running extractor."""
    def run() -> float:
        extractor = StreamingMfcc()
        extractor.push(audio[:WINDOW_SAMPLES])  # a stream already running
        start = time.perf_counter()
        for hop in range(hops):
            begin = WINDOW_SAMPLES + hop * HOP_LENGTH
            extractor.push(audio[begin : begin + HOP_LENGTH])
        return (time.perf_counter() - start) / hops

    return run


def _recompute(extract: Callable[[np.ndarray], np.ndarray], audio: np.ndarray, hops: int) -> Callable[[], float]:
    """Seconds per hop of extracting the whole 1 s window that ends at each hop."""
    def run() -> float:
        start = time.perf_counter()
        for hop in range(1, hops + 1):
            extract(audio[hop * HOP_LENGTH : WINDOW_SAMPLES + hop * HOP_LENGTH])
        return (time.perf_counter() - start) / hops

    return run


def run(options: Options) -> dict:
    if importlib.util.find_spec("librosa") is None:
        return skipped("librosa is not installed (pip install -e '.[train]')")
    from tests.test_features import librosa_mfcc  # the tests' reference definition, imported, not copied

    hops = 50 if options.quick else 400
    audio = make_signal("speech", seconds=(WINDOW_SAMPLES + (hops + 1) * HOP_LENGTH) / SAMPLE_RATE, seed=0)
    seconds = paired_runs({
        "streaming": _streaming(audio, hops),
        "librosa_recompute": _recompute(librosa_mfcc, audio, hops),
        "ours_recompute": _recompute(mfcc, audio, hops),
    }, options.repeats)
    return {
        "hop_ms": 1000 * HOP_LENGTH / SAMPLE_RATE,
        "window_s": WINDOW_SAMPLES / SAMPLE_RATE,
        "hops_per_run": hops,
        "us_per_hop": {name: summary(1e6 * s for s in values) for name, values in seconds.items()},
        "librosa_over_streaming": ratios(seconds["librosa_recompute"], seconds["streaming"]),
        "ours_recompute_over_streaming": ratios(seconds["ours_recompute"], seconds["streaming"]),
    }


def render(result: dict) -> str:
    per_hop = result["us_per_hop"]
    rows = [
        ("streaming (StreamingMfcc.push, 160 samples)", show(per_hop["streaming"]), "1"),
        ("recompute 1 s window, librosa", show(per_hop["librosa_recompute"]), show(result["librosa_over_streaming"])),
        ("recompute 1 s window, service.features.mfcc", show(per_hop["ours_recompute"]),
         show(result["ours_recompute_over_streaming"])),
    ]
    return table(("MFCC per 10 ms hop", "us per hop", "x streaming"), rows)
