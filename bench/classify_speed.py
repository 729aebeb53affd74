"""Speed of offline classification (``classify_file``) on a generated recording.

Usage: python -m bench.classify_speed [--minutes 60] [--rate 16000] [--model PATH] [--threads 1]

Without --model it uses the tiny test model of tests/tiny_model.py (needs the
onnx package), so the figure measures the engine (decoding, resampling, MFCC,
smoothing) more than the network. Prints real-time factor and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import service  # noqa: F401  (first: the BLAS thread default)

import numpy as np
import soundfile as sf

from service.inference import Classifier
from service.stream import classify_file
from tests.conftest import make_signal

KINDS = ["speech", "music", "silence", "noise"]


def write_recording(path: Path, minutes: float, rate: int) -> float:
    """Alternating kinds of 2 to 20 s, written block by block; returns the duration in seconds."""
    rng = np.random.default_rng(0)
    pieces = {kind: make_signal(kind, 20.0, seed=1, sample_rate=rate) for kind in KINDS}
    written = 0
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        while written < minutes * 60 * rate:
            piece = pieces[KINDS[int(rng.integers(len(KINDS)))]][: int(rng.uniform(2, 20) * rate)]
            out.write(piece)
            written += piece.size
    return written / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=16_000)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.model is None:
            from tests.tiny_model import write_model

            args.model = write_model(Path(folder))
        classifier = Classifier(args.model, intra_op_num_threads=args.threads)
        path = Path(folder) / "recording.wav"
        duration_s = write_recording(path, args.minutes, args.rate)
        start = time.perf_counter()
        result = classify_file(path, classifier)
        elapsed_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{duration_s / 60:.0f} min at {args.rate} Hz, model {classifier.name}, {args.threads} thread(s): "
          f"{elapsed_s:.1f} s, {duration_s / elapsed_s:.0f}x real time, {len(result.segments)} segments, "
          f"peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
