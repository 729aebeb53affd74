"""The corpus builder on tiny generated packages: no network, no real Debian archive."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.corpus import (
    MANIFEST_COLUMNS,
    FileResult,
    FileTask,
    apply_package_caps,
    build,
    import_musan,
    process_file,
    read_csv,
)
from models.corpus_audio import active_regions, segment_bounds, speech_ratio, synthetic_noise
from models.corpus_config import (
    LABELS,
    SPLITS,
    Cap,
    CorpusError,
    Screen,
    Settings,
    assign_splits,
    load_sources,
)
from models.debian_sources import DebianSourceError, read_queen_table, unpack_members
from service.cli import main
from service.features import SAMPLE_RATE

SILENCE = {"below_peak_db": 40.0, "floor_dbfs": -60.0, "min_gap_s": 1.0}
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian tools)")


def encode(audio: np.ndarray, fmt: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format=fmt)
    return buffer.getvalue()


def queen_archive(entries: dict[str, bytes], compression: int = 1) -> bytes:
    """A queen.1c as DATA.md documents it: QTBL, byte 12 compression, BE count, 21-byte entries."""
    header = b"QTBL" + b"CEM10\0\0\0" + bytes([compression]) + struct.pack(">H", len(entries))
    offset = len(header) + 21 * len(entries)
    table, blobs = b"", b""
    for name, blob in entries.items():
        table += name.encode().ljust(12, b"\0") + b"\x01" + struct.pack(">II", offset + len(blobs), len(blob))
        blobs += blob
    return header + table + blobs


def make_deb(tmp_path: Path, package: str, files: dict[str, bytes]) -> Path:
    """A minimal .deb holding ``files`` (paths relative to /), named as apt-get download names it."""
    root = tmp_path / "debroot" / package
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n"
    )
    cache = tmp_path / "debs"
    cache.mkdir(exist_ok=True)
    deb = cache / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", "-Zgzip", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def tone(seconds: float, freq: float = 440.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------- queen.1c and unpacking

def test_queen_table_parses_names_offsets_and_sizes():
    data = queen_archive({"020001P2.SB": b"abc", "ROOM.PCX": b"zz", "X.SB": b"12345"})
    table = read_queen_table(data)
    assert table.compression == 1
    assert [e.name for e in table.entries] == ["020001P2.SB", "ROOM.PCX", "X.SB"]
    assert [data[e.offset:e.offset + e.size] for e in table.entries] == [b"abc", b"zz", b"12345"]


@pytest.mark.parametrize("data, message", [
    (b"QTBX" + bytes(20), "magic"),
    (b"QTBL" + bytes(8) + b"\x01" + struct.pack(">H", 5) + bytes(21), "announces 5 entries"),
])
def test_queen_table_rejects_bad_archives(data, message):
    with pytest.raises(DebianSourceError, match=message):
        read_queen_table(data)


@needs_dpkg
def test_unpack_takes_matching_members_and_expands_archives(tmp_path):
    mp3 = encode(tone(1.0), "MP3")
    pk3 = io.BytesIO()
    with zipfile.ZipFile(pk3, "w") as bundle:
        bundle.writestr("music/track.ogg", encode(tone(1.0), "OGG"))
        bundle.writestr("music/readme.txt", "not audio")
        bundle.writestr("sound/shot.wav", encode(tone(1.0), "WAV"))
    deb = make_deb(tmp_path, "fake-game", {
        "usr/share/game/queen.1c": queen_archive({"A.SB": mp3, "B.PCX": b"image"}),
        "usr/share/game/data.pk3": pk3.getvalue(),
        "usr/share/game/voice.ogg": encode(tone(1.0), "OGG"),
        "usr/share/game/other.wav": encode(tone(1.0), "WAV"),
    })
    patterns = ["*/queen.1c!*.SB", "*/data.pk3!music/*", "*/voice.ogg"]
    members = unpack_members(deb, patterns, tmp_path / "work")
    assert sorted(m.source for m in members) == [
        "usr/share/game/data.pk3!music/track.ogg", "usr/share/game/queen.1c!A.SB", "usr/share/game/voice.ogg"]
    by_source = {m.source: m.path for m in members}
    assert by_source["usr/share/game/queen.1c!A.SB"].read_bytes() == mp3
    assert sf.info(str(by_source["usr/share/game/queen.1c!A.SB"])).format == "MP3"


# ---------------------------------------------------------------- silence, cutting, caps, screening

def test_active_regions_trim_silence_and_split_on_long_gaps():
    quiet = np.zeros(SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([quiet, tone(1.0), quiet[: SAMPLE_RATE // 2], tone(1.0), quiet, quiet, tone(0.5)])
    regions = active_regions(audio, **SILENCE)
    # leading silence trimmed; the 0.5 s pause stays inside; the 2 s gap splits
    assert regions == [(16000, 56000), (88000, 96000)]
    assert active_regions(np.zeros(SAMPLE_RATE, dtype=np.float32), **SILENCE) == []
    assert active_regions(tone(1.0) * 1e-4, **SILENCE) == []  # below the -60 dBFS floor


def test_segments_are_equal_and_at_most_the_limit():
    bounds = segment_bounds(0, 65 * SAMPLE_RATE, 30.0)
    lengths = [end - start for start, end in bounds]
    assert len(bounds) == 3 and max(lengths) <= 30 * SAMPLE_RATE and max(lengths) - min(lengths) <= 1
    assert bounds[0][0] == 0 and bounds[-1][1] == 65 * SAMPLE_RATE


def run_file(tmp_path: Path, audio: np.ndarray, label: str = "music", settings: Settings = Settings(),
             sample_rate: int = 44_100) -> FileResult:
    path = tmp_path / "in.wav"
    sf.write(path, audio, sample_rate)
    return process_file(FileTask("pkg", label, "train", "GPL", "usr/in.wav", path), tmp_path / "out", settings)


def test_process_file_writes_trimmed_16k_clips_and_counts_drops(tmp_path):
    audio = np.concatenate([np.zeros(44_100), tone(2.0, sample_rate=44_100), np.zeros(88_200),
                            tone(0.3, sample_rate=44_100)])
    result = run_file(tmp_path, audio)
    assert result.dropped == Counter(too_short=1)
    [row] = result.rows
    assert row["orig_sample_rate"] == 44_100 and row["speech_ratio"] == "" and row["synthetic"] == 0
    info = sf.info(str(tmp_path / "out" / row["path"]))
    assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
    assert abs(info.duration - 2.0) < 0.05 and float(row["duration_s"]) == pytest.approx(info.duration, abs=1e-3)


def test_process_file_counts_silent_and_undecodable_files(tmp_path):
    assert run_file(tmp_path, np.zeros(44_100)).dropped == Counter(silent=1)
    broken = tmp_path / "broken.ogg"
    broken.write_bytes(b"OggS not really")
    task = FileTask("pkg", "noise", "train", "GPL", "broken.ogg", broken)
    assert process_file(task, tmp_path / "out", Settings()).dropped == Counter(undecodable=1)


def test_file_cap_limits_what_one_file_gives(tmp_path):
    settings = Settings(max_segment_s=2.0, caps={"music": Cap(file_s=5.0, package_h=1.0)})
    result = run_file(tmp_path, tone(9.0, sample_rate=44_100), settings=settings)
    assert len(result.rows) == 2 and result.dropped == Counter(file_cap=3)


def clip_results(out_dir: Path, count: int) -> list[FileResult]:
    """``count`` files of one 10 s music clip each, with their clip files written."""
    results = []
    for index in range(count):
        path = f"audio/music/pkg/{index}.flac"
        (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / path).write_bytes(b"x")
        task = FileTask("pkg", "music", "train", "GPL", f"{index}.ogg", Path())
        results.append(FileResult(task, [{"clip_id": str(index), "path": path, "duration_s": "10.000"}]))
    return results


def test_package_cap_keeps_whole_files_and_deletes_the_rest(tmp_path):
    settings = Settings(caps={"music": Cap(file_s=100.0, package_h=25.0 / 3600)})
    rows, dropped = apply_package_caps(clip_results(tmp_path / "a", 4), settings, tmp_path / "a", "pkg")
    assert len(rows) == 2 and dropped == Counter({("music", "package_cap"): 2})
    kept = sorted(p.name for p in (tmp_path / "a/audio/music/pkg").iterdir())
    assert kept == sorted(f"{r['clip_id']}.flac" for r in rows)
    again, _ = apply_package_caps(clip_results(tmp_path / "b", 4), settings, tmp_path / "b", "pkg")
    assert again == rows  # seeded: the same files are kept every time


@pytest.mark.parametrize("label, ratio, reason", [
    ("speech", 0.2, "too_little_speech"), ("speech", 0.9, None),
    ("noise", 0.5, "speech_in_noise"), ("noise", 0.1, None), ("music", 0.31, "speech_in_music"),
])
def test_screening_drops_clips_on_the_wrong_side_of_the_speech_ratio(label, ratio, reason):
    screens = {"speech": Screen(min_speech_ratio=0.5), "noise": Screen(max_speech_ratio=0.2),
               "music": Screen(max_speech_ratio=0.3)}
    assert screens[label].reason(label, ratio) == reason


def test_speech_ratio_of_silence_is_zero_for_any_length():
    pytest.importorskip("silero_vad")
    for samples in (100, 512 * 128 + 1, 3 * SAMPLE_RATE + 7):
        assert speech_ratio(np.zeros(samples, dtype=np.float32)) == 0.0


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "hum50", "hum60"])
def test_synthetic_noise_is_stationary_and_at_a_sane_level(kind):
    audio = synthetic_noise(kind, 2.0, np.random.default_rng(0))
    halves = [10 * np.log10(np.mean(h**2)) for h in np.split(audio, 2)]
    assert len(audio) == 2 * SAMPLE_RATE and -36 < halves[0] < -14 and abs(halves[0] - halves[1]) < 1.5


# ---------------------------------------------------------------- sources file, splits, refusal

def test_real_sources_file_keeps_groups_in_one_split_and_every_class_in_every_split():
    sources = load_sources()
    assert sources.reserved >= {"0ad-data", "beneath-a-steel-sky", "alsa-utils", "fillets-ng-data-nl"}
    assert not set(sources.sources) & sources.reserved
    covered = {(part.label, s.split) for s in sources.sources.values() for part in s.parts}
    assert covered == {(label, split) for label in LABELS for split in SPLITS}
    rules = sources.settings.split_rules
    for split in ("val", "test"):
        for label in LABELS:
            packages = {s.package for s in sources.sources.values() if s.split == split
                        for part in s.parts if part.label == label}
            assert len(packages) >= rules.min_packages, (split, label, packages)
    split_of_group = {}
    for source in sources.sources.values():
        assert split_of_group.setdefault(source.group, source.split) == source.split


def test_first_matching_part_labels_a_member():
    source = load_sources().sources["tuxpaint-stamps-default"]
    assert source.label_of("usr/share/tuxpaint/stamps/animals/cat_desc_fr.ogg") == "speech"
    assert source.label_of("usr/share/tuxpaint/stamps/animals/cat.ogg") == "noise"
    assert source.label_of("usr/share/tuxpaint/stamps/animals/cat.png") is None


def test_reserved_recordings_inside_other_packages_are_never_taken(tmp_path):
    path = write_sources(tmp_path, """
reserved: [0ad-data]
reserved_members: ["*/sounds/0ad/*"]
sources:
  - package: cube-like
    split: train
    licence: zlib
    parts:
      - {label: noise, include: ["*.ogg"]}
""")
    source = load_sources(path).sources["cube-like"]
    assert source.label_of("usr/share/cube/packages/sounds/0ad/cavalry_attack.ogg") is None
    assert source.label_of("usr/share/cube/packages/sounds/q009/explosion.ogg") == "noise"
    real = load_sources()
    assert all("*/sounds/0ad/*" in part.exclude for s in real.sources.values() for part in s.parts)


@pytest.mark.parametrize("names", [["0ad-data"], ["kajongg", "beneath-a-steel-sky"]])
def test_reserved_packages_are_refused_even_when_asked_for(names):
    with pytest.raises(CorpusError, match="reserved"):
        load_sources().select(names)


def test_cli_refuses_a_reserved_package(tmp_path, capsys):
    assert main(["corpus", "build", "--out", str(tmp_path), "--sources", "alsa-utils"]) == 2
    assert "reserved" in capsys.readouterr().err and not any(tmp_path.iterdir())


def write_sources(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(body)
    return path


def test_sources_file_listing_a_reserved_package_or_splitting_a_group_is_refused(tmp_path):
    reserved = "reserved: [naev-data]\nsources:\n  - {package: naev-data, split: train, licence: GPL, " \
               "parts: [{label: music, include: ['*.ogg']}]}\n"
    with pytest.raises(CorpusError, match="reserved"):
        load_sources(write_sources(tmp_path, reserved))
    split_group = "sources:\n" + "".join(
        f"  - {{package: {name}, group: game, split: {split}, licence: GPL, parts: [{{label: music, include: ['*']}}]}}\n"
        for name, split in [("game-music", "train"), ("game-data", "test")])
    with pytest.raises(CorpusError, match="group game spans"):
        load_sources(write_sources(tmp_path, split_group))
    with pytest.raises(CorpusError, match=r"unknown settings \['silence_db', 'speach'\]"):
        load_sources(write_sources(tmp_path, "settings: {silence_db: 3, caps: {speach: {file_s: 1, package_h: 1}}}\n"))


def test_assign_splits_is_deterministic_and_follows_the_fractions():
    fractions = {"train": 0.65, "val": 0.10, "test": 0.25}
    weights = {f"g{i}": 1.0 for i in range(100)}
    first = assign_splits(weights, fractions, seed=7)
    assert first == assign_splits(weights, fractions, seed=7) and set(first) == set(weights)
    assert Counter(first.values()) == {"train": 65, "val": 10, "test": 25}
    assert first != assign_splits(weights, fractions, seed=8)
    lopsided = assign_splits({"big": 10.0, "a": 1.0, "b": 1.0}, fractions, seed=0)
    assert sorted(lopsided.values()) == sorted(SPLITS) and lopsided["big"] == "train"


# ---------------------------------------------------------------- end to end

TEST_SOURCES = """
reserved: [naev-data]
settings:
  caps: {music: {file_s: 100, package_h: 1}}
  synthetic_noise: {hours: 0.002, clip_s: 2.0}
sources:
  - package: fake-game
    split: val
    licence: GPL-2+
    parts:
      - {label: speech, include: ["*/voices/*.wav"]}
      - {label: music, include: ["*/music/*.ogg"]}
      - {label: noise, include: ["*.wav"]}
"""


@needs_dpkg
def test_build_writes_the_manifest_and_skips_finished_packages(tmp_path):
    make_deb(tmp_path, "fake-game", {
        "usr/share/fake/voices/hello.wav": encode(tone(1.5, 200), "WAV"),
        "usr/share/fake/music/theme.ogg": encode(tone(3.0, 330, 44_100), "OGG", 44_100),
        "usr/share/fake/sfx/bang.wav": encode(tone(0.8, 1000, 22_050), "WAV", 22_050),
        "usr/share/fake/sfx/click.wav": encode(tone(0.1, 1000), "WAV"),
    })
    out = tmp_path / "corpus"
    sources = load_sources(write_sources(tmp_path, TEST_SOURCES))
    build(sources, out, cache_dir=tmp_path / "debs", jobs=1)
    with open(out / "manifest.csv") as handle:
        assert handle.readline().strip() == ",".join(MANIFEST_COLUMNS)
    rows = read_csv(out / "manifest.csv")
    real = [row for row in rows if row["synthetic"] == "0"]
    assert sorted((r["label"], r["split"], r["orig_sample_rate"]) for r in real) == [
        ("music", "val", "44100"), ("noise", "val", "22050"), ("speech", "val", "16000")]
    synthetic = [row for row in rows if row["synthetic"] == "1"]
    assert len(synthetic) == 4 and {(r["label"], r["split"]) for r in synthetic} == {("noise", "train")}
    assert all((out / row["path"]).is_file() for row in rows)
    assert {"package": "fake-game", "label": "noise", "reason": "too_short", "count": "1"} in read_csv(
        out / "dropped.csv")
    assert "Hours per class and split" in (out / "CORPUS.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["CORPUS.md", "audio", "dropped.csv", "leaks.csv", "leaks.sha256",
                                                     "manifest.csv", "parts"]
    assert "val speech: 1 packages, fewer than 4" in (out / "CORPUS.md").read_text()

    part = out / "parts" / "fake-game.csv"
    stamp = part.stat().st_mtime_ns
    build(sources, out, cache_dir=tmp_path / "debs", jobs=1)
    assert part.stat().st_mtime_ns == stamp and read_csv(out / "manifest.csv") == rows


def test_import_musan_splits_by_subfolder_or_by_file(tmp_path, capsys):
    musan = tmp_path / "musan"
    layout = {"speech": ["librivox", "us-gov"], "music": ["fma", "jamendo", "rfm"], "noise": ["free-sound"]}
    for label, folders in layout.items():
        for folder in folders:
            for index in range(4):
                path = musan / label / folder / f"{folder}-{index:04d}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, tone(0.6 + 0.1 * index, 200 + 50 * index), SAMPLE_RATE)
    out = tmp_path / "corpus"
    import_musan(musan, out, jobs=1)
    rows = read_csv(out / "manifest.csv")
    assert len(rows) == 24 and all(row["speech_ratio"] == "" and row["synthetic"] == "0" for row in rows)
    music_split = {}
    for row in rows:
        if row["label"] == "music":  # three subfolders: split by subfolder
            assert music_split.setdefault(row["package"], row["split"]) == row["split"]
    assert sorted(music_split.values()) == sorted(SPLITS)
    for label in ("speech", "noise"):  # fewer than three subfolders: split by file
        assert {row["split"] for row in rows if row["label"] == label} == set(SPLITS)

    first = {row["source"]: row["split"] for row in rows}
    import_musan(musan, tmp_path / "again", jobs=1)
    assert {row["source"]: row["split"] for row in read_csv(tmp_path / "again" / "manifest.csv")} == first
    assert main(["corpus", "stats", str(out)]) == 0
    assert "| music |" in capsys.readouterr().out


def test_import_musan_needs_the_three_class_folders(tmp_path):
    (tmp_path / "speech").mkdir()
    with pytest.raises(CorpusError, match="no music/ or noise/ subfolder"):
        import_musan(tmp_path, tmp_path / "out", jobs=1)
