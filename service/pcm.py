"""Live audio input: raw PCM bytes or float arrays in chunks of any size, out as
float32 mono 16 kHz, the one in-memory format of the runtime.

Files go through service.audio; this module adds what streams need: decoding
interleaved PCM bytes while carrying a partial sample frame across calls, and
resampling with soxr's streaming resampler, which gives the same samples as
resampling the whole signal at once.
"""

from __future__ import annotations

import numpy as np

from service.audio import AudioError, check_channels, check_finite, resampler, to_mono
from service.features import SAMPLE_RATE

ENCODINGS: dict[str, np.dtype] = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}
MIN_STREAM_RATE = 8_000
MAX_STREAM_RATE = 192_000
_INT16_SCALE = 1.0 / 32768


def check_stream_format(sample_rate: float, channels: int, encoding: str) -> int:
    """Validate a stream's format; return the sample rate as an int."""
    if not MIN_STREAM_RATE <= sample_rate <= MAX_STREAM_RATE or sample_rate != int(sample_rate):
        raise AudioError(f"unsupported stream sample rate {sample_rate!r} Hz: expected an integer from "
                         f"{MIN_STREAM_RATE} to {MAX_STREAM_RATE} Hz")
    sample_rate = int(sample_rate)
    if not isinstance(channels, int) or isinstance(channels, bool):
        raise AudioError(f"channel count must be an integer, got {channels!r}")
    check_channels(channels)
    if encoding not in ENCODINGS:
        raise AudioError(f"unsupported encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    return sample_rate


class PcmDecoder:
    """Interleaved little-endian PCM bytes -> float32 (frames, channels).

    A chunk may end in the middle of a sample or of a multi-channel frame: the
    incomplete bytes wait for the next chunk.
    """

    def __init__(self, encoding: str, channels: int) -> None:
        self._dtype = ENCODINGS[encoding]
        self._channels = channels
        self._frame_bytes = self._dtype.itemsize * channels
        self._partial = b""

    def decode(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        data = self._partial + bytes(data)
        usable = len(data) - len(data) % self._frame_bytes
        self._partial = data[usable:]
        samples = np.frombuffer(data, dtype=self._dtype, count=usable // self._dtype.itemsize)
        return to_float(samples).reshape(-1, self._channels)

    @property
    def pending_bytes(self) -> int:
        return len(self._partial)

    def reset(self) -> None:
        self._partial = b""


def to_float(samples: np.ndarray) -> np.ndarray:
    """int16 or float samples -> float32 (int16 full scale maps to [-1, 1))."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) * np.float32(_INT16_SCALE)
    if samples.dtype.kind != "f":
        raise AudioError(f"unsupported sample type {samples.dtype}: expected float or int16 samples")
    return check_finite(samples.astype(np.float32, copy=False))


class StreamInput:
    """Chunks of any size in a stream's own format -> float32 mono 16 kHz chunks."""

    def __init__(self, sample_rate: float = SAMPLE_RATE, channels: int = 1, encoding: str = "pcm_f32le") -> None:
        self.sample_rate = check_stream_format(sample_rate, channels, encoding)
        self.channels = channels
        self._decoder = PcmDecoder(encoding, channels)
        self._resampler = resampler(self.sample_rate)  # as files resample, so streams and files agree

    def convert(self, chunk: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
        """Bytes in the stream's encoding, or an array (samples,) / (samples, channels)."""
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            frames = self._decoder.decode(chunk)
        else:
            frames = self._check_array(np.asarray(chunk))
        mono = to_mono(frames) if self.channels > 1 else frames.reshape(-1)
        if self._resampler is None:
            return mono
        return self._resampler.resample_chunk(np.ascontiguousarray(mono))

    def _check_array(self, chunk: np.ndarray) -> np.ndarray:
        if chunk.ndim == 1 and self.channels == 1:
            return to_float(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != self.channels:
            raise AudioError(
                f"expected samples of shape (n, {self.channels})"
                + (" or (n,)" if self.channels == 1 else "")
                + f" for this {self.channels}-channel stream, got {chunk.shape}"
            )
        return to_float(chunk)

    def finish(self) -> np.ndarray:
        """The resampler's last samples at the end of the stream; drops a partial byte frame."""
        tail = np.zeros(0, dtype=np.float32)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(tail, last=True)
        self.reset()
        return tail

    def reset(self) -> None:
        self._decoder.reset()
        if self._resampler is not None:
            self._resampler.clear()
