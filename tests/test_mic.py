"""swishnet mic with a fake sounddevice (tests/fake_sounddevice.py): no audio hardware needed."""

from __future__ import annotations

import _thread
import io
import re
import signal
import sys
import threading
import time

import numpy as np
import pytest

from service.app import create_app
from service.cli import main
from service.config import Settings
from service.mic import Capture, Engine, LocalEngine, MicError, RemoteEngine, ctrl_c_sets, run_capture, stream_url
from service.mic_display import LiveDisplay
from service.stream import StreamConfig
from tests.conftest import make_signal
from tests.fake_sounddevice import MIC, SPEAKERS, install
from tests.live_server import LiveServer

DEVICE_RATE = int(MIC["default_samplerate"])
FAST = 10.0  # fake devices play this many times faster than real time
LOOP_LIMIT_S = 60.0  # a looping fake device stops after this much audio: a lost Ctrl-C fails a test, never hangs it


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C (SIGINT) raising KeyboardInterrupt, as in a terminal, whatever the test runner inherited: a
    shell's background job starts with SIGINT ignored, and then _thread.interrupt_main() does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def capture_events(engine_for, audio: np.ndarray, monkeypatch) -> list[dict]:
    """Everything the engine made of ``audio`` played through the fake microphone."""
    install(monkeypatch, audio, speed=FAST)
    events: list[dict] = []
    capture = Capture()
    with engine_for(capture.sample_rate) as engine, capture:
        run_capture(capture, engine, events.extend)
    assert capture.dropped_blocks == 0
    return events


@pytest.mark.parametrize("kind", ["speech", "music", "noise"])
def test_local_capture_hears_the_right_class(classifier, monkeypatch, kind):
    audio = make_signal(kind, 3.0, sample_rate=DEVICE_RATE)
    events = capture_events(lambda rate: LocalEngine(classifier, StreamConfig(), rate), audio, monkeypatch)
    labels = {e["label"] for e in events if e["type"] == "label"}
    segments = [e for e in events if e["type"] == "segment"]
    assert labels == {kind}
    assert [(s["label"], s["start"], s["end"]) for s in segments] == [(kind, 0.0, 3.0)]


def test_mic_command_prints_segments_and_summary(tiny_model_path, monkeypatch, capsys):
    audio = np.concatenate([make_signal("music", 3.0, sample_rate=DEVICE_RATE),
                            make_signal("noise", 2.0, sample_rate=DEVICE_RATE)])
    install(monkeypatch, audio, speed=FAST)
    assert main(["mic", "--model", str(tiny_model_path)]) == 0
    out = capsys.readouterr().out
    segment_lines = [line for line in out.splitlines() if " s  " in line and "–" in line]
    assert [line.split()[4] for line in segment_lines] == ["music", "noise"]
    summary = out[out.index("Summary"):]
    assert "5.0 s of audio" in summary
    assert summary.index("music") < summary.index("noise")  # longest first


def test_ctrl_c_ends_cleanly_with_a_summary(tiny_model_path, monkeypatch, capsys, ctrl_c_raises):
    fake = install(monkeypatch, make_signal("noise", 2.0, sample_rate=DEVICE_RATE), speed=FAST, loop=True,
                   interrupt_after_s=1.5, loop_limit_s=LOOP_LIMIT_S)
    assert main(["mic", "--model", str(tiny_model_path)]) == 0
    out = capsys.readouterr().out
    assert "Summary" in out and "noise" in out
    # the audio captured before Ctrl-C is all classified; the device was stopped by it, not by running out
    summary_s = float(re.search(r"Summary: ([\d.]+) s of audio", out).group(1))  # printed to 0.1 s
    assert 1.5 <= summary_s <= fake.streams[0].delivered_s + 0.05 < LOOP_LIMIT_S
    assert fake.streams[0].closed and not fake.streams[0].active
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is Python's again


class CountingEngine(Engine):
    """Presses Ctrl-C in the middle of its third push; counts the pushes begun and finished."""

    def __init__(self) -> None:
        self.begun = self.finished = 0

    def push(self, block: np.ndarray) -> list[dict]:
        self.begun += 1
        if self.begun == 3:
            _thread.interrupt_main()
        for _ in range(10_000):  # many points where a KeyboardInterrupt would land
            pass
        self.finished += 1
        return []

    def finish(self) -> list[dict]:
        return [{"type": "finished"}]


def test_ctrl_c_never_lands_inside_the_engine(monkeypatch, ctrl_c_raises):
    """A KeyboardInterrupt could land half-way through a push (or between taking the capture queue's lock
    and releasing it); under ctrl_c_sets the first Ctrl-C only sets a flag that the loop reads between blocks."""
    fake = install(monkeypatch, make_signal("noise", 1.0, sample_rate=DEVICE_RATE), speed=FAST, loop=True,
                   loop_limit_s=LOOP_LIMIT_S)
    engine, events = CountingEngine(), []
    capture = Capture()
    with ctrl_c_sets(threading.Event()) as stop, engine, capture:
        run_capture(capture, engine, events.extend, stop, drain=True)
    assert stop.is_set()
    assert engine.finished == engine.begun >= 3
    assert events == [{"type": "finished"}]
    assert fake.streams[0].delivered_s < LOOP_LIMIT_S


def test_a_second_ctrl_c_interrupts(ctrl_c_raises):
    """The first Ctrl-C asks for a clean end; a second one (the end is taking too long) raises as usual."""
    with pytest.raises(KeyboardInterrupt), ctrl_c_sets(threading.Event()) as stop:
        _thread.interrupt_main()
        for _ in range(10**7):
            if stop.is_set():
                break
        assert stop.is_set()
        _thread.interrupt_main()
        for _ in range(10**7):
            pass
        pytest.fail("the second Ctrl-C did not raise")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_sets_keeps_an_ignored_sigint():
    """A process started with SIGINT ignored (a shell's background job) keeps it ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_sets(threading.Event()):
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_server_mode_gives_the_local_events(classifier, monkeypatch):
    """--server streams float32 at the device rate to /v1/stream; the events equal the local engine's."""
    audio = np.concatenate([make_signal("noise", 2.0, sample_rate=DEVICE_RATE),
                            make_signal("silence", 1.0, sample_rate=DEVICE_RATE),
                            make_signal("music", 2.0, sample_rate=DEVICE_RATE)])
    config = StreamConfig(hop_s=0.05)
    local = capture_events(lambda rate: LocalEngine(classifier, config, rate), audio, monkeypatch)
    with LiveServer(create_app(Settings(), classifier=classifier)) as live:
        remote = capture_events(lambda rate: RemoteEngine(f"ws://127.0.0.1:{live.port}", rate, config),
                                audio, monkeypatch)
    assert remote == local
    assert [e["label"] for e in remote if e["type"] == "segment"] == ["noise", "silence", "music"]


def test_mic_command_with_server(classifier, monkeypatch, capsys):
    install(monkeypatch, make_signal("music", 3.0, sample_rate=DEVICE_RATE), speed=FAST)
    with LiveServer(create_app(Settings(), classifier=classifier)) as live:
        assert main(["mic", "--server", live.http]) == 0
    out = capsys.readouterr().out
    assert "music" in out and "3.0 s of audio" in out


def test_server_refusals_are_clear(classifier, monkeypatch):
    with pytest.raises(MicError, match="cannot connect.*swishnet serve"):
        RemoteEngine("ws://127.0.0.1:9", DEVICE_RATE, StreamConfig())
    with pytest.raises(MicError, match="ws://HOST:PORT"):
        stream_url("ftp://example.org", DEVICE_RATE, StreamConfig())
    with LiveServer(create_app(Settings(), classifier=classifier)) as live:
        engine = RemoteEngine(live.http, 4_000, StreamConfig())  # below the service's lowest sample rate
        with engine, pytest.raises(MicError, match="refused the stream: bad stream parameters"):
            for _ in range(100):  # the refusal arrives after the connection opened
                engine.push(np.zeros(400, dtype=np.float32))
                time.sleep(0.05)


def test_list_devices_shows_inputs_and_the_default(monkeypatch, capsys):
    install(monkeypatch, np.zeros(1), devices=(SPEAKERS, MIC, dict(MIC, name="USB Headset")))
    assert main(["mic", "--list-devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [">   1 Fake Mic (2 in, 48000 Hz)", "    2 USB Headset (2 in, 48000 Hz)"]


@pytest.mark.parametrize("device,message", [("7", "no usable input device 7"), ("0", "has no input channels"),
                                            ("Headphones", "no usable input device 'Headphones'")])
def test_unusable_device_lists_the_inputs(monkeypatch, capsys, device, message):
    install(monkeypatch, np.zeros(1), devices=(SPEAKERS, MIC))
    assert main(["mic", "--device", device]) == 2
    err = capsys.readouterr().err
    assert message in err and "Fake Mic" in err


def test_no_input_device(monkeypatch, capsys):
    install(monkeypatch, np.zeros(1), devices=(SPEAKERS,))
    assert main(["mic"]) == 2
    err = capsys.readouterr().err
    assert "no audio input device found" in err and "connect a microphone" in err


def test_portaudio_missing_says_how_to_install(monkeypatch, tmp_path, capsys):
    """sounddevice raises OSError at import when the PortAudio library is missing."""
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["mic"]) == 2
    err = capsys.readouterr().err
    assert "PortAudio is not installed" in err
    assert "apt-get install libportaudio2" in err and "brew install portaudio" in err


def test_terminal_display_redraws_in_place():
    out = io.StringIO()
    display = LiveDisplay(out, "test", ansi=True)
    probs = {"speech": 0.1, "music": 0.8, "noise": 0.1}
    display.update([{"type": "label", "time": 0.5, "label": "music", "probs": probs}])
    first = out.getvalue()
    display.update([{"type": "label", "time": 0.6, "label": "music", "probs": probs},
                    {"type": "segment", "start": 0.0, "end": 0.6, "label": "music", "confidence": 0.8}])
    display.close()
    second = out.getvalue()[len(first):]
    assert second.startswith(f"\x1b[{first.count(chr(10))}F\x1b[J")  # up over the last frame, then clear
    frame = display.render()
    assert any("music" in line and "█" * 24 in line and "0.80" in line for line in frame)
    assert any(line.startswith("Last 30 s:") and line.endswith("M\x1b[0m") for line in frame)
    assert display.state.seconds_per_label == {"music": 0.6}
    assert out.getvalue().endswith("\x1b[?7h\x1b[?25h")  # wrapping and the cursor are back


def test_sounddevice_missing_names_the_install_command(monkeypatch, capsys):
    from service.cli import install_command

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # not installed
    assert main(["mic"]) == 2
    err = capsys.readouterr().err
    assert "needs the mic extra" in err and err.rstrip().endswith(install_command("mic"))
