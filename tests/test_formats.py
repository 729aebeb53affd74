"""Formats libsndfile cannot read go to FFmpeg (PyAV): M4A/AAC, AMR, WMA, video files' audio tracks."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from service.audio import AudioError, AudioTooLongError, load_audio, open_audio
from service.features import SAMPLE_RATE
from service.stream import classify_file
from tests.media import FORMATS, write_format, write_media

TONE_HZ = 440.0


def tone(seconds: float, sample_rate: int) -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * TONE_HZ * np.arange(round(seconds * sample_rate)) / sample_rate)).astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 2 s 440 Hz tone in every format of tests.media.FORMATS."""
    folder = tmp_path_factory.mktemp("media")
    return {name: write_format(folder / f"tone.{name}", name, tone(2.0, FORMATS[name][2])) for name in FORMATS}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_ffmpeg_formats_decode_to_16k_mono(media, name):
    with open_audio(media[name]) as reader:
        assert reader.decoder == "ffmpeg"  # libsndfile cannot open these
        assert (reader.samplerate, reader.channels) == (FORMATS[name][2], FORMATS[name][3])
    audio = load_audio(media[name])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - 2 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # codecs add priming and padding
    spectrum = np.abs(np.fft.rfft(audio[4000:28000]))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / 24000 - TONE_HZ) < 5
    # a path, its bytes and a file object (a spooled upload) decode alike
    np.testing.assert_array_equal(load_audio(media[name].read_bytes()), audio)
    np.testing.assert_array_equal(load_audio(io.BytesIO(media[name].read_bytes())), audio)


@pytest.mark.parametrize("name", ["m4a", "mp4", "amr"])
def test_ffmpeg_formats_classify(classifier, media, name):
    result = classify_file(media[name], classifier)
    assert result.file == str(media[name])
    assert result.segments and result.segments[0].start == 0.0
    assert abs(result.duration_s - 2.0) < 0.1


def test_libsndfile_formats_stay_with_libsndfile(tmp_path):
    path = tmp_path / "tone.flac"
    sf.write(path, tone(1.0, 44_100), 44_100)
    with open_audio(path) as reader:
        assert reader.decoder == "libsndfile"


def test_ffmpeg_decodes_block_by_block(tmp_path):
    """A long 6-channel AAC is never held whole: memory holds one block, as for libsndfile's formats."""
    rate, seconds, channels = 48_000, 60, 6
    path = tmp_path / "wide.mka"  # 6 channels: PCM in Matroska (libsndfile does not read Matroska)
    import av

    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("pcm_f32le", rate=rate, layout="5.1")
        planes = np.repeat(tone(seconds, rate)[None], channels, axis=0)
        for start in range(0, planes.shape[1], rate):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes[:, start:start + rate]), format="fltp",
                                               layout="5.1")
            frame.rate = rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    whole_decode_bytes = rate * seconds * channels * 4
    tracemalloc.start()
    try:
        audio = load_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert abs(audio.size - seconds * SAMPLE_RATE) < SAMPLE_RATE // 10
    assert peak < whole_decode_bytes / 4, f"peak {peak / 1e6:.0f} MB for a {whole_decode_bytes / 1e6:.0f} MB decode"


def test_duration_limit_applies_to_ffmpeg_formats(media):
    with pytest.raises(AudioTooLongError, match="limit is 1 s"):
        load_audio(media["m4a"], max_duration_s=1)
    assert load_audio(media["m4a"], max_duration_s=5).size > 0


def test_video_without_audio_is_a_clear_error(tmp_path):
    path = write_media(tmp_path / "silent-film.mp4", tone(1.0, 16_000), 16_000, "mp4", "aac", video=True,
                       audio_track=False)
    with pytest.raises(AudioError, match="no audio track"):
        load_audio(path)


def test_truncated_and_unknown_files_name_both_decoders(media, tmp_path):
    truncated = tmp_path / "truncated.m4a"
    truncated.write_bytes(media["m4a"].read_bytes()[:200])
    for source in (truncated, b"this is not audio at all" * 10):
        with pytest.raises(AudioError, match="cannot decode audio.*libsndfile.*FFmpeg.*M4A/AAC"):
            load_audio(source)


def test_playlists_are_not_followed(tmp_path):
    """FFmpeg's playlist demuxers (HLS, concat) open the files or URLs they list; an upload must not."""
    sf.write(tmp_path / "secret.wav", tone(1.0, SAMPLE_RATE), SAMPLE_RATE)
    playlists = {
        "list.m3u8": "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nsecret.wav\n#EXT-X-ENDLIST\n",
        "list.ffconcat": "ffconcat version 1.0\nfile secret.wav\n",
    }
    for name, text in playlists.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(AudioError, match="cannot decode"):
            load_audio(tmp_path / name)
        with pytest.raises(AudioError, match="cannot decode"):
            load_audio(text.encode())
