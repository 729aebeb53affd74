"""All audio decoding and resampling: files and bytes in, float32 mono 16 kHz out."""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Union

import numpy as np
import soundfile as sf
import soxr

from service.features import SAMPLE_RATE

AudioSource = Union[str, os.PathLike, bytes, BinaryIO]

MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64
RESAMPLE_QUALITY = "HQ"
DECODE_BLOCK_S = 10.0  # files decode in blocks of this much audio ...
DECODE_BLOCK_VALUES = 1 << 20  # ... or of this many samples over all channels (4 MB), whichever is smaller
READABLE_FORMATS = "WAV, FLAC, OGG (Vorbis, Opus) and MP3, or anything else libsndfile reads"


class AudioError(ValueError):
    """Audio that cannot be used; the message says why and what is accepted."""


class AudioTooLongError(AudioError):
    """Audio longer than the caller's limit."""


def _check_duration(n_samples: int, sample_rate: int, max_duration_s: float | None) -> None:
    if max_duration_s is not None and n_samples / sample_rate > max_duration_s:
        raise AudioTooLongError(f"audio is {n_samples / sample_rate:.1f} s long; the limit is {max_duration_s:g} s")


def check_sample_rate(sample_rate: float) -> int:
    """Return ``sample_rate`` as an int, or raise AudioError if it is absurd."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE or sample_rate != int(sample_rate):
        raise AudioError(
            f"unsupported sample rate {sample_rate!r} Hz: expected an integer from "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
    return int(sample_rate)


def check_channels(channels: int) -> int:
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"unsupported channel count {channels}: expected 1 to {MAX_CHANNELS}")
    return channels


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of (frames, channels) audio; mono passes through."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"expected audio of shape (frames,) or (frames, channels), got {samples.shape}")
    check_channels(samples.shape[1])
    return samples.mean(axis=1, dtype=np.float32)


def check_finite(samples: np.ndarray) -> np.ndarray:
    """``samples``, or AudioError if any is NaN or infinite (they would poison the features)."""
    if not np.all(np.isfinite(samples)):
        raise AudioError("audio contains NaN or infinite samples")
    return samples


def to_model_input(samples: np.ndarray, sample_rate: float) -> np.ndarray:
    """Convert decoded audio of any rate and channel count to float32 mono 16 kHz."""
    sample_rate = check_sample_rate(sample_rate)
    mono = check_finite(to_mono(samples))
    if sample_rate == SAMPLE_RATE:
        return np.ascontiguousarray(mono)
    return soxr.resample(mono, sample_rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def resampler(sample_rate: int) -> soxr.ResampleStream | None:
    """A streaming resampler from ``sample_rate`` to 16 kHz mono (it gives the samples of a whole-signal
    resample); None at 16 kHz."""
    if sample_rate == SAMPLE_RATE:
        return None
    return soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)


def _open(source: AudioSource) -> sf.SoundFile:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("empty audio: the file or request body has no bytes")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise AudioError(f"no such audio file: {os.fspath(source)}")
    elif _at_end(source):
        raise AudioError("empty audio: the file or request body has no bytes")
    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"cannot decode audio ({_reason(error)}); readable formats: {READABLE_FORMATS}") from None


def _at_end(handle: BinaryIO) -> bool:
    """Whether a binary file object has nothing left to read (its position is kept)."""
    position = handle.tell()
    empty = not handle.read(1)
    handle.seek(position)
    return empty


def _reason(error: Exception) -> str:
    """libsndfile's own words, without the Python object it was given (which says nothing to a client)."""
    return getattr(error, "error_string", None) or str(error)


def _corrupt(error: Exception) -> AudioError:
    return AudioError(f"cannot decode audio, the file looks truncated or corrupt ({_reason(error)})")


@contextmanager
def open_audio(source: AudioSource, *, max_duration_s: float | None = None) -> Iterator[sf.SoundFile]:
    """Open audio for reading in blocks, after checking its header.

    Raises AudioError as load_audio does; read with ``decoded_blocks``.
    """
    with _open(source) as handle:
        sample_rate = check_sample_rate(handle.samplerate)
        check_channels(handle.channels)
        _check_duration(handle.frames, sample_rate, max_duration_s)
        yield handle


def decoded_blocks(handle: sf.SoundFile, max_duration_s: float | None = None) -> Iterator[np.ndarray]:
    """Successive float32 mono 16 kHz blocks of a file from ``open_audio``, decoded and resampled as a stream
    (the samples of a whole-file resample), so memory holds one block whatever the file's rate and channels.

    Raises AudioError for corrupt or empty data, NaN/inf samples, and audio
    that runs past ``max_duration_s`` (headers of some formats do not tell).
    """
    to_16k, decoded = resampler(handle.samplerate), 0
    block_frames = max(1, min(int(DECODE_BLOCK_S * handle.samplerate), DECODE_BLOCK_VALUES // handle.channels))
    try:
        for block in handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
            decoded += block.shape[0]
            _check_duration(decoded, handle.samplerate, max_duration_s)
            mono = check_finite(to_mono(block))
            yield mono if to_16k is None else to_16k.resample_chunk(mono)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise _corrupt(error) from None
    if decoded == 0:
        raise AudioError("empty audio: the file decodes to zero samples")
    if to_16k is not None:
        yield to_16k.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def load_audio(source: AudioSource, *, max_duration_s: float | None = None) -> np.ndarray:
    """Decode a file path, bytes or binary file object to float32 mono 16 kHz.

    Raises AudioError for empty, corrupt or unsupported data, absurd sample
    rates or channel counts, NaN/inf samples, and audio longer than
    ``max_duration_s`` (checked before decoding when the header tells, and
    while decoding when it does not). Decoding goes block by block
    (``decoded_blocks``): a small file that unpacks to hours of many-channel,
    high-rate audio never sits in memory whole.
    """
    with open_audio(source, max_duration_s=max_duration_s) as handle:
        return np.concatenate(list(decoded_blocks(handle, max_duration_s)))
