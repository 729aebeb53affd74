"""Real files in the formats libsndfile cannot read, written with PyAV (FFmpeg inside its wheels)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# name: (container format, audio codec, sample rate, channels, with a video track)
FORMATS = {
    "m4a": ("mp4", "aac", 44_100, 2, False),
    "mp4": ("mp4", "aac", 48_000, 2, True),  # a video's audio track
    "mkv": ("matroska", "libopus", 48_000, 2, True),
    "webm": ("webm", "libopus", 48_000, 1, True),
    "amr": ("amr", "libopencore_amrnb", 8_000, 1, False),
    "wma": ("asf", "wmav2", 44_100, 2, False),
    "aac": ("adts", "aac", 22_050, 1, False),  # raw AAC: no container to state the length
}
VIDEO_RATE = 5  # frames per second of the (black, tiny) video track


def write_media(path: Path, audio: np.ndarray, sample_rate: int, container: str, codec: str, *,
                channels: int = 1, video: bool = False, audio_track: bool = True) -> Path:
    """Encode mono float32 ``audio`` (copied to every channel) at ``sample_rate`` into ``path``."""
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w", format=container) as out:
        streams = []  # every stream is added before the first packet is written
        if video:
            video_stream = out.add_stream("mpeg4" if container != "webm" else "libvpx", rate=VIDEO_RATE)
            video_stream.width, video_stream.height, video_stream.pix_fmt = 32, 32, "yuv420p"
            black = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
            streams.append((video_stream, [black] * max(1, round(audio.size / sample_rate * VIDEO_RATE))))
        if audio_track:
            audio_stream = out.add_stream(codec, rate=sample_rate, layout=layout)
            audio_stream.bit_rate = 64_000 * channels if codec != "libopencore_amrnb" else 12_200  # WMA needs one
            planes = np.repeat(np.asarray(audio, dtype=np.float32)[None], channels, axis=0)
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
            frame.rate = sample_rate
            streams.append((audio_stream, [frame]))
        for stream, frames in streams:
            for frame in frames:
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
    return path


def write_format(path: Path, name: str, audio: np.ndarray) -> Path:
    """``audio`` at the format's own rate and channels; see FORMATS."""
    container, codec, sample_rate, channels, video = FORMATS[name]
    return write_media(path, audio, sample_rate, container, codec, channels=channels, video=video)
