import numpy as np
import pytest

from service import features as F
from tests.conftest import make_signal

librosa = pytest.importorskip("librosa")

KINDS = ["speech", "music", "noise", "silence"]


def librosa_mfcc(audio: np.ndarray) -> np.ndarray:
    """The documented librosa equivalent of service.features.mfcc."""
    pad = (F.N_FFT - F.WIN_LENGTH) // 2
    mel = librosa.feature.melspectrogram(
        y=np.pad(audio.astype(np.float64), pad), sr=F.SAMPLE_RATE, n_fft=F.N_FFT, hop_length=F.HOP_LENGTH,
        win_length=F.WIN_LENGTH, window="hann", center=False, n_mels=F.N_MELS, power=2.0,
    )
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=F.LOG_FLOOR, top_db=None)
    return librosa.feature.mfcc(S=log_mel, n_mfcc=F.N_MFCC, dct_type=2, norm="ortho").T


@pytest.mark.parametrize("kind", KINDS)
def test_mfcc_matches_librosa(kind):
    audio = make_signal(kind, seconds=1.3, seed=1)
    ours = F.mfcc(audio)
    ref = librosa_mfcc(audio)
    assert ours.shape == ref.shape == (F.n_frames(audio.size), F.N_MFCC)
    scale = np.abs(ref).max()
    assert np.max(np.abs(ours - ref)) / scale < 1e-4


def test_filterbank_matches_librosa():
    ref = librosa.filters.mel(sr=F.SAMPLE_RATE, n_fft=F.N_FFT, n_mels=F.N_MELS, fmin=F.F_MIN, fmax=F.F_MAX)
    np.testing.assert_allclose(F._MEL_BASIS.T, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("n_samples,expected", [
    (0, 0), (1, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16_000, 98), (8_000, 48), (32_000, 198),
])
def test_frame_counts_are_exact(n_samples, expected):
    assert F.n_frames(n_samples) == expected
    assert F.mfcc(np.zeros(n_samples, dtype=np.float32)).shape == (expected, F.N_MFCC)


def test_frame_depends_only_on_its_own_samples():
    audio = make_signal("speech", seconds=0.5)
    frames = F.mfcc(audio)
    t = 7
    alone = F.mfcc(audio[t * F.HOP_LENGTH: t * F.HOP_LENGTH + F.WIN_LENGTH])
    np.testing.assert_array_equal(alone[0], frames[t])


def test_long_input_is_processed_in_blocks_identically():
    audio = make_signal("noise", seconds=(F._BLOCK_FRAMES * 1.5 * F.HOP_LENGTH) / F.SAMPLE_RATE)
    full = F.mfcc(audio)
    start = (F._BLOCK_FRAMES + 3) * F.HOP_LENGTH
    np.testing.assert_allclose(full[F._BLOCK_FRAMES + 3], F.mfcc(audio[start:start + F.WIN_LENGTH])[0], atol=1e-5)


def test_mfcc_rejects_multichannel():
    with pytest.raises(ValueError, match="mono"):
        F.mfcc(np.zeros((1000, 2), dtype=np.float32))


@pytest.mark.parametrize("chunk", [1, 160, 999, 7, 401, None])
def test_streaming_equals_offline(chunk):
    audio = make_signal("music", seconds=0.7, seed=3) + make_signal("noise", seconds=0.7, seed=4) * 0.1
    offline = F.mfcc(audio)
    stream = F.StreamingMfcc()
    step = chunk or audio.size
    parts = [stream.push(audio[i:i + step]) for i in range(0, audio.size, step)]
    streamed = np.concatenate(parts)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    assert stream.frames_emitted == offline.shape[0]


def test_streaming_random_chunks_and_reset():
    rng = np.random.default_rng(0)
    audio = make_signal("speech", seconds=0.9, seed=5)
    stream = F.StreamingMfcc()
    stream.push(make_signal("noise", seconds=0.05))
    stream.reset()
    cuts = np.sort(rng.choice(audio.size, size=40, replace=False))
    streamed = np.concatenate([stream.push(part) for part in np.split(audio, cuts)])
    np.testing.assert_allclose(streamed, F.mfcc(audio), atol=1e-5)


def test_streaming_memory_is_bounded():
    stream = F.StreamingMfcc()
    chunk = make_signal("noise", seconds=1.0)
    for _ in range(30):
        stream.push(chunk)
        assert stream._pending.size < F.WIN_LENGTH
