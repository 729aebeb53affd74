"""The README's client examples run as written, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.app import create_app
from service.config import Settings
from tests.conftest import make_signal
from tests.live_server import LiveServer

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    matching = [block for block in blocks if containing in block]
    assert len(matching) == 1, f"expected one README python block with {containing!r}"
    return matching[0]


@pytest.mark.parametrize("channels", [1, 2])
def test_websocket_example_handles_mono_and_stereo_files(classifier, tmp_path, channels):
    code = python_block("/v1/stream?sample_rate=")
    audio = np.concatenate([make_signal("music", 3.0, sample_rate=44_100), make_signal("noise", 3.0, sample_rate=44_100)])
    sf.write(tmp_path / "talk.wav", np.repeat(audio[:, None], channels, axis=1), 44_100, subtype="PCM_16")
    with LiveServer(create_app(Settings(), classifier=classifier)) as live:
        result = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:8000", f"127.0.0.1:{live.port}")],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    segments = [line.split() for line in result.stdout.splitlines()]
    assert [label for *_, label in segments] == ["music", "noise"]
    assert float(segments[-1][1]) == pytest.approx(6.0, abs=0.01)
