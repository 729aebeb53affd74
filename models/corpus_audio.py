"""Signal steps of the corpus builder: silence trimming, cutting, speech screening,
synthetic noise and clip writing. Audio is float32 mono at SAMPLE_RATE throughout."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import soundfile as sf

from service.features import SAMPLE_RATE

FRAME_S = 0.02  # silence is judged per 20 ms frame
VAD_CHUNK = 512  # silero-vad takes 32 ms chunks at 16 kHz
VAD_PIECE_CHUNKS = 128  # clips are scored in 4.1 s pieces, batched, for speed
VAD_SPEECH_PROBABILITY = 0.5
SYNTHETIC_KINDS = ("white", "pink", "brown", "hum50", "hum60")


def frame_levels_db(audio: np.ndarray, frame_s: float = FRAME_S) -> np.ndarray:
    """RMS level in dBFS of consecutive non-overlapping frames (a partial last frame counts)."""
    frame = int(frame_s * SAMPLE_RATE)
    padded = np.pad(audio, (0, -len(audio) % frame))
    power = np.mean(padded.reshape(-1, frame).astype(np.float64) ** 2, axis=1)
    return 10 * np.log10(np.maximum(power, 1e-12))


def active_regions(
    audio: np.ndarray,
    *,
    below_peak_db: float,
    floor_dbfs: float,
    min_gap_s: float,
    frame_s: float = FRAME_S,
) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` that are not silence.

    A frame is silent when it is ``below_peak_db`` under the loudest frame or
    under ``floor_dbfs``. Silences shorter than ``min_gap_s`` stay inside a
    region; longer ones split it; leading and trailing silence is trimmed.
    """
    if len(audio) == 0:
        return []
    levels = frame_levels_db(audio, frame_s)
    loud = levels >= max(levels.max() - below_peak_db, floor_dbfs)
    frames = np.flatnonzero(loud)
    if len(frames) == 0:
        return []
    frame = int(frame_s * SAMPLE_RATE)
    max_gap_frames = max(1, round(min_gap_s / frame_s))
    breaks = np.flatnonzero(np.diff(frames) > max_gap_frames)
    starts = np.concatenate([[frames[0]], frames[breaks + 1]])
    ends = np.concatenate([frames[breaks], [frames[-1]]]) + 1
    return [(int(s) * frame, min(int(e) * frame, len(audio))) for s, e in zip(starts, ends)]


def segment_bounds(start: int, end: int, max_segment_s: float) -> list[tuple[int, int]]:
    """Cut ``[start, end)`` into equal segments of at most ``max_segment_s``."""
    max_len = int(max_segment_s * SAMPLE_RATE)
    count = max(1, math.ceil((end - start) / max_len))
    edges = np.linspace(start, end, count + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


@functools.lru_cache(maxsize=1)
def _vad_model():
    # Loaded once per worker process; silero-vad's ONNX wrapper needs torch.
    from silero_vad import load_silero_vad

    return load_silero_vad(onnx=True)


def speech_ratio(audio: np.ndarray) -> float:
    """Fraction of 32 ms chunks that silero-vad judges to be speech.

    The clip is scored as a batch of independent 4.1 s pieces (state reset per
    piece), which is several times faster than one long sequence.
    """
    import torch

    chunks = max(1, math.ceil(len(audio) / VAD_CHUNK))
    pieces = math.ceil(chunks / VAD_PIECE_CHUNKS)
    padded = np.zeros(pieces * VAD_PIECE_CHUNKS * VAD_CHUNK, dtype=np.float32)
    padded[: len(audio)] = audio
    batch = torch.from_numpy(padded.reshape(pieces, -1))
    model = _vad_model()
    model.reset_states()
    probabilities = torch.cat(
        [model(batch[:, i : i + VAD_CHUNK], SAMPLE_RATE) for i in range(0, batch.shape[1], VAD_CHUNK)], dim=1
    )
    real_chunks = probabilities.flatten()[:chunks]  # row-major: piece by piece, in time order
    return float((real_chunks > VAD_SPEECH_PROBABILITY).float().mean())


def synthetic_noise(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary noise at a random level from -35 to -15 dBFS RMS.

    white / pink (1/f) / brown (1/f^2) noise, or mains hum (50 or 60 Hz with
    decaying harmonics and a little broadband noise).
    """
    n = int(seconds * SAMPLE_RATE)
    if kind in ("white", "pink", "brown"):
        exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spectrum *= 1 / np.maximum(freqs, 10.0) ** exponent  # 10 Hz floor keeps DC bounded
        signal = np.fft.irfft(spectrum, n)
    elif kind in ("hum50", "hum60"):
        mains = 50.0 if kind == "hum50" else 60.0
        t = np.arange(n) / SAMPLE_RATE
        harmonics = range(1, int(rng.integers(4, 12)))
        signal = sum(np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi)) / h**rng.uniform(0.5, 1.5)
                     for h in harmonics)
        signal = signal + 0.02 * rng.standard_normal(n)
    else:
        raise ValueError(f"unknown synthetic noise {kind!r}; expected one of {', '.join(SYNTHETIC_KINDS)}")
    rms_db = rng.uniform(-35.0, -15.0)
    signal = signal / np.sqrt(np.mean(signal**2)) * 10 ** (rms_db / 20)
    return signal.astype(np.float32)


def write_clip(path: Path, audio: np.ndarray) -> None:
    """Write FLAC, 16-bit PCM, SAMPLE_RATE mono (resampling can overshoot, so clip to full scale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
