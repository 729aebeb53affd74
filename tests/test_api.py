"""The service, through a real uvicorn server on 127.0.0.1 with real HTTP and WebSocket clients."""

from __future__ import annotations

import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.app import create_app
from service.audio import load_audio
from service.config import Settings
from service.features import SAMPLE_RATE
from service.stream import StreamConfig, classify_audio
from tests.conftest import make_signal
from tests.live_server import LiveServer

LIMITS = dict(max_upload_bytes=3_000_000, max_upload_duration_s=60, max_streams=60, idle_timeout_s=3.0,
              max_message_bytes=1_000_000)


@pytest.fixture(scope="module")
def server(classifier):
    with LiveServer(create_app(Settings(**LIMITS), classifier=classifier)) as live:
        yield live


def scene(seed: int = 0) -> np.ndarray:
    """Noise, then music, then silence, then noise: several segments at 16 kHz."""
    parts = [make_signal("noise", 2.0, seed), make_signal("music", 2.5, seed), make_signal("silence", 1.5),
             make_signal("noise", 2.0, seed + 1)]
    return np.concatenate(parts)


def encode(audio: np.ndarray, sample_rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def stream_file(url: str, pcm: bytes, chunk_sizes: list[int]) -> tuple[list[dict], int]:
    """Send pcm in the given chunk sizes, then end; return the events and the close code."""
    events = []
    with connect(url, max_size=None) as ws:
        position = 0
        for size in chunk_sizes:
            ws.send(pcm[position:position + size])
            position += size
        ws.send(pcm[position:])
        ws.send(json.dumps({"type": "end"}))
        try:
            while True:
                events.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed:
            pass
        return events, ws.close_code


def random_chunks(total: int, rng: np.random.Generator, largest: int = 9000) -> list[int]:
    sizes, used = [], 0
    while used + largest < total:
        sizes.append(int(rng.integers(1, largest)))
        used += sizes[-1]
    return sizes


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"), ("MP3", None)])
@pytest.mark.parametrize("sample_rate", [8_000, 16_000, 44_100, 48_000])
@pytest.mark.parametrize("channels", [1, 2])
def test_rest_classifies_real_files(server, classifier, fmt, subtype, sample_rate, channels):
    audio = scene()
    if sample_rate != SAMPLE_RATE:
        import soxr
        audio = soxr.resample(audio, SAMPLE_RATE, sample_rate)
    data = encode(np.stack([audio] * channels, axis=1) if channels == 2 else audio, sample_rate, fmt, subtype)
    response = httpx.post(f"{server.http}/v1/classify", content=data, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["file"] is None
    assert abs(body["duration"] - 8.0) < 0.1
    assert set(body["probs"]) == set(classifier.labels)
    assert body["segments"] == classify_audio(load_audio(data), classifier, StreamConfig()).to_dict()["segments"]
    labels = [segment["label"] for segment in body["segments"]]
    assert "silence" in labels
    if sample_rate == SAMPLE_RATE and fmt in ("WAV", "FLAC"):
        assert labels == ["noise", "music", "silence", "noise"]


def test_rest_multipart_upload_names_the_file(server):
    data = encode(scene(), SAMPLE_RATE, "FLAC")
    response = httpx.post(f"{server.http}/v1/classify", files={"file": ("scene.flac", data)}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["file"] == "scene.flac"


def test_rest_query_knobs_change_the_analysis(server):
    data = encode(scene(), SAMPLE_RATE, "WAV", "PCM_16")
    default = httpx.post(f"{server.http}/v1/classify", content=data, timeout=30).json()
    merged = httpx.post(f"{server.http}/v1/classify?min_pause=3&min_segment=3", content=data, timeout=30).json()
    assert len(merged["segments"]) < len(default["segments"])


@pytest.mark.parametrize("query", ["window=0", "hop=-1", "hop=0.015", "window=1000", "min_pause=61"])
def test_rest_bad_query_values_name_the_parameter(server, query):
    data = encode(scene(), SAMPLE_RATE, "WAV", "PCM_16")
    response = httpx.post(f"{server.http}/v1/classify?{query}", content=data, timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(query.split("=")[0] + " must be")


@pytest.mark.parametrize("query,message", [("window=abc", "window: Input should be a valid number"),
                                           ("windw=2", "windw: Extra inputs are not permitted")])
def test_rest_query_values_of_the_wrong_type_or_name(server, query, message):
    data = encode(scene(), SAMPLE_RATE, "WAV", "PCM_16")
    response = httpx.post(f"{server.http}/v1/classify?{query}", content=data, timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(message)  # one line, as every other error


@pytest.mark.parametrize("body,status,message", [
    (b"", 400, "empty"),
    (b"\x00\x01garbage bytes that are no audio format" * 50, 400, "cannot decode"),
    (encode(make_signal("noise", 1.0), SAMPLE_RATE, "WAV", "PCM_16")[:40], 400, "decode|empty"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(200), 400, "decode"),
])
def test_rest_bad_bodies(server, body, status, message):
    response = httpx.post(f"{server.http}/v1/classify", content=body, timeout=30)
    assert response.status_code == status
    assert __import__("re").search(message, response.json()["detail"])


def test_rest_oversized_upload_is_refused_and_server_lives(server):
    big = bytes(LIMITS["max_upload_bytes"] + 1)
    response = httpx.post(f"{server.http}/v1/classify", content=big, timeout=30)
    assert response.status_code == 413
    chunked = httpx.post(f"{server.http}/v1/classify", content=iter([bytes(2**20)] * 4), timeout=30)
    assert chunked.status_code == 413
    assert httpx.get(f"{server.http}/healthz").status_code == 200


def test_rest_too_long_audio(server):
    data = encode(np.zeros(61 * 8000, dtype=np.float32), 8000, "FLAC")
    response = httpx.post(f"{server.http}/v1/classify", content=data, timeout=30)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_model_health_metrics_and_openapi(server, classifier):
    assert httpx.get(f"{server.http}/v1/model").json()["labels"] == list(classifier.labels)
    assert httpx.get(f"{server.http}/healthz").json()["status"] == "ok"
    httpx.post(f"{server.http}/v1/classify", content=encode(scene(), SAMPLE_RATE, "FLAC"), timeout=30)
    metrics = httpx.get(f"{server.http}/metrics").text
    assert 'swishnet_requests_total{route="/v1/classify",status="200"}' in metrics
    assert "swishnet_inference_seconds_bucket" in metrics
    assert "swishnet_audio_seconds_total" in metrics
    paths = httpx.get(f"{server.http}/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/model", "/healthz", "/metrics"} <= set(paths)


def test_stream_in_random_chunks_equals_rest(server):
    samples = np.round(scene(seed=3) * 32767).astype("<i2")
    pcm = samples.tobytes()
    rest = httpx.post(f"{server.http}/v1/classify", content=encode(samples, SAMPLE_RATE, "WAV", "PCM_16"),
                      timeout=30).json()
    events, code = stream_file(server.ws(), pcm, random_chunks(len(pcm), np.random.default_rng(0)))
    assert code == 1000
    segments = [{k: e[k] for k in ("start", "end", "label", "confidence")} for e in events if e["type"] == "segment"]
    assert segments == rest["segments"]
    labels = [e for e in events if e["type"] == "label"]
    assert labels and all(set(e) == {"type", "time", "label", "probs"} for e in labels)
    assert [e["time"] for e in labels] == sorted(e["time"] for e in labels)


def test_stream_events_parameter_chooses_what_is_sent(server):
    pcm = np.round(scene(seed=3) * 32767).astype("<i2").tobytes()
    chunks = random_chunks(len(pcm), np.random.default_rng(2))
    sent = {mode: stream_file(server.ws(f"?events={mode}"), pcm, chunks)[0] for mode in ("labels", "changes", "segments")}
    labels = [e for e in sent["labels"] if e["type"] == "label"]
    changes = [e for i, e in enumerate(labels) if i == 0 or e["label"] != labels[i - 1]["label"]]
    assert [e for e in sent["changes"] if e["type"] == "label"] == changes and 1 < len(changes) < len(labels) / 5
    assert all(e["type"] == "segment" for e in sent["segments"])
    segments = [e for e in sent["labels"] if e["type"] == "segment"]
    assert [e for e in sent["changes"] if e["type"] == "segment"] == sent["segments"] == segments


def test_stream_float32_stereo_at_48k(server):
    import soxr
    audio = soxr.resample(scene(), SAMPLE_RATE, 48_000).astype(np.float32)
    pcm = np.stack([audio, audio], axis=1).astype("<f4").tobytes()
    chunks = [4801, 3, 77777] + random_chunks(len(pcm) - 82581, np.random.default_rng(1), 500_000)
    events, code = stream_file(server.ws("?sample_rate=48000&encoding=pcm_f32le&channels=2"), pcm, chunks)
    assert code == 1000
    assert "silence" in [e["label"] for e in events if e["type"] == "segment"]


def expect_error(url: str, send: list, code: int) -> str:
    with connect(url) as ws:
        for message in send:
            ws.send(message)
        reply = json.loads(ws.recv(timeout=10))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == code
    assert reply["type"] == "error"
    return reply["message"]


@pytest.mark.parametrize("query,names", [
    ("?sample_rate=0", "sample rate 0 Hz: expected an integer from 8000 to 192000"),
    ("?sample_rate=500000", "sample rate 500000"), ("?encoding=mp3", "encoding 'mp3'"), ("?channels=0", "channel"),
    ("?window=0", "window"), ("?hop=abc", "hop"), ("?samplerate=48000", "samplerate: Extra inputs"),
    ("?events=all", "events: Input should be 'labels', 'changes' or 'segments'"),
])
def test_stream_bad_parameters(server, query, names):
    message = expect_error(server.ws(query), [], 1008)
    assert message.startswith("bad stream parameters") and names in message


def test_stream_text_frame_where_audio_expected(server):
    message = expect_error(server.ws(), [bytes(3200), "hello, here is some text"], 1003)
    assert "binary" in message


def test_stream_message_too_big(server):
    expect_error(server.ws(), [bytes(LIMITS["max_message_bytes"] + 2)], 1009)


def test_stream_odd_byte_counts_are_carried(server):
    audio = scene(seed=5)
    pcm = (audio * 32767).astype("<i2").tobytes()
    odd, code = stream_file(server.ws(), pcm, [1, 2, 3, 1001, 3333])
    even, _ = stream_file(server.ws(), pcm, [])
    assert code == 1000 and odd == even


def test_stream_idle_timeout(server):
    assert "idle" in expect_error(server.ws(), [bytes(320)], 1008)


def test_client_vanishing_mid_stream_does_not_disturb_others(server):
    pcm = (scene() * 32767).astype("<i2").tobytes()
    for _ in range(5):
        with connect(server.ws()) as ws:
            ws.send(pcm[: len(pcm) // 2])
            ws.socket.shutdown(socket.SHUT_RDWR)  # no close handshake: the client just vanishes
    events, code = stream_file(server.ws(), pcm, [32000] * 5)
    assert code == 1000 and any(e["type"] == "segment" for e in events)
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.http}/healthz").json()["streams_open"] != 0:
        assert time.monotonic() < deadline, "vanished streams were never released"
        time.sleep(0.1)


def test_capacity_limit_refuses_with_1013(classifier):
    app = create_app(Settings(**{**LIMITS, "max_streams": 1}), classifier=classifier)
    with LiveServer(app) as live, connect(live.ws()) as first:
        first.send(bytes(3200))
        assert "capacity" in expect_error(live.ws(), [], 1013)


def test_uploads_beyond_max_rest_jobs_wait_their_turn_and_streams_go_on(classifier, monkeypatch):
    import threading

    from service import app as app_module

    running, most, lock, release = [0], [0], threading.Lock(), threading.Event()
    real = app_module.classify_file

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)  # hold the job until every upload has arrived
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(app_module, "classify_file", counted)
    data = encode(scene(), SAMPLE_RATE, "WAV", "PCM_16")
    app = create_app(Settings(**LIMITS, max_rest_jobs=2), classifier=classifier)
    with LiveServer(app) as live:
        with ThreadPoolExecutor(5) as pool:
            uploads = [pool.submit(httpx.post, f"{live.http}/v1/classify", content=data, timeout=60) for _ in range(5)]
            deadline = time.monotonic() + 30
            while app.state.uploads.limiter.statistics().tasks_waiting < 3:  # two run (held), three queue
                assert time.monotonic() < deadline, "the uploads never queued"
                time.sleep(0.01)
            events, code = stream_file(live.ws(), (scene() * 32767).astype("<i2").tobytes(), [])
            assert code == 1000 and events  # a stream is served while the uploads are held
            release.set()
            assert [u.result().status_code for u in uploads] == [200] * 5
    assert most[0] == 2


def test_a_failing_stream_closes_with_1011_and_the_server_goes_on(classifier, monkeypatch):
    app = create_app(Settings(**LIMITS), classifier=classifier)
    with LiveServer(app) as live:
        def broken(windows):
            raise RuntimeError("model failure")

        monkeypatch.setattr(classifier, "frame_logits", broken)
        with connect(live.ws()) as ws:
            ws.send((make_signal("noise", 2.0) * 32767).astype("<i2").tobytes())  # loud enough to be scored
            ws.send(json.dumps({"type": "end"}))
            replies = []
            with pytest.raises(ConnectionClosed):
                while True:
                    replies.append(json.loads(ws.recv(timeout=10)))
        assert ws.close_code == 1011 and replies[-1]["type"] == "error" and "internal error" in replies[-1]["message"]
        assert ws.close_reason.startswith("internal error")
        assert 'outcome="error_1011"' in httpx.get(f"{live.http}/metrics").text
        monkeypatch.undo()
        events, code = stream_file(live.ws(), (scene() * 32767).astype("<i2").tobytes(), [])
        assert code == 1000 and any(e["type"] == "segment" for e in events)


def test_fifty_concurrent_streams_get_correct_labels(server):
    audio = scene(seed=7)
    pcm = (audio * 32767).astype("<i2").tobytes()
    reference, _ = stream_file(server.ws(), pcm, [])
    expected = [e for e in reference if e["type"] == "segment"]

    def one(seed: int) -> list[dict]:
        events, code = stream_file(server.ws(), pcm, random_chunks(len(pcm), np.random.default_rng(seed), 20000))
        assert code == 1000
        return [e for e in events if e["type"] == "segment"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert all(result == expected for result in results)
