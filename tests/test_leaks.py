"""Cross-split leak finder: a held-out clip that is a train clip at another level and offset is found;
different recordings of the same kind of noise are not."""

import csv

import numpy as np
import scipy.signal
import soundfile as sf

from models.dataset import read_manifest
from models.leaks import correlation, find_leaks, trajectories
from service.cli import main
from service.features import SAMPLE_RATE
from tests.fake_corpus import make_corpus


def shaped_noise(n: int, seed: int) -> np.ndarray:
    """Noise with its own spectrum and loudness contour: every seed is a different recording."""
    rng = np.random.default_rng(seed)
    envelope = np.repeat(rng.uniform(0.05, 1.0, n // 800 + 1), 800)[:n]
    b, a = scipy.signal.butter(2, rng.uniform(0.05, 0.5))
    return (0.3 * scipy.signal.lfilter(b, a, rng.standard_normal(n)) * envelope).astype(np.float32)


def leaky_corpus(root):
    make_corpus(root, {"train": 4, "val": 2, "test": 2}, seconds=(3.0, 2.5))
    clips = read_manifest(root)
    for i, clip in enumerate(clips):
        sf.write(clip.path, shaped_noise(int(clip.duration_s * SAMPLE_RATE), i), SAMPLE_RATE)
    source = next(c for c in clips if c.clip_id == "train-music-2")
    leaked = next(c for c in clips if c.clip_id == "test-noise-1")
    audio, _ = sf.read(source.path, dtype="float32")
    copy = 0.5 * audio[4000:]  # 6 dB down, cut 0.25 s later
    sf.write(leaked.path, copy[: int(leaked.duration_s * SAMPLE_RATE)], SAMPLE_RATE, subtype="PCM_16")
    return clips, source, leaked


def test_the_copied_clip_is_found_and_nothing_else(tmp_path):
    clips, source, leaked = leaky_corpus(tmp_path / "corpus")
    leaks = find_leaks(tmp_path / "corpus", workers=0)
    assert [(leak.clip.clip_id, leak.train_clip.clip_id) for leak in leaks] == [(leaked.clip_id, source.clip_id)]
    assert leaks[0].correlation > 0.95
    other = next(c for c in clips if c.clip_id == "train-noise-0")
    assert correlation(trajectories(leaked)[:200], trajectories(other)) < 0.5


def test_leaks_command_writes_csv(tmp_path, capsys):
    leaky_corpus(tmp_path / "corpus")
    out = tmp_path / "leaks.csv"
    assert main(["corpus", "leaks", str(tmp_path / "corpus"), "--out", str(out), "--jobs", "1"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [(r["split"], r["clip_id"], r["train_clip_id"]) for r in rows] == [("test", "test-noise-1", "train-music-2")]
    assert "1 val/test clips share audio" in capsys.readouterr().err
