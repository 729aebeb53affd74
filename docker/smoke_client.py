"""End-to-end checks of a running SwishNet Live server, used by docker/test.sh.

It runs with the image's own Python (`podman exec -i CONTAINER python3 - URL < smoke_client.py`),
so the host needs nothing but the container engine: numpy and websockets come with the image.
Every check prints one line; the first failure exits with status 1.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.error
import urllib.request
import uuid
import wave

import numpy as np
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

SAMPLE_RATE = 16_000
CLASSES = {"speech", "music", "noise", "silence"}


def fail(message: str) -> None:
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)
    print(f"ok: {message}", flush=True)


def test_pcm(seconds_each: float = 1.5) -> bytes:
    """A chord (music-like), then white noise, then silence: 16 kHz mono int16."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds_each * SAMPLE_RATE)) / SAMPLE_RATE
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 6
    noise = 0.3 * rng.standard_normal(t.size)
    audio = np.concatenate([chord, noise, np.zeros(t.size)])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def as_wav(pcm: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)
    return buffer.getvalue()


def request(url: str, data: bytes | None = None, content_type: str | None = None) -> tuple[int, dict | str]:
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as reply:
            status, body, kind = reply.status, reply.read().decode(), reply.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, body, kind = error.code, error.read().decode(), error.headers.get_content_type()
    return status, json.loads(body) if kind == "application/json" else body


def check_classification(reply: dict, duration_s: float, source: str) -> None:
    check(isinstance(reply, dict) and {"duration", "label", "probs", "segments"} <= reply.keys(),
          f"{source}: reply has duration, label, probs, segments")
    check(abs(reply["duration"] - duration_s) < 0.05, f"{source}: duration {reply['duration']} s")
    check(reply["label"] in CLASSES, f"{source}: label {reply['label']!r}")
    check(all(s["label"] in CLASSES and 0 <= s["start"] < s["end"] for s in reply["segments"]),
          f"{source}: {len(reply['segments'])} well-formed segments")


def check_rest(base: str, wav: bytes, duration_s: float) -> None:
    status, health = request(f"{base}/healthz")
    check(status == 200 and health.get("status") == "ok", f"GET /healthz -> {status} {health}")
    status, card = request(f"{base}/v1/model")
    check(status == 200 and isinstance(card, dict) and card, f"GET /v1/model -> {status}, keys {sorted(card)[:8]}")

    status, reply = request(f"{base}/v1/classify", wav, "application/octet-stream")
    check(status == 200, f"POST /v1/classify (raw WAV body) -> {status}")
    check_classification(reply, duration_s, "raw body")

    boundary = uuid.uuid4().hex
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="test.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + wav + f"\r\n--{boundary}--\r\n".encode()
    status, reply = request(f"{base}/v1/classify", form, f"multipart/form-data; boundary={boundary}")
    check(status == 200 and reply.get("file") == "test.wav", f"POST /v1/classify (multipart file) -> {status}")
    check_classification(reply, duration_s, "multipart")

    status, reply = request(f"{base}/v1/classify", b"this is not audio", "application/octet-stream")
    check(status == 400 and isinstance(reply, dict) and reply.get("detail"), f"POST garbage -> {status} with a reason")


def check_stream(base: str, pcm: bytes) -> None:
    url = base.replace("http", "ws", 1) + "/v1/stream?sample_rate=16000&encoding=pcm_s16le&channels=1"
    events = []
    with connect(url, open_timeout=10, close_timeout=10) as ws:
        for start in range(0, len(pcm), 3200):  # 100 ms messages, as a live client sends them
            ws.send(pcm[start:start + 3200])
        ws.send(json.dumps({"type": "end"}))
        try:
            for message in ws:  # ends when the server closes normally
                events.append(json.loads(message))
        except ConnectionClosedError as error:
            fail(f"stream closed abnormally: {error}; events so far: {events[-3:]}")
        code = ws.protocol.close_code
    kinds = [event.get("type") for event in events]
    check("error" not in kinds, f"WS /v1/stream: no error event ({events[-1] if events else 'no events'})")
    check(code == 1000, f"WS /v1/stream closed with {code} after {{\"type\": \"end\"}}")
    check(kinds.count("label") > 0 and set(kinds) <= {"label", "segment"},
          f"WS /v1/stream: {kinds.count('label')} label and {kinds.count('segment')} segment events")
    check(all(e.get("label") in CLASSES for e in events if e["type"] == "segment"), "WS segments have known labels")


def check_security(base: str) -> None:
    """Headers on every response, no server banner, foreign hosts and origins refused."""
    with urllib.request.urlopen(f"{base}/", timeout=30) as reply:
        headers = reply.headers
    check("default-src 'self'" in headers.get("content-security-policy", "")
          and headers.get("x-content-type-options") == "nosniff" and headers.get("referrer-policy") == "no-referrer",
          "GET / carries Content-Security-Policy, nosniff and no-referrer")
    check(headers.get("server") is None, "no server header")
    foreign = urllib.request.Request(f"{base}/healthz", headers={"Host": "evil.example"})
    try:
        urllib.request.urlopen(foreign, timeout=30)
        fail("a foreign Host header was served")
    except urllib.error.HTTPError as error:
        check(error.code == 400, f"a foreign Host header -> {error.code}")
    url = base.replace("http", "ws", 1) + "/v1/stream"
    try:
        connect(url, origin="https://evil.example", open_timeout=10).close()
        fail("a foreign Origin opened a WebSocket")
    except InvalidStatus as error:
        check(error.response.status_code == 403, f"a foreign Origin's WebSocket -> {error.response.status_code}")


def check_metrics(base: str) -> None:
    status, text = request(f"{base}/metrics")
    check(status == 200 and "swishnet_requests_total" in text and "swishnet_streams_total" in text,
          "GET /metrics lists request and stream counters")


def main() -> None:
    base = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    pcm = test_pcm()
    duration_s = len(pcm) / 2 / SAMPLE_RATE
    check_rest(base, as_wav(pcm), duration_s)
    check_stream(base, pcm)
    check_security(base)
    check_metrics(base)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
