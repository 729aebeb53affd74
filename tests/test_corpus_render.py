"""Rendered music: a tiny score through FluidSynth, arrangements, and the manifest's synthetic flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.corpus import RENDERED_PACKAGE, RenderTask, process_render, trim_rendered
from models.corpus_config import RenderSettings, Settings
from models.corpus_render import (
    BASS_PROGRAMS,
    DRUM_PATTERNS,
    LEAD_PROGRAMS,
    VOICE_PROGRAMS,
    Note,
    draw_arrangement,
    read_score,
    renderer_missing,
)
from service.features import SAMPLE_RATE

SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")  # Debian timgm6mb-soundfont (make test installs it)
WHY_NOT = renderer_missing() or (None if SOUNDFONT.is_file() else
                                 f"{SOUNDFONT} is missing: apt-get install timgm6mb-soundfont")
needs_renderer = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


def tiny_midi(path: Path) -> Path:
    """Two parts, four bars: a melody and a bass line, written as a Standard MIDI File by music21."""
    import music21

    score = music21.stream.Score()
    for octave in (5, 3):
        part = music21.stream.Part()
        for name in ("C", "E", "G", "C", "F", "A", "G", "E") * 2:
            part.append(music21.note.Note(f"{name}{octave}", quarterLength=1.0))
        score.insert(0, part)
    score.write("midi", fp=str(path))
    return path


@needs_renderer
def test_a_tiny_midi_file_renders_to_labelled_synthetic_band_clips(tmp_path):
    score = tiny_midi(tmp_path / "tiny.mid")
    parts = read_score(score)
    assert len(parts) == 2 and sum(len(p) for p in parts) == 32
    task = RenderTask(f"{RENDERED_PACKAGE}-000", "test:tiny.mid", score, SOUNDFONT, band=True, seed=7)
    settings = Settings(render=RenderSettings(max_score_s=60.0))
    result = process_render(task, tmp_path / "out", settings)
    assert result.rows and not result.dropped
    row = result.rows[0]
    assert (row["label"], row["split"], row["package"], row["synthetic"], row["style"]) == (
        "music", "train", RENDERED_PACKAGE, 1, "band")
    assert "soundfont=TimGM6mb.sf2" in row["render"] and "drums=" in row["render"]
    audio, rate = sf.read(tmp_path / "out" / row["path"])
    assert rate == SAMPLE_RATE
    # 16 quarter notes at 90-170 bpm plus the ring-out: 7 to 12 s of audible sound
    assert 6.5 < len(audio) / rate < 12.5 and np.sqrt(np.mean(audio ** 2)) > 0.01
    again = process_render(task, tmp_path / "again", settings)
    assert again.rows[0]["render"] == row["render"]  # same seed and score: same arrangement


def test_an_unreadable_score_is_counted_not_fatal(tmp_path):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd this is not midi")
    task = RenderTask(f"{RENDERED_PACKAGE}-000", "test:bad.mid", bad, SOUNDFONT, band=False, seed=1)
    result = process_render(task, tmp_path / "out", Settings())
    assert result.rows == [] and result.dropped == {"unrenderable": 1}


def test_band_arrangements_put_bass_low_lead_high_and_add_drums():
    parts = [[Note(0, 1, 40, 90)], [Note(0, 1, 76, 90)], [Note(0, 1, 60, 90)]]
    for seed in range(20):
        arrangement = draw_arrangement(parts, np.random.default_rng(seed), band=True)
        assert arrangement.programs[0] in BASS_PROGRAMS and arrangement.programs[1] in LEAD_PROGRAMS
        assert arrangement.drums in DRUM_PATTERNS and 90 <= arrangement.bpm <= 170


def test_arrangements_never_draw_voice_like_programs():
    parts = [[Note(0, 1, 60 + i, 90)] for i in range(8)]
    drawn = {p for seed in range(200) for p in draw_arrangement(parts, np.random.default_rng(seed), False).programs}
    assert not drawn & VOICE_PROGRAMS and max(drawn) < 112 and len(drawn) > 60


def test_rendered_music_is_trimmed_to_its_target_in_part_order():
    rows = [{"package": RENDERED_PACKAGE, "duration_s": "30.0", "clip_id": f"r{i}"} for i in range(5)]
    rows.insert(2, {"package": "real-game", "duration_s": "100.0", "clip_id": "real"})
    kept, dropped = trim_rendered(rows, target_s=75.0)
    assert [row["clip_id"] for row in kept] == ["r0", "r1", "real"]
    assert dropped == [{"package": RENDERED_PACKAGE, "label": "music", "reason": "render_cap", "count": 3}]
