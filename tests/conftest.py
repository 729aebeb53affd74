"""Shared fixtures: small, seeded, generated audio. Tests never download anything."""

from __future__ import annotations

import service  # noqa: F401  (first: it sets the BLAS thread default before numpy loads)

import numpy as np
import pytest

from service.features import SAMPLE_RATE


def make_signal(kind: str, seconds: float = 1.0, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Generated test audio, float32 in [-1, 1].

    speech: a pitch-varying harmonic source shaped by moving formants, with
    syllable-rate amplitude modulation; music: sustained chords of harmonic
    tones; noise: white noise; silence: zeros.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    if kind == "silence":
        return np.zeros(n, dtype=np.float32)
    if kind == "noise":
        return (0.3 * rng.standard_normal(n)).astype(np.float32)
    if kind == "music":
        notes = [220.0, 277.2, 329.6, 440.0]
        out = sum(np.sin(2 * np.pi * f * h * t) / h for f in notes for h in range(1, 5))
        return (0.5 * out / np.max(np.abs(out))).astype(np.float32)
    if kind == "speech":
        f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        voiced = sum(np.sin(h * phase) * np.exp(-((h * f0 - 700 - 300 * np.sin(2 * np.pi * 2 * t)) ** 2) / 2e5)
                     for h in range(1, 30))
        envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
        speech = voiced * envelope / np.max(np.abs(voiced))
        return (0.5 * speech + 0.003 * rng.standard_normal(n)).astype(np.float32)
    raise ValueError(kind)


@pytest.fixture
def signal():
    return make_signal


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A tiny nearest-centroid ONNX model with its card (see tests/tiny_model.py)."""
    from tests.tiny_model import write_model

    return write_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def classifier(tiny_model_path):
    from service.inference import Classifier

    return Classifier(tiny_model_path)
