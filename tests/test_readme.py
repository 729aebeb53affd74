"""The README's examples run as written (the client ones against a real server), and every relative link in the
README and docs/ leads to a file and heading that exist."""

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

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


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


def test_python_example_runs(tiny_model_path, tmp_path):
    """The README's first Python example, on the tiny test model instead of the bundled one."""
    code = python_block("classify_file(")
    assert len(code.strip().splitlines()) <= 6
    audio = np.concatenate([make_signal("music", 3.0), make_signal("noise", 3.0)])
    sf.write(tmp_path / "talk.flac", audio, 16_000)
    code = code.replace("Classifier()", f"Classifier({str(tiny_model_path)!r})")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first, *segments = result.stdout.splitlines()
    assert first.split()[0] in {"speech", "music", "noise", "silence"}
    assert [line.split()[-1] for line in segments] == ["music", "noise"]
    assert float(segments[-1].split()[1]) == pytest.approx(6.0, abs=0.01)


def _outside_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (repeats get -1, -2...)."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", _outside_code(path.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda path: path.relative_to(ROOT).as_posix())
def test_relative_links_lead_somewhere(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _outside_code(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not broken, broken


def test_readme_links_every_docs_page():
    assert DOCS, "docs/ has no pages"
    text = README.read_text()
    assert [page.name for page in DOCS if f"(docs/{page.name}" not in text] == []
