"""The MFCC feature contract: the one definition used by training, offline
classification and streaming.

Parameters follow SwishNet (arXiv:1812.00149): 16 kHz mono, 25 ms frames every
10 ms, 20 MFCCs from 32 mel bands. Choices the paper leaves open:

- Frames are *not* centred: frame ``t`` covers samples ``[t*160, t*160 + 400)``
  and exists once those 400 samples have arrived, so a stream can emit it
  immediately and never revise it. ``n_frames(n) = 1 + (n - 400) // 160``
  (0 when ``n < 400``); a trailing partial hop produces no frame.
- Window: periodic Hann over the 400 samples, zero-padded to ``n_fft = 512``.
- Power spectrum ``|FFT|**2``, mel filterbank with the Slaney mel scale and
  Slaney area normalisation over 0 to 8 kHz (librosa's defaults).
- Log: ``10 * log10(max(mel_power, 1e-10))`` with no ``top_db`` clipping,
  because clipping against the maximum of a whole file cannot be causal.
- DCT-II with orthonormal scaling, first 20 coefficients, no liftering.

Equivalent librosa call (the reference, used in the tests):
``librosa.feature.mfcc(S=librosa.power_to_db(librosa.feature.melspectrogram(
y=np.pad(y, 56), sr=16000, n_fft=512, hop_length=160, win_length=400,
window="hann", center=False, n_mels=32), top_db=None), n_mfcc=20)``; the
56-sample pad compensates for librosa centring the 400-sample window inside
the 512-sample FFT frame.

Features are returned as float32 arrays of shape ``(n_frames, N_MFCC)``: time
first, so streams can append rows. The model takes ``(batch, N_MFCC, frames)``.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
N_MELS = 32
N_MFCC = 20
F_MIN = 0.0
F_MAX = SAMPLE_RATE / 2
LOG_FLOOR = 1e-10
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH

assert SAMPLE_RATE % HOP_LENGTH == 0 and WIN_LENGTH <= N_FFT

# Written beside every exported model and checked by the runtime at load time.
FEATURE_CONTRACT: dict[str, object] = {
    "sample_rate": SAMPLE_RATE,
    "win_length": WIN_LENGTH,
    "hop_length": HOP_LENGTH,
    "n_fft": N_FFT,
    "window": "hann_periodic",
    "n_mels": N_MELS,
    "mel_scale": "slaney",
    "mel_norm": "slaney",
    "f_min": F_MIN,
    "f_max": F_MAX,
    "log": "10*log10(max(power, 1e-10))",
    "dct": "type2_ortho",
    "n_mfcc": N_MFCC,
    "center": False,
    "layout": "frames_by_coefficients",
}

_BLOCK_FRAMES = 1024  # bounds the memory of offline extraction on long files (and keeps blocks in cache)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    linear = mel * f_sp
    log = min_log_hz * np.exp(logstep * (np.maximum(mel, min_log_mel) - min_log_mel))
    return np.where(mel >= min_log_mel, log, linear)


def _mel_filterbank() -> np.ndarray:
    """Triangular filters, shape (N_FFT // 2 + 1, N_MELS), area-normalised."""
    fft_hz = np.fft.rfftfreq(N_FFT, d=1.0 / SAMPLE_RATE)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.T


def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II, shape (N_MELS, N_MFCC)."""
    n = np.arange(N_MELS)
    k = np.arange(N_MFCC)
    basis = np.cos(np.pi * k[None, :] * (2 * n[:, None] + 1) / (2 * N_MELS))
    basis *= np.sqrt(2.0 / N_MELS)
    basis[:, 0] /= np.sqrt(2.0)
    return basis


def _sparse_filterbank(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filterbank as (FFT bin of each weight, weights, start of each band's run): each triangle covers
    a contiguous run of bins, so ``np.add.reduceat`` over these runs gives ``power @ basis`` exactly
    (the zeros add nothing) at about a sixteenth of the work."""
    runs = [np.flatnonzero(basis[:, band]) for band in range(basis.shape[1])]
    assert all(run.size and np.all(np.diff(run) == 1) for run in runs), "a mel band is not one run of bins"
    bins = np.concatenate(runs)
    weights = np.concatenate([basis[run, band] for band, run in enumerate(runs)])
    starts = np.cumsum([0] + [run.size for run in runs[:-1]])
    return bins, weights, starts


_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)
_MEL_BASIS = _mel_filterbank()
_MEL_BINS, _MEL_WEIGHTS, _MEL_STARTS = _sparse_filterbank(_MEL_BASIS)
_DCT = _dct_matrix()


def n_frames(n_samples: int) -> int:
    """Number of complete frames in ``n_samples`` samples (no centring)."""
    if n_samples < WIN_LENGTH:
        return 0
    return 1 + (n_samples - WIN_LENGTH) // HOP_LENGTH


def frames_to_mfcc(frames: np.ndarray) -> np.ndarray:
    """MFCCs of raw frames, shape (n, WIN_LENGTH) -> (n, N_MFCC) float32.

    The per-frame computation shared by offline and streaming extraction.
    """
    spectrum = np.fft.rfft(np.multiply(frames, _WINDOW, dtype=np.float64), n=N_FFT, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    mel_power = np.add.reduceat(power[:, _MEL_BINS] * _MEL_WEIGHTS, _MEL_STARTS, axis=1)  # = power @ _MEL_BASIS
    log_mel = 10.0 * np.log10(np.maximum(mel_power, LOG_FLOOR))
    return (log_mel @ _DCT).astype(np.float32)


def mfcc(audio: np.ndarray) -> np.ndarray:
    """MFCCs of 16 kHz mono audio, shape (n_frames(len(audio)), N_MFCC) float32."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"mfcc expects mono audio of shape (samples,), got shape {audio.shape}")
    total = n_frames(audio.size)
    if total == 0:
        return np.empty((0, N_MFCC), dtype=np.float32)
    # frame t is audio[t * HOP_LENGTH : t * HOP_LENGTH + WIN_LENGTH], a read-only view
    step = audio.strides[0]
    windows = np.lib.stride_tricks.as_strided(audio, (total, WIN_LENGTH), (HOP_LENGTH * step, step), writeable=False)
    if total <= _BLOCK_FRAMES:
        return frames_to_mfcc(windows)
    out = np.empty((total, N_MFCC), dtype=np.float32)
    for start in range(0, total, _BLOCK_FRAMES):
        out[start : start + _BLOCK_FRAMES] = frames_to_mfcc(windows[start : start + _BLOCK_FRAMES])
    return out


class StreamingMfcc:
    """Causal MFCC extractor for audio arriving in chunks of any size.

    Each complete 10 ms hop yields exactly one new frame, computed once and
    equal to the frame ``mfcc()`` gives for the same audio. Between calls it
    keeps fewer than ``WIN_LENGTH`` samples, whatever the stream's length.
    """

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add 16 kHz mono float samples; return the new frames (k, N_MFCC)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        buffer = np.concatenate([self._pending, samples]) if self._pending.size else samples
        features = mfcc(buffer)
        consumed = features.shape[0] * HOP_LENGTH
        self._pending = buffer[consumed:].copy()
        self.frames_emitted += features.shape[0]
        return features

    def reset(self) -> None:
        """Forget all buffered audio, as for a new stream."""
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0
