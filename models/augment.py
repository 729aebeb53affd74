"""Audio augmentation for training, and the channel effects evaluation reuses.

Every class goes through the same chain with the same probabilities, so that
bandwidth and codec artefacts stop giving the class away (DATA.md, trap 1:
most speech sources are 8 to 11 kHz band-limited, most music and noise full
band). The chain, on 16 kHz mono float32 audio:

1. added noise (probability ``p_noise``): a segment of a training noise clip
   (real or synthetic) at a random SNR; when the window itself is noise, the
   same step mixes two noise clips at comparable levels;
2. room reverb (``p_reverb``): a synthetic exponentially decaying impulse
   response with a random RT60, mixed wet/dry;
3. one channel effect at most: low-pass; a telephone network (8 kHz,
   300 to 3400 Hz, then G.711 mu-law or A-law, GSM 06.10 or narrowband Opus,
   or no codec, as real networks and the sox-made copies of the hidden set
   do); a low-bitrate MP3; or a low-bitrate wideband Opus;
4. clipping (``p_clip``): up to 12 dB of gain into a hard limit;
5. loudness equalisation to a random level: the active-frame RMS is set to a
   level drawn from ``level_dbfs`` (the paper equalises loudness; the random
   level teaches the network that loudness carries no class information).

Codec choice, measured on 2 s at 16 kHz through libsndfile: MP3 (CBR) costs
about 15 ms and at 8 to 32 kbit/s cuts the band to about 3 to 7 kHz, as real
low-bitrate sources do; Vorbis costs 10 ms but stays full band even at its
lowest quality; Opus costs about 15 ms at 8 kHz and 30 ms at 16 kHz (libsndfile
1.2). G.711 and GSM cost under 4 ms.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import scipy.signal
import soundfile as sf
import soxr

from service.features import HOP_LENGTH, SAMPLE_RATE, WIN_LENGTH

NoiseSource = Callable[[np.random.Generator, int], np.ndarray]
"""(rng, n_samples) -> a noise segment of exactly n_samples."""

SILENCE_FLOOR_DBFS = -60.0  # frames quieter than this are silence, whatever the clip
SILENCE_BELOW_PEAK_DB = 40.0  # ... and so are frames this far below the clip's loud frames
TELEPHONE_BAND_HZ = (300.0, 3400.0)
TELEPHONE_RATE = 8_000
EVAL_MP3_COMPRESSION = 0.95  # libsndfile's CBR MP3 setting for the band-limited evaluation


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentation chain (the same for every class)."""

    p_noise: float = 0.3
    snr_db: tuple[float, float] = (5.0, 25.0)
    noise_mix_db: tuple[float, float] = (-6.0, 6.0)  # noise over noise: comparable levels
    p_lowpass: float = 0.15
    lowpass_hz: tuple[float, float] = (3000.0, 7500.0)
    p_telephone: float = 0.25
    p_telephone_resample: float = 0.8
    telephone_codecs: tuple[str, ...] = ("none", "ULAW", "ALAW", "GSM610", "OPUS")
    p_mp3: float = 0.15
    mp3_compression: tuple[float, float] = (0.85, 0.99)  # about 8 to 32 kbit/s at 16 kHz
    p_opus: float = 0.05
    opus_compression: tuple[float, float] = (0.7, 1.0)  # libsndfile's Opus setting: lower bitrates
    p_reverb: float = 0.2
    rt60_s: tuple[float, float] = (0.15, 1.0)
    p_clip: float = 0.1
    clip_gain_db: tuple[float, float] = (3.0, 12.0)
    level_dbfs: tuple[float, float] = (-40.0, -10.0)


def frame_levels_db(audio: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each feature frame (same framing as service.features)."""
    if audio.size < WIN_LENGTH:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(audio, WIN_LENGTH)[::HOP_LENGTH]
    power = np.mean(np.square(frames, dtype=np.float64), axis=1)
    return 10.0 * np.log10(np.maximum(power, 1e-12))


def active_frames(audio: np.ndarray) -> np.ndarray:
    """Boolean mask of the feature frames that are not silence."""
    levels = frame_levels_db(audio)
    if levels.size == 0:
        return levels.astype(bool)
    threshold = max(SILENCE_FLOOR_DBFS, np.percentile(levels, 95) - SILENCE_BELOW_PEAK_DB)
    return levels > threshold


def active_rms_db(audio: np.ndarray) -> float:
    """Level of the non-silent frames in dBFS (of all frames if every frame is silent)."""
    levels = frame_levels_db(audio)
    if levels.size == 0:
        return 10.0 * np.log10(max(float(np.mean(np.square(audio, dtype=np.float64))), 1e-12))
    active = levels[active_frames(audio)]
    chosen = active if active.size else levels
    return float(10.0 * np.log10(np.mean(10.0 ** (chosen / 10.0))))


def set_level(audio: np.ndarray, level_dbfs: float) -> np.ndarray:
    return (audio * 10.0 ** ((level_dbfs - active_rms_db(audio)) / 20.0)).astype(np.float32)


@lru_cache(maxsize=256)
def _butter(order: int, cutoff_hz: tuple[float, ...] | float, kind: str) -> np.ndarray:
    return scipy.signal.butter(order, cutoff_hz, btype=kind, fs=SAMPLE_RATE, output="sos")


def lowpass(audio: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """8th-order Butterworth low-pass (cutoff rounded to 50 Hz so designs are cached)."""
    sos = _butter(8, float(round(cutoff_hz / 50.0) * 50.0), "lowpass")
    return scipy.signal.sosfilt(sos, audio).astype(np.float32)


def _fit(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Truncate or zero-pad to exactly n_samples (codecs and resamplers round lengths)."""
    return np.pad(audio[:n_samples], (0, max(0, n_samples - audio.size))).astype(np.float32)


def telephone(audio: np.ndarray, through_8k: bool = True, codec: str = "none") -> np.ndarray:
    """Telephone channel: a 300 to 3400 Hz band-pass, optionally at 8 kHz through a codec
    (``none``, or libsndfile's ``ULAW``, ``ALAW``, ``GSM610``, ``OPUS``), back at 16 kHz."""
    band = scipy.signal.sosfilt(_butter(6, TELEPHONE_BAND_HZ, "bandpass"), audio).astype(np.float32)
    if not through_8k:
        return band
    narrow = soxr.resample(band, SAMPLE_RATE, TELEPHONE_RATE)
    if codec != "none":
        narrow = codec_round_trip(narrow, TELEPHONE_RATE, codec)
    return _fit(soxr.resample(narrow, TELEPHONE_RATE, SAMPLE_RATE), audio.size)


def codec_round_trip(audio: np.ndarray, rate: int, codec: str, compression_level: float | None = None) -> np.ndarray:
    """Encode with a libsndfile codec (WAV ULAW / ALAW / GSM610, or OGG OPUS) and decode, same length."""
    scale = max(1.0, float(np.max(np.abs(audio), initial=0.0)) / 0.9)
    buffer = io.BytesIO()
    options = {} if compression_level is None else {"compression_level": compression_level}
    sf.write(buffer, audio / scale, rate, format="OGG" if codec == "OPUS" else "WAV", subtype=codec, **options)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    return _fit(decoded * scale, audio.size)


def reverb(audio: np.ndarray, rt60_s: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response (decaying noise, -60 dB at ``rt60_s``), mixed ``wet``."""
    n = int(rt60_s * SAMPLE_RATE)
    response = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)  # ln(1000): 60 dB over rt60
    response[0] = 0.0
    response /= np.sqrt(np.sum(response ** 2))
    wet_signal = scipy.signal.fftconvolve(audio, response)[: audio.size]
    return ((1 - wet) * audio + wet * wet_signal).astype(np.float32)


def clip(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """Raise by ``gain_db`` above full-scale peak 0.5 and hard-limit at full scale: overdriven input."""
    peak = max(float(np.max(np.abs(audio), initial=0.0)), 1e-9)
    return np.clip(audio * (0.5 / peak) * 10 ** (gain_db / 20), -1.0, 1.0).astype(np.float32)


def mp3_round_trip(audio: np.ndarray, compression_level: float) -> tuple[np.ndarray, int]:
    """Encode to constant-bit-rate MP3 and decode; returns (audio aligned to the input, bytes).

    Some low bitrates come back delayed by the encoder (about 1,100 samples):
    the delay is found by cross-correlation, so features stay aligned. Loud
    input is scaled into the codec's range and back, so the codec never clips.
    """
    scale = max(1.0, float(np.max(np.abs(audio), initial=0.0)) / 0.9)
    buffer = io.BytesIO()
    sf.write(buffer, audio / scale, SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III",
             compression_level=compression_level, bitrate_mode="CONSTANT")
    size = buffer.tell()
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    if decoded.size > audio.size:
        lags = scipy.signal.correlate(decoded, audio, mode="valid", method="fft")
        start = int(np.argmax(lags))
        decoded = decoded[start : start + audio.size]
    return _fit(decoded * scale, audio.size), size


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix ``noise`` under ``audio`` so that their active levels differ by ``snr_db``."""
    gain_db = active_rms_db(audio) - active_rms_db(noise) - snr_db
    return (audio + noise * 10.0 ** (gain_db / 20.0)).astype(np.float32)


def random_channel(audio: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Apply at most one channel effect, chosen with the configured probabilities."""
    draw = rng.random()
    if draw < config.p_lowpass:
        return lowpass(audio, rng.uniform(*config.lowpass_hz))
    draw -= config.p_lowpass
    if draw < config.p_telephone:
        through_8k = rng.random() < config.p_telephone_resample
        return telephone(audio, through_8k, str(rng.choice(config.telephone_codecs)) if through_8k else "none")
    draw -= config.p_telephone
    if draw < config.p_mp3:
        return mp3_round_trip(audio, rng.uniform(*config.mp3_compression))[0]
    draw -= config.p_mp3
    if draw < config.p_opus:
        return codec_round_trip(audio, SAMPLE_RATE, "OPUS", rng.uniform(*config.opus_compression))
    return audio


def augment(
    audio: np.ndarray, is_noise: bool, rng: np.random.Generator, config: AugmentConfig, noise_source: NoiseSource
) -> np.ndarray:
    """The training chain (module docstring); ``is_noise`` only picks the mixing level range."""
    if rng.random() < config.p_noise:
        snr_db = rng.uniform(*(config.noise_mix_db if is_noise else config.snr_db))
        audio = add_noise(audio, noise_source(rng, audio.size), snr_db)
    if rng.random() < config.p_reverb:
        audio = reverb(audio, rng.uniform(*config.rt60_s), rng.uniform(0.2, 0.8), rng)
    audio = random_channel(audio, rng, config)
    if rng.random() < config.p_clip:
        audio = clip(audio, rng.uniform(*config.clip_gain_db))
    return set_level(audio, rng.uniform(*config.level_dbfs))
