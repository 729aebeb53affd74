import csv
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from service import inference
from service.audio import AudioError, load_audio
from service.cli import main
from service.features import SAMPLE_RATE
from service.stream import classify_audio, classify_file
from tests.conftest import make_signal

PARTS = [("speech", 1.5), ("music", 2.0), ("silence", 1.0), ("noise", 1.5)]
KINDS = [kind for kind, _ in PARTS]


def parts_audio(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return np.concatenate([make_signal(kind, s, seed=i, sample_rate=sample_rate) for i, (kind, s) in enumerate(PARTS)])


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """A 16 kHz float WAV, a 44.1 kHz stereo FLAC and a file that is not audio."""
    folder = tmp_path_factory.mktemp("audio")
    wav, flac, bad = folder / "mono.wav", folder / "stereo.flac", folder / "broken.wav"
    sf.write(wav, parts_audio(), SAMPLE_RATE, subtype="FLOAT")
    audio = parts_audio(44_100)
    sf.write(flac, np.stack([audio, audio], axis=1), 44_100)
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    return wav, flac, bad


def classify(capsys, *args: object) -> tuple[int, str, str]:
    code = main(["classify", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["wav", "flac"])
def test_classify_file(classifier, audio_files, name):
    path = audio_files[0] if name == "wav" else audio_files[1]
    result = classify_file(path, classifier)
    assert [s.label for s in result.segments] == KINDS
    assert result.duration_s == pytest.approx(6.0, abs=1e-3)
    assert result.file == str(path)


def test_file_path_equals_array_path(classifier, audio_files):
    wav = audio_files[0]
    assert classify_file(wav, classifier).segments == classify_audio(load_audio(wav), classifier).segments


def test_progress_reaches_the_end(classifier, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.tile(make_signal("music", 1.0), 25), SAMPLE_RATE)
    calls = []
    classify_file(path, classifier, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == 3 and calls[-1] == (25.0, 25.0)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_unusual_rate_is_decoded_whole(classifier, tmp_path):
    path = tmp_path / "low.wav"
    sf.write(path, make_signal("music", 2.0, sample_rate=4_000), 4_000)  # below the stream minimum
    assert [s.label for s in classify_file(path, classifier).segments] == ["music"]


def test_bad_files_raise_audio_errors(classifier, audio_files, tmp_path):
    with pytest.raises(AudioError, match="cannot decode"):
        classify_file(audio_files[2], classifier)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="empty audio"):
        classify_file(empty, classifier)


def test_json_lines_with_a_bad_file(capsys, tiny_model_path, audio_files):
    wav, flac, bad = audio_files
    code, out, err = classify(capsys, wav, bad, flac, "--model", tiny_model_path)
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["file"] for line in lines] == [str(wav), str(flac)]
    for line in lines:
        assert [s["label"] for s in line["segments"]] == KINDS
        assert set(line) == {"file", "duration", "label", "probs", "segments"}
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "cannot decode" in err


def test_csv(capsys, tiny_model_path, audio_files):
    wav, flac, _ = audio_files
    code, out, _ = classify(capsys, wav, flac, "--model", tiny_model_path, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["file", "labels", "start", "stop", "confidence"]
    for path in (wav, flac):
        mine = [row for row in rows if row["file"] == str(path)]
        assert [row["labels"] for row in mine] == KINDS
        assert float(mine[0]["start"]) == 0 and float(mine[-1]["stop"]) == pytest.approx(6.0, abs=1e-3)
        assert all(a["stop"] == b["start"] for a, b in zip(mine, mine[1:]))


def parse_textgrid(text: str) -> tuple[float, list[tuple[float, float, str]]]:
    """The tier's xmax and its intervals, read back from Praat's long text format."""
    assert text.startswith('File type = "ooTextFile"\nObject class = "TextGrid"\n')
    assert 'class = "IntervalTier"' in text and "size = 1" in text
    tier_xmax = float(re.search(r"^ {8}xmax = (\S+)$", text, re.M).group(1))
    size = int(re.search(r"intervals: size = (\d+)", text).group(1))
    intervals = re.findall(r'intervals \[\d+\]:\n\s+xmin = (\S+)\n\s+xmax = (\S+)\n\s+text = "([^"]*)"', text)
    assert len(intervals) == size
    return tier_xmax, [(float(a), float(b), label) for a, b, label in intervals]


def test_textgrid(capsys, tiny_model_path, audio_files):
    wav = audio_files[0]
    code, out, _ = classify(capsys, wav, "--model", tiny_model_path, "--format", "textgrid")
    assert code == 0
    tier_xmax, intervals = parse_textgrid(out)
    assert [label for _, _, label in intervals] == KINDS
    assert intervals[0][0] == 0 and intervals[-1][1] == tier_xmax == pytest.approx(6.0, abs=1e-3)
    assert all(a[1] == b[0] for a, b in zip(intervals, intervals[1:]))
    _, json_out, _ = classify(capsys, wav, "--model", tiny_model_path)
    segments = json.loads(json_out)["segments"]
    assert intervals == [(s["start"], s["end"], s["label"]) for s in segments]


def test_output_dir(capsys, tiny_model_path, audio_files, tmp_path):
    wav, flac, bad = audio_files
    code, out, _ = classify(capsys, wav, flac, bad, "--model", tiny_model_path, "--format", "textgrid",
                            "--output-dir", tmp_path / "out")
    assert code == 1 and out == ""
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["mono.TextGrid", "stereo.TextGrid"]
    assert [label for *_, label in parse_textgrid((tmp_path / "out" / "stereo.TextGrid").read_text())[1]] == KINDS


def test_options_reach_the_engine(capsys, tiny_model_path, audio_files):
    wav = audio_files[0]
    code, out, _ = classify(capsys, wav, "--model", tiny_model_path, "--silence-threshold", "-10")
    assert code == 0 and [s["label"] for s in json.loads(out)["segments"]] == ["silence"]
    _, out, _ = classify(capsys, wav, "--model", tiny_model_path, "--min-segment", "2.5")
    # speech (1.5 s, first) joins the music after it; silence and noise join the music before them
    assert [s["label"] for s in json.loads(out)["segments"]] == ["music"]


@pytest.mark.parametrize("args,message", [
    (["--window", "0.2"], "--window must be"),
    (["--hop", "0.015"], "--hop must be"),
    (["--min-pause", "-1"], "--min-pause must be"),
])
def test_bad_options(capsys, tiny_model_path, audio_files, args, message):
    code, out, err = classify(capsys, audio_files[0], "--model", tiny_model_path, *args)
    assert code == 2 and out == "" and message in err


def test_unusable_output_dir_and_thread_count_are_one_line_errors(capsys, tiny_model_path, audio_files):
    blocked = audio_files[0] / "out"  # a directory inside a file cannot be created
    code, _, err = classify(capsys, audio_files[0], "--model", tiny_model_path, "--output-dir", blocked)
    assert code == 2 and err.strip() == f"swishnet: error: cannot create --output-dir {blocked}: Not a directory"
    with pytest.raises(SystemExit):
        classify(capsys, audio_files[0], "--threads", "0")
    assert "--threads: must be at least 1, got 0" in capsys.readouterr().err


def test_textgrid_of_several_files_needs_an_output_dir(capsys, tiny_model_path, audio_files):
    code, _, err = classify(capsys, *audio_files[:2], "--model", tiny_model_path, "--format", "textgrid")
    assert code == 2 and "--output-dir" in err


def test_model_errors_are_one_line(capsys, tmp_path, audio_files, monkeypatch):
    code, _, err = classify(capsys, audio_files[0], "--model", tmp_path / "missing.onnx")
    assert code == 2 and err.strip() == f"swishnet: error: no such model file: {tmp_path / 'missing.onnx'}"
    monkeypatch.setattr(inference, "files", lambda package: tmp_path)
    code, _, err = classify(capsys, audio_files[0])
    assert code == 2 and "no bundled model is installed" in err


def test_registered_command_loads_no_model_code():
    code = ("import sys; from service.cli import build_parser; build_parser();"
            "assert 'onnxruntime' not in sys.modules, 'registration imported onnxruntime'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-m", "service.cli", "classify", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--format {csv,events,json,textgrid}" in result.stdout


@pytest.mark.parametrize("mode", ["labels", "changes", "segments"])
def test_events_format_prints_the_stream_events(capsys, tiny_model_path, audio_files, classifier, mode):
    wav = audio_files[0]
    code, out, _ = classify(capsys, wav, "--model", tiny_model_path, "--format", "events", "--events", mode)
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and all(event.pop("file") == str(wav) for event in events)
    labels = [e for e in events if e["type"] == "label"]
    segments = [e for e in events if e["type"] == "segment"]
    assert [s["label"] for s in segments] == KINDS
    assert segments == [dict(s.to_dict()) for s in classify_file(wav, classifier).segments]
    hops = round((6.0 - 0.5) / 0.1) + 1
    assert len(labels) == {"labels": hops, "changes": len(labels), "segments": 0}[mode]
    if mode == "changes":
        assert 3 <= len(labels) < 10 and all(a["label"] != b["label"] for a, b in zip(labels, labels[1:]))


def test_events_format_with_an_output_dir(capsys, tiny_model_path, audio_files, tmp_path):
    wav, _, bad = audio_files
    code, out, err = classify(capsys, wav, bad, "--model", tiny_model_path, "--format", "events",
                              "--events", "segments", "--output-dir", tmp_path / "out")
    assert code == 1 and out == "" and "broken.wav" in err
    lines = (tmp_path / "out" / "mono.events.jsonl").read_text().splitlines()
    assert [json.loads(line)["label"] for line in lines] == KINDS


def run_cli(*args: object, **options) -> subprocess.CompletedProcess:
    """``swishnet ARGS`` in a new process (its stdin and stderr are real file descriptors)."""
    return subprocess.run([sys.executable, "-m", "service.cli", *map(str, args)], capture_output=True, **options)


def test_stdin_from_a_pipe_and_from_a_file(tiny_model_path, audio_files, tmp_path):
    """``-`` reads standard input: a pipe is spooled to its end, a redirected file is read in place."""
    from tests.media import write_format

    m4a = write_format(tmp_path / "parts.m4a", "m4a", parts_audio(44_100))
    expected = run_cli("classify", m4a, "--model", tiny_model_path, "--format", "csv")
    assert expected.returncode == 0, expected.stderr
    piped = run_cli("classify", "-", "--model", tiny_model_path, "--format", "csv", input=m4a.read_bytes())
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == expected.stdout.replace(str(m4a).encode(), b"-")
    with audio_files[1].open("rb") as flac:
        redirected = run_cli("classify", "-", "--model", tiny_model_path, stdin=flac)
    assert redirected.returncode == 0, redirected.stderr
    result = json.loads(redirected.stdout)
    assert result["file"] == "-" and [s["label"] for s in result["segments"]] == KINDS


def test_stdin_only_once(capsys, tiny_model_path):
    code, _, err = classify(capsys, "-", "-", "--model", tiny_model_path)
    assert code == 2 and "standard input (-) can be read only once" in err


def test_a_folder_is_classified_recursively(capsys, tiny_model_path, tmp_path):
    from tests.media import write_format

    folder = tmp_path / "recordings"
    (folder / "b" / "deeper").mkdir(parents=True)
    sf.write(folder / "a.wav", parts_audio(), SAMPLE_RATE)
    write_format(folder / "b" / "deeper" / "c.m4a", "m4a", parts_audio(44_100))
    sf.write(folder / "b" / "d.flac", parts_audio(), SAMPLE_RATE)
    (folder / "b" / "notes.txt").write_text("not audio")
    code, out, err = classify(capsys, folder, "--model", tiny_model_path, "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = [str(folder / "a.wav"), str(folder / "b" / "d.flac"), str(folder / "b" / "deeper" / "c.m4a")]
    assert list(dict.fromkeys(row["file"] for row in rows)) == expected
    assert [row["labels"] for row in rows if row["file"] == expected[2]] == KINDS


def test_a_folder_without_audio_is_refused(capsys, tiny_model_path, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    code, out, err = classify(capsys, tmp_path / "docs", "--model", tiny_model_path)
    assert code == 2 and out == ""
    assert "is a folder with no audio or video files in it" in err and ".m4a" in err


def test_decoder_chatter_only_with_debug_logging(tiny_model_path, tmp_path):
    """libmpg123 prints notes about damaged MP3 frames on stderr by itself; they are shown only with
    --log-level DEBUG, while swishnet's own errors always are."""
    mp3 = io.BytesIO()
    sf.write(mp3, parts_audio(44_100), 44_100, format="MP3")
    data = mp3.getvalue()
    damaged = tmp_path / "damaged.mp3"
    junk = np.random.default_rng(0).integers(0, 256, 50, dtype=np.uint8).tobytes()
    damaged.write_bytes(data[: len(data) // 2] + junk + data[len(data) // 2 :])
    missing = tmp_path / "missing.wav"
    debug = run_cli("--log-level", "DEBUG", "classify", damaged, "--model", tiny_model_path, text=True)
    assert "Illegal Audio-MPEG-Header" in debug.stderr  # the chatter exists
    quiet = run_cli("classify", damaged, missing, "--model", tiny_model_path, text=True)
    assert quiet.returncode == 1
    assert json.loads(quiet.stdout)["file"] == str(damaged)
    assert quiet.stderr == f"swishnet: error: {missing}: no such audio file: {missing}\n"
