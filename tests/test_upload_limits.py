"""The upload byte cap follows the duration cap: a WAV within the duration limit is never refused for its size."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from service.app import create_app
from service.config import UPLOAD_HEADER_BYTES, Settings
from tests.conftest import make_signal
from tests.live_server import LiveServer

DURATION_LIMIT_S = 10.0


def wav(seconds: float, sample_rate: int = 48_000, channels: int = 2) -> bytes:
    audio = make_signal("noise", seconds, sample_rate=sample_rate)
    buffer = io.BytesIO()
    sf.write(buffer, np.repeat(audio[:, None], channels, axis=1), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_default_byte_cap_holds_the_duration_limit_of_wav():
    settings = Settings()
    ten_minutes_cd = 600 * 44_100 * 2 * 2 + 44  # the 105.8 MB WAV that got 413 under the old 100 MiB cap
    assert settings.max_upload_bytes > ten_minutes_cd
    assert settings.max_upload_bytes == settings.max_upload_duration_s * 48_000 * 2 * 2 + UPLOAD_HEADER_BYTES
    assert Settings(max_upload_duration_s=600).max_upload_bytes == 600 * 192_000 + UPLOAD_HEADER_BYTES
    assert Settings(max_upload_bytes=5_000).max_upload_bytes == 5_000  # set explicitly: kept


def test_default_byte_cap_follows_the_environment(monkeypatch):
    monkeypatch.setenv("SWISHNET_MAX_UPLOAD_DURATION_S", "60")
    assert Settings().max_upload_bytes == 60 * 192_000 + UPLOAD_HEADER_BYTES


@pytest.fixture(scope="module")
def server(classifier):
    with LiveServer(create_app(Settings(max_upload_duration_s=DURATION_LIMIT_S), classifier=classifier)) as live:
        yield live


def post(server, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.http}/v1/classify", content=body, timeout=60)


def test_wav_within_the_duration_limit_is_accepted(server):
    body = wav(DURATION_LIMIT_S - 0.5)  # 48 kHz 16-bit stereo: the densest WAV the default cap is sized for
    response = post(server, body)
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(DURATION_LIMIT_S - 0.5, abs=0.01)


def test_longer_wav_gets_the_duration_limit(server):
    response = post(server, wav(DURATION_LIMIT_S + 0.5))  # within the byte cap (its header slack)
    assert response.status_code == 413
    assert response.json()["detail"] == f"audio is {DURATION_LIMIT_S + 0.5:.1f} s long; the limit is 10 s"


def test_byte_cap_is_stated_in_the_413(server):
    response = post(server, wav(DURATION_LIMIT_S + 10))
    assert response.status_code == 413
    cap = DURATION_LIMIT_S * 192_000 + UPLOAD_HEADER_BYTES
    assert response.json()["detail"] == (
        f"upload too large: the limit is {cap:.0f} bytes (3 MiB, about 10 s of 48 kHz 16-bit stereo WAV; "
        "compressed formats hold more, up to the duration limit of 10 s)")
