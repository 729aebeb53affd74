"""Files: audio seconds per CPU second of ``classify_file``, beside Silero VAD on the same file.

A recording of alternating speech, music, noise and silence (2 to 20 s each,
generated) is written once as a 16 kHz 16-bit WAV. Each pass classifies it
with every model (decoding, MFCC, inference, smoothing, segments: the whole
offline path, one thread), once more with the first model and a 10 s window
(the default is 1 s), and runs Silero VAD's speech detection over it
(decoding and the VAD model, one thread). Time is the process's CPU time, so
a busy machine slows the figures less than wall time would. Passes alternate
the contestants, so each ratio compares runs made in the same conditions.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from bench import silero
from bench.common import Options, paired_runs, ratios, rounded, show, skipped, summary, table
from service.features import SAMPLE_RATE
from service.inference import Classifier
from service.stream import StreamConfig, classify_file
from tests.conftest import make_signal

KINDS = ["speech", "music", "silence", "noise"]
SILERO = "silero-vad"
LONG_WINDOW_S = 10.0


def write_recording(path: Path, seconds: float, rate: int = SAMPLE_RATE) -> float:
    """Alternating kinds of 2 to 20 s, written block by block; returns the duration in seconds."""
    rng = np.random.default_rng(0)
    pieces = {kind: make_signal(kind, 20.0, seed=1, sample_rate=rate) for kind in KINDS}
    written = 0
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        while written < seconds * rate:
            piece = pieces[KINDS[int(rng.integers(len(KINDS)))]][: int(rng.uniform(2, 20) * rate)]
            piece = piece[: int(seconds * rate) - written]
            out.write(piece)
            written += piece.size
    return written / rate


class Timed:
    """CPU seconds one call of ``work`` takes; keeps the last outcome to report what was found."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.work = work
        self.outcome: object = None

    def __call__(self) -> float:
        start = time.process_time()
        self.outcome = self.work()
        return time.process_time() - start


def _runners(path: Path, classifiers: dict[str, Classifier], notes: list[str]) -> dict[str, Timed]:
    runners = {name: Timed(lambda c=classifier: classify_file(path, c)) for name, classifier in classifiers.items()}
    first, classifier = next(iter(classifiers.items()))
    long_window = StreamConfig(window_s=LONG_WINDOW_S)
    runners[_long(first)] = Timed(lambda: classify_file(path, classifier, long_window))
    vad_path = silero.model_path()
    if vad_path is None:
        notes.append("files: Silero VAD skipped, silero-vad is not installed (pip install -e '.[bench]')")
    else:
        vad = silero.SileroVad(vad_path)
        runners[SILERO] = Timed(lambda: vad.speech_share(path))
    return runners


def _long(name: str) -> str:
    return f"{name} window {LONG_WINDOW_S:g} s"


def _found(runners: dict[str, Timed]) -> dict:
    """What each contestant found: a sanity check that it really ran (about a quarter of the file is speech)."""
    found: dict = {name: {"segments": len(timed.outcome.segments)} for name, timed in runners.items() if name != SILERO}
    if SILERO in runners:
        found[SILERO] = {"speech_share": rounded(runners[SILERO].outcome)}
    return found


def run(options: Options, classifiers: dict[str, Classifier], notes: list[str]) -> dict:
    if not classifiers:
        return skipped("no model to measure (pass --model PATH, or --tiny)")
    with tempfile.TemporaryDirectory(prefix="swishnet-bench-") as folder:
        path = Path(folder) / "recording.wav"
        duration_s = write_recording(path, options.file_s)
        runners = _runners(path, classifiers, notes)
        seconds = paired_runs(runners, options.file_repeats, warm_up=False)  # an hour-long pass needs no warming
    first = next(iter(classifiers))
    result: dict = {
        "duration_s": duration_s,
        "format": "WAV, 16 kHz, mono, 16-bit",
        "passes": options.file_repeats,
        "audio_s_per_cpu_s": {name: summary(duration_s / s for s in values) for name, values in seconds.items()},
        "window_10s_over_1s": ratios(seconds[_long(first)], seconds[first]),
        "found": _found(runners),
    }
    if SILERO in seconds:  # > 1: the classifier costs that many times less CPU than Silero VAD on the same file
        result["silero_time_over_classify"] = {
            name: ratios(seconds[SILERO], seconds[name]) for name in seconds if name != SILERO
        }
    return result


def render(result: dict) -> str:
    versus = result.get("silero_time_over_classify", {})
    rows = [(name, show(stat), "-" if name == SILERO else show(versus.get(name)))
            for name, stat in result["audio_s_per_cpu_s"].items()]
    heading = (f"{result['duration_s'] / 60:.3g} min of generated audio ({result['format']}), "
               f"{result['passes']} pass(es), one thread, CPU time")
    return (f"{heading}\n{table(('', 'audio s per CPU s', 'Silero VAD CPU / this'), rows)}\n"
            f"window 10 s costs x{show(result['window_10s_over_1s'])} the default 1 s window")
