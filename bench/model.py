"""Model: milliseconds per window of ``Classifier.predict``, one onnxruntime thread.

Windows of 0.5, 1 and 2 s of MFCC frames, alone (batch 1, what a live stream
asks for at each hop) and 32 at a time (what a file or a busy server can
batch). The input is real MFCC frames of generated speech.
"""

from __future__ import annotations

import numpy as np

from bench.common import Options, calls_to_fill, seconds_per_call, show, skipped, summary, table
from service.features import SAMPLE_RATE, mfcc, n_frames
from service.inference import Classifier
from tests.conftest import make_signal

WINDOWS_S = (0.5, 1.0, 2.0)
BATCHES = (1, 32)
# SwishNet-slim, ms per clip on an Intel i7-8700K with TensorFlow (Hussain & Haque, arXiv:1812.00149).
PAPER_SLIM_MS = {0.5: 0.77, 1.0: 0.88, 2.0: 1.12}


def _ms_per_window(classifier: Classifier, window: np.ndarray, batch: int, options: Options) -> dict:
    windows = np.repeat(window[None], batch, axis=0)

    def predict() -> np.ndarray:
        return classifier.predict(windows)

    calls = calls_to_fill(predict, 0.01 if options.quick else 0.15)
    predict()
    return summary(1000 * seconds_per_call(predict, calls) / batch for _ in range(options.repeats))


def _measure(classifier: Classifier, features: np.ndarray, options: Options) -> list[dict]:
    rows = []
    for window_s in WINDOWS_S:
        window = features[: n_frames(int(window_s * SAMPLE_RATE))]
        for batch in BATCHES:
            rows.append({"window_s": window_s, "batch": batch,
                         "ms_per_window": _ms_per_window(classifier, window, batch, options)})
    return rows


def run(options: Options, classifiers: dict[str, Classifier]) -> dict:
    if not classifiers:
        return skipped("no model to measure (pass --model PATH, or --tiny)")
    features = mfcc(make_signal("speech", seconds=max(WINDOWS_S), seed=0))
    return {
        "threads": 1,
        "paper_slim_ms_per_window": {str(window_s): ms for window_s, ms in PAPER_SLIM_MS.items()},
        "paper_setup": "SwishNet-slim, batch 1, Intel i7-8700K, TensorFlow",
        "models": {name: _measure(classifier, features, options) for name, classifier in classifiers.items()},
    }


def render(result: dict) -> str:
    rows = [
        (name, f"{row['window_s']:g} s", row["batch"], show(row["ms_per_window"]),
         PAPER_SLIM_MS[row["window_s"]] if "slim" in name and row["batch"] == 1 else "-")
        for name, measured in result["models"].items()
        for row in measured
    ]
    # The paper's figures come from another machine and framework: shown beside ours, not divided.
    return table(("model", "window", "batch", "ms per window", "paper ms (i7-8700K, TF)"), rows)
