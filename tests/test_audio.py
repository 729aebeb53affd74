import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from service.audio import AudioError, load_audio, to_model_input
from service.features import SAMPLE_RATE
from tests.conftest import make_signal


def encode(audio: np.ndarray, sample_rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS"),
                                         ("MP3", None)])
@pytest.mark.parametrize("sample_rate", [8_000, 16_000, 44_100, 48_000])
def test_formats_and_rates_decode_to_16k_mono(fmt, subtype, sample_rate):
    if subtype == "OPUS" and sample_rate == 44_100:
        pytest.skip("Opus does not support 44.1 kHz")
    tone = np.sin(2 * np.pi * 440 * np.arange(sample_rate) / sample_rate).astype(np.float32) * 0.5
    stereo = np.stack([tone, tone], axis=1)
    audio = load_audio(encode(stereo, sample_rate, fmt, subtype))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - SAMPLE_RATE) < 0.05 * SAMPLE_RATE  # codecs may add padding
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / 12000
    assert abs(peak_hz - 440) < 5


def test_files_decode_in_blocks_like_a_whole_file_resample(tmp_path):
    """A small FLAC of long, many-channel, high-rate audio must not be decoded whole: that would let an
    upload of a few hundred kilobytes take gigabytes of memory."""
    rate, seconds, channels = 96_000, 30, 8
    t = np.arange(rate * seconds) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / "wide.flac"
    sf.write(path, np.repeat(tone[:, None], channels, axis=1), rate, subtype="PCM_16")
    whole_decode_bytes = rate * seconds * channels * 4
    tracemalloc.start()
    try:
        audio = load_audio(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < whole_decode_bytes / 4, f"peak {peak / 1e6:.0f} MB for a {whole_decode_bytes / 1e6:.0f} MB decode"
    # block by block gives the samples of one resample of the whole signal
    expected = to_model_input(sf.read(path, dtype="float32")[0], rate)
    np.testing.assert_array_equal(audio, expected)


def test_path_and_bytes_give_the_same_audio(tmp_path):
    audio = make_signal("speech", seconds=0.5)
    path = tmp_path / "a.flac"
    sf.write(path, audio, SAMPLE_RATE)
    np.testing.assert_array_equal(load_audio(path), load_audio(path.read_bytes()))
    np.testing.assert_allclose(load_audio(path), audio, atol=1e-4)


def test_stereo_is_averaged():
    left = np.full(1600, 0.5, dtype=np.float32)
    right = np.zeros(1600, dtype=np.float32)
    out = load_audio(encode(np.stack([left, right], 1), SAMPLE_RATE, "WAV", "FLOAT"))
    np.testing.assert_allclose(out, 0.25)


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"this is not audio at all" * 10, "cannot decode"),
    (encode(make_signal("noise", 1.0), SAMPLE_RATE, "WAV", "PCM_16")[:30], "cannot decode|empty"),
])
def test_bad_bytes_raise_clear_errors(data, message):
    with pytest.raises(AudioError, match=message):
        load_audio(data)
    with pytest.raises(AudioError, match=message):  # the same bytes as a file object (a spooled upload)
        load_audio(io.BytesIO(data))


def test_zero_length_file_is_empty_error():
    with pytest.raises(AudioError, match="empty"):
        load_audio(encode(np.zeros((0, 1), dtype=np.float32), SAMPLE_RATE, "WAV", "PCM_16"))


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")


def test_duration_limit_checked():
    data = encode(make_signal("noise", 3.0), SAMPLE_RATE, "WAV", "PCM_16")
    with pytest.raises(AudioError, match="limit is 2 s"):
        load_audio(data, max_duration_s=2)
    assert load_audio(data, max_duration_s=5).size == 3 * SAMPLE_RATE


@pytest.mark.parametrize("rate", [0, -16000, 500, 1_000_000, 44100.5])
def test_absurd_sample_rates(rate):
    with pytest.raises(AudioError, match="sample rate"):
        to_model_input(np.zeros(100, dtype=np.float32), rate)


def test_absurd_rate_in_header():
    data = bytearray(encode(np.zeros(1000, dtype=np.float32), SAMPLE_RATE, "WAV", "PCM_16"))
    data[24:28] = (3_000_000).to_bytes(4, "little")  # the WAV header's sample-rate field
    with pytest.raises(AudioError, match="sample rate|cannot decode"):
        load_audio(bytes(data))


def test_nan_and_zero_channels():
    bad = np.zeros(100, dtype=np.float32)
    bad[10] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        to_model_input(bad, SAMPLE_RATE)
    with pytest.raises(AudioError, match="channel"):
        to_model_input(np.zeros((100, 0), dtype=np.float32), SAMPLE_RATE)


def test_resampling_preserves_a_tone():
    rate = 44_100
    tone = np.sin(2 * np.pi * 1000 * np.arange(rate) / rate).astype(np.float32)
    out = to_model_input(tone, rate)
    assert out.size == SAMPLE_RATE
    expected = np.sin(2 * np.pi * 1000 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    assert np.max(np.abs(out[200:-200] - expected[200:-200])) < 0.01
