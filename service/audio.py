"""All audio decoding and resampling: files and bytes in, float32 mono 16 kHz out.

libsndfile decodes what it reads (WAV, FLAC, OGG, MP3, ...); anything it
cannot open goes to FFmpeg through PyAV (M4A/AAC, AMR, WMA, the audio track of
video files, ...), imported only then. Both decode block by block: memory
holds one block whatever the file's length, rate and channels.
"""

from __future__ import annotations

import io
import logging
import os
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Protocol, Union

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
SNDFILE_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count when the header does not tell the length
DECODE_BLOCK_VALUES = 1 << 20  # ... or of this many samples over all channels (4 MB), whichever is smaller
READABLE_FORMATS = ("WAV, FLAC, OGG (Vorbis, Opus), MP3, M4A/AAC, AMR, WMA, the audio track of video files "
                    "(MP4, MKV, WebM, AVI, MOV), or anything else libsndfile or FFmpeg reads")
# What a folder contributes (swishnet classify DIR, swishnet batch DIR), by suffix.
AUDIO_SUFFIXES = frozenset({
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64",
    ".rf64", ".wv",  # libsndfile
    ".m4a", ".m4b", ".aac", ".mp4", ".mov", ".3gp", ".3g2", ".amr", ".awb", ".wma", ".wmv", ".asf", ".mka", ".mkv",
    ".webm", ".avi", ".flv", ".ts", ".mts", ".ac3", ".eac3", ".mpg", ".mpeg", ".ape", ".tta", ".mpc", ".gsm",
    ".voc", ".ra", ".rm",  # FFmpeg
})
# FFmpeg demuxers that may be picked for data it is given: those of audio and video files. Left out on
# purpose: playlists and manifests that open other files or URLs (hls, dash, concat, imf, sdp, rtsp),
# image sequences, text and device formats.
FFMPEG_DEMUXERS = ("mov", "matroska", "webm", "avi", "asf", "flv", "mpegts", "mpeg", "amr", "amrnb", "amrwb",
                   "aac", "loas", "ac3", "eac3", "dts", "truehd", "mlp", "mp3", "ogg", "flac", "wav", "w64",
                   "aiff", "caf", "au", "wv", "ape", "tta", "tak", "mpc", "mpc8", "gsm", "voc", "rm", "nut",
                   "dv", "mxf", "xwma", "spdif", "s337m")

log = logging.getLogger(__name__)


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


class AudioReader(Protocol):
    """An opened file (open_audio): its header, and its frames as float32 (frames, channels) blocks."""

    decoder: str  # "libsndfile" or "ffmpeg"
    samplerate: int
    channels: int
    frames: int  # from the header; 0 when the file does not tell

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]: ...


class SndfileReader:
    """libsndfile's decoding of a file."""

    decoder = "libsndfile"

    def __init__(self, handle: sf.SoundFile) -> None:
        self._handle = handle
        self.samplerate, self.channels = handle.samplerate, handle.channels
        self.frames = 0 if handle.frames >= SNDFILE_UNKNOWN_FRAMES else handle.frames

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        try:
            if self.frames:
                yield from self._handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True)
            else:
                yield from self._blocks_of_unknown_length(block_frames)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise _corrupt(error) from None

    def _blocks_of_unknown_length(self, block_frames: int) -> Iterator[np.ndarray]:
        """Blocks of a file whose header has no length (a FLAC written to a pipe), by libsndfile's own call:
        soundfile's read seeks after each block, which libsndfile cannot do in such a file, and raises the
        error libsndfile flags at its end (FLAC: "lost sync") before handing over the last frames."""
        while True:
            block = np.empty((block_frames, self.channels), dtype=np.float32)
            count = sf._snd.sf_readf_float(self._handle._file, sf._ffi.cast("float *", block.ctypes.data),
                                           block_frames)
            if count <= 0:
                return
            yield block[:count]

    def close(self) -> None:
        self._handle.close()


class FFmpegReader:
    """FFmpeg's decoding (through PyAV) of the first audio track of a container."""

    decoder = "ffmpeg"

    def __init__(self, container, owned_file: BinaryIO | None = None) -> None:  # an av InputContainer
        self._container, self._owned_file = container, owned_file  # both closed by close()
        if not container.streams.audio:
            self.close()
            raise AudioError(f"no audio track in this {container.format.long_name} file")
        self._stream = container.streams.audio[0]
        codec = self._stream.codec_context
        self.samplerate, self.channels = codec.sample_rate, codec.channels
        self.frames = _ffmpeg_frames(container, self._stream, self.samplerate)

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        """Decoded frames converted to packed float32 (channels and rate kept), gathered into blocks."""
        av = _import_av()
        to_float = av.AudioResampler(format="flt", layout=self._stream.codec_context.layout, rate=self.samplerate)
        block, filled = np.empty((block_frames, self.channels), dtype=np.float32), 0
        try:
            for frame in self._container.decode(self._stream):
                for converted in to_float.resample(frame):
                    samples = converted.to_ndarray().reshape(-1, self.channels)
                    while len(samples):
                        taken = min(block_frames - filled, len(samples))
                        block[filled : filled + taken] = samples[:taken]
                        filled, samples = filled + taken, samples[taken:]
                        if filled == block_frames:
                            yield block
                            block, filled = np.empty_like(block), 0
            tail = [converted.to_ndarray().reshape(-1, self.channels) for converted in to_float.resample(None)]
        except (av.FFmpegError, ValueError) as error:
            raise _corrupt(error) from None
        yield from (part for part in (block[:filled], *tail) if len(part))

    def close(self) -> None:
        self._container.close()
        if self._owned_file is not None:
            self._owned_file.close()


def _ffmpeg_frames(container, stream, sample_rate: int) -> int:
    """The track's length in frames as the container states it (0 when it does not)."""
    if stream.duration is not None and stream.time_base is not None:
        return int(stream.duration * stream.time_base * sample_rate)
    if container.duration is not None:  # in microseconds (av.time_base)
        return int(container.duration * sample_rate / 1_000_000)
    return 0


def _import_av():
    """PyAV, with FFmpeg's own log messages off unless this module logs at DEBUG level (--log-level DEBUG),
    where they go to Python's logging as the 'libav' loggers."""
    try:
        import av
        import av.logging
    except ImportError as error:
        raise AudioError(f"this file needs FFmpeg to decode, and PyAV is not installed ({error}): "
                         "pip install av") from None
    av.logging.set_level(av.logging.WARNING if log.isEnabledFor(logging.DEBUG) else None)
    return av


def _open(source: AudioSource) -> AudioReader:
    """libsndfile's reader for the source, or FFmpeg's when libsndfile cannot open it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("empty audio: the file or request body has no bytes")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise AudioError(f"no such audio file: {os.fspath(source)}")
    elif _at_end(source):
        raise AudioError("empty audio: the file or request body has no bytes")
    start = None if isinstance(source, (str, os.PathLike)) else source.tell()
    try:
        return SndfileReader(sf.SoundFile(source))
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        sndfile_reason = _reason(error)
    if start is not None:
        source.seek(start)
    return _open_ffmpeg(source, sndfile_reason)


def _open_ffmpeg(source: str | os.PathLike | BinaryIO, sndfile_reason: str) -> FFmpegReader:
    """FFmpeg's reader; a path is opened as a Python file, so no part of its name is read as a protocol."""
    av = _import_av()
    handle = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    try:
        container = av.open(handle, "r", container_options={"format_whitelist": ",".join(FFMPEG_DEMUXERS)},
                            metadata_errors="ignore")
    except (av.FFmpegError, ValueError) as error:
        if handle is not source:
            handle.close()
        raise AudioError(f"cannot decode audio (libsndfile: {sndfile_reason}; FFmpeg: {_reason(error)}); "
                         f"readable formats: {READABLE_FORMATS}") from None
    return FFmpegReader(container, None if handle is source else handle)


def _at_end(handle: BinaryIO) -> bool:
    """Whether a binary file object has nothing left to read (its position is kept)."""
    position = handle.tell()
    empty = not handle.read(1)
    handle.seek(position)
    return empty


def _reason(error: Exception) -> str:
    """The decoder's own words, without the Python object or file name it was given (which say nothing to a
    client)."""
    return getattr(error, "error_string", None) or getattr(error, "strerror", None) or str(error)


def _corrupt(error: Exception) -> AudioError:
    return AudioError(f"cannot decode audio, the file looks truncated or corrupt ({_reason(error)})")


@contextmanager
def open_audio(source: AudioSource, *, max_duration_s: float | None = None) -> Iterator[AudioReader]:
    """Open audio for reading in blocks, after checking its header.

    Raises AudioError as load_audio does; read with ``decoded_blocks``.
    """
    reader = _open(source)
    try:
        check_sample_rate(reader.samplerate)
        check_channels(reader.channels)
        _check_duration(reader.frames, reader.samplerate, max_duration_s)
        yield reader
    finally:
        reader.close()


def decoded_blocks(reader: AudioReader, max_duration_s: float | None = None) -> Iterator[np.ndarray]:
    """Successive float32 mono 16 kHz blocks of a file from ``open_audio``, decoded and resampled as a stream
    (the samples of a whole-file resample), so memory holds one block whatever the file's rate and channels.

    Raises AudioError for corrupt or empty data, NaN/inf samples, and audio
    that runs past ``max_duration_s`` (headers of some formats do not tell).
    """
    to_16k, decoded = resampler(reader.samplerate), 0
    block_frames = max(1, min(int(DECODE_BLOCK_S * reader.samplerate), DECODE_BLOCK_VALUES // reader.channels))
    for block in reader.blocks(block_frames):
        decoded += block.shape[0]
        _check_duration(decoded, reader.samplerate, max_duration_s)
        mono = check_finite(to_mono(block))
        yield mono if to_16k is None else to_16k.resample_chunk(mono)
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
