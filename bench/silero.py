"""Silero VAD, run offline with onnxruntime and numpy only.

The ``silero-vad`` wheel ships its ONNX model as package data; its Python code
needs torch, so this loads the .onnx file itself (the package is located, not
imported) and runs it as the package's ``OnnxWrapper`` does: 512-sample chunks
at 16 kHz, each preceded by the last 64 samples of the one before, with the
recurrent state carried from chunk to chunk. One thread, like our classifier.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf

from service.features import SAMPLE_RATE

CHUNK = 512  # 32 ms at 16 kHz: the only size the model takes at this rate
CONTEXT = 64
BLOCK_CHUNKS = 1000  # decode about 32 s at a time: bounded memory on long files
THRESHOLD = 0.5  # the package's default speech threshold


def model_path() -> Path | None:
    """The packaged silero_vad.onnx, or None when silero-vad is not installed."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.onnx"
    return path if path.is_file() else None


class SileroVad:
    """Per-chunk speech probabilities of 16 kHz mono audio, streamed chunk by chunk."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def speech_share(self, path: Path) -> float:
        """Share of the file's 32 ms chunks above the speech threshold; decodes the file block by block."""
        state = np.zeros((2, 1, 128), dtype=np.float32)
        frame = np.zeros((1, CONTEXT + CHUNK), dtype=np.float32)
        speech = chunks = 0
        with sf.SoundFile(path) as handle:
            if handle.samplerate != SAMPLE_RATE or handle.channels != 1:
                raise ValueError(f"{path}: Silero VAD is run on 16 kHz mono here")
            for block in handle.blocks(blocksize=CHUNK * BLOCK_CHUNKS, dtype="float32"):
                block = np.pad(block, (0, -block.size % CHUNK))  # the last chunk, zero-padded as the package does
                for chunk in block.reshape(-1, CHUNK):
                    frame[0, :CONTEXT] = frame[0, -CONTEXT:]
                    frame[0, CONTEXT:] = chunk
                    probability, state = self._session.run(None, {"input": frame, "state": state, "sr": self._rate})
                    speech += int(probability[0, 0] > THRESHOLD)
                    chunks += 1
        return speech / max(chunks, 1)
