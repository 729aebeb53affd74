"""The benchmark suite (python -m bench) runs end to end in its quick mode and writes the JSON
docs/performance.md describes. Only the structure is checked, never a timing."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bench.__main__ import main
from bench.load import chunk_of

pytestmark = pytest.mark.timeout(180)

SUMMARY_KEYS = {"median", "p10", "p90", "n"}


def is_summary(value: object, n: int | None = None) -> bool:
    return isinstance(value, dict) and set(value) == SUMMARY_KEYS and (n is None or value["n"] == n)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory, tiny_model_path):
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    status = main(["--quick", "--model", str(tiny_model_path), "--out", str(out)])
    return status, json.loads(out.read_text())


def test_quick_run_succeeds_and_describes_the_machine(quick_report):
    status, report = quick_report
    assert status == 0
    assert report["schema"] == 1
    assert {"cpu", "cores", "python", "onnxruntime", "date"} <= set(report["machine"])
    assert set(report["seconds"]) == {"features", "model", "engine", "files", "service"}


def test_features_section(quick_report):
    features = quick_report[1]["features"]
    if importlib.util.find_spec("librosa") is None:
        assert "skipped" in features
        return
    assert set(features["us_per_hop"]) == {"streaming", "librosa_recompute", "ours_recompute"}
    assert all(is_summary(stat, n=3) for stat in features["us_per_hop"].values())
    assert is_summary(features["librosa_over_streaming"], n=3)


def test_model_section(quick_report):
    rows = quick_report[1]["model"]["models"]["tiny"]
    assert {(row["window_s"], row["batch"]) for row in rows} == {(w, b) for w in (0.5, 1.0, 2.0) for b in (1, 32)}
    assert all(is_summary(row["ms_per_window"], n=3) for row in rows)


def test_files_section(quick_report):
    report = quick_report[1]
    files = report["files"]
    assert files["duration_s"] == 20.0
    assert is_summary(files["audio_s_per_cpu_s"]["tiny"], n=1)
    assert is_summary(files["audio_s_per_cpu_s"]["tiny window 10 s"], n=1) and is_summary(files["window_10s_over_1s"])
    assert files["found"]["tiny"]["segments"] >= 1
    if importlib.util.find_spec("silero_vad") is None:
        assert any("Silero VAD skipped" in note for note in report["notes"])
    else:
        assert is_summary(files["audio_s_per_cpu_s"]["silero-vad"])
        assert is_summary(files["silero_time_over_classify"]["tiny"])
        assert 0 < files["found"]["silero-vad"]["speech_share"] < 1


def test_engine_section(quick_report):
    engine = quick_report[1]["engine"]
    assert set(engine["per_hop"]) == {"0.01", "0.1"}
    for windows in engine["per_hop"].values():
        assert set(windows) == {"0.5", "1.0", "2.0", "5.0", "10.0"}
        assert all(is_summary(cell["us_per_hop"], n=3) and is_summary(cell["over_window_1s"]) for cell in windows.values())
    assert engine["json_us_per_label_event"] > 0 and engine["memory_kib_per_stream"] > 0
    assert is_summary(engine["batching"]["alone_over_batched"], n=3)


def test_service_and_memory_sections(quick_report):
    service, memory = quick_report[1]["service"], quick_report[1]["memory"]
    streams = [step["streams"] for step in service["steps"]]
    # Steps stop once p99 passes the limit, which depends on the machine's load, not on the code.
    assert streams in ([1], [1, 4])
    if streams == [1]:
        assert service["p99_passes_limit_at_streams"] == 1
    assert service["workers"] == 1
    for step in service["steps"]:
        assert step["errors"] == [] and step["client_processes"] == 1 and step["client_cpu_percent"] > 0
        assert step["server_cpu_percent_per_stream"] is not None
        assert step["labels_received"] == step["labels_expected"] > 0
        assert set(step["latency_ms"]) == {"p50", "p90", "p99", "max"}
        assert is_summary(step["server_cpu_percent"])
        assert step["server_rss_mib"] > 0
    assert memory["idle_rss_mib"] > 0 and memory["per_stream"]["slope_kib"] is not None


def test_missing_model_is_skipped_with_a_note(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["model", "--quick", "--model", str(tmp_path / "absent.onnx"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "skipped" in report["model"]
    assert any("absent" in note for note in report["notes"])
    assert "== model" in capsys.readouterr().out


@pytest.mark.parametrize("label_time,chunk", [(0.5, 4), (0.6, 5), (1.0, 9), (12.0, 119)])
def test_label_latency_is_measured_from_the_chunk_that_completed_its_audio(label_time, chunk):
    assert chunk_of(label_time) == chunk
