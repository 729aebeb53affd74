"""A stand-in for the sounddevice module: a fake microphone that plays an array through the callback.

``install(monkeypatch, audio, ...)`` puts it in ``sys.modules["sounddevice"]``,
where service.mic's lazy import finds it. Like PortAudio, the stream calls the
callback from its own thread, in blocks of ``blocksize`` frames, paced at
``speed`` times real time; when the audio is over (and ``loop`` is off), or
after ``loop_limit_s`` of looped audio, the stream becomes inactive, as a
stream whose callback stopped does. ``interrupt_after_s`` presses Ctrl-C
(``_thread.interrupt_main``) once that much audio has been delivered.
"""

from __future__ import annotations

import _thread
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

MIC = {"name": "Fake Mic", "index": 0, "hostapi": 0, "max_input_channels": 2, "max_output_channels": 0,
       "default_samplerate": 48_000.0}
SPEAKERS = {"name": "Fake Speakers", "index": 1, "hostapi": 0, "max_input_channels": 0, "max_output_channels": 2,
            "default_samplerate": 48_000.0}


class PortAudioError(Exception):
    pass


class FakeSoundDevice:
    """The parts of sounddevice that service.mic uses."""

    PortAudioError = PortAudioError

    def __init__(self, audio: np.ndarray, *, speed: float = 1.0, loop: bool = False,
                 devices: tuple[dict, ...] = (MIC, SPEAKERS), interrupt_after_s: float | None = None,
                 loop_limit_s: float | None = None) -> None:
        self.audio = np.asarray(audio, dtype=np.float32)
        self.speed, self.loop, self.interrupt_after_s = speed, loop, interrupt_after_s
        self.loop_limit_s = loop_limit_s
        self.devices = [dict(device, index=index) for index, device in enumerate(devices)]
        inputs = [d["index"] for d in self.devices if d["max_input_channels"] > 0]
        outputs = [d["index"] for d in self.devices if d["max_output_channels"] > 0]
        self.default = SimpleNamespace(device=[inputs[0] if inputs else -1, outputs[0] if outputs else -1])
        self.streams: list[FakeInputStream] = []

    def query_devices(self, device: int | str | None = None, kind: str | None = None) -> list[dict] | dict:
        if device is None and kind is None:
            return list(self.devices)
        if device is None:
            device = self.default.device[0 if kind == "input" else 1]
        if isinstance(device, str):
            matches = [d for d in self.devices if device.lower() in d["name"].lower()
                       and (kind is None or d[f"max_{kind}_channels"] > 0)]
            if len(matches) != 1:
                raise ValueError(f"No {kind} device matching {device!r}")
            return dict(matches[0])
        if not 0 <= device < len(self.devices):
            raise PortAudioError(f"Error querying device {device}")
        return dict(self.devices[device])

    def InputStream(self, **options: object) -> FakeInputStream:  # noqa: N802 (sounddevice's name)
        stream = FakeInputStream(self, **options)
        self.streams.append(stream)
        return stream


class FakeInputStream:
    """Plays the fake device's audio through ``callback`` from a thread, as PortAudio would."""

    def __init__(self, fake: FakeSoundDevice, *, callback, blocksize: int, samplerate: float, channels: int,
                 dtype: str, **ignored: object) -> None:
        assert dtype == "float32" and blocksize > 0
        self.fake, self.callback, self.blocksize = fake, callback, blocksize
        self.samplerate, self.channels = samplerate, channels
        self.active = False
        self.closed = False
        self.delivered_s = 0.0  # audio handed to the callback so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, daemon=True)

    def start(self) -> None:
        self.active = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.active = False

    def close(self) -> None:
        self.closed = True

    def _play(self) -> None:
        audio, position, started = self.fake.audio, 0, time.monotonic()
        interrupt_at = None if self.fake.interrupt_after_s is None else self.fake.interrupt_after_s * self.samplerate
        end = audio.size if not self.fake.loop else None if self.fake.loop_limit_s is None else \
            round(self.fake.loop_limit_s * self.samplerate)  # samples to play; None: for ever
        while not self._stop.is_set() and (end is None or position < end):
            block = np.take(audio, range(position, position + self.blocksize), mode="wrap")
            if end is not None:
                block = block[: end - position]
            self.callback(np.repeat(block[:, None], self.channels, axis=1), block.size, None, None)
            position += block.size
            self.delivered_s = position / self.samplerate
            if interrupt_at is not None and position >= interrupt_at:
                interrupt_at = None
                _thread.interrupt_main()  # what Ctrl-C does
            ahead_s = position / self.samplerate / self.fake.speed - (time.monotonic() - started)
            time.sleep(max(ahead_s, 0))
        self.active = False


def install(monkeypatch: pytest.MonkeyPatch, audio: np.ndarray, **options: object) -> FakeSoundDevice:
    fake = FakeSoundDevice(audio, **options)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    return fake
