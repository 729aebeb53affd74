"""Security for deployments beyond loopback (issue 25): trusted hosts, origins, the key, headers, cards,
upload budgets. Every check goes through a real uvicorn on 127.0.0.1 with real HTTP and WebSocket clients."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from service.app import _warn_if_exposed, create_app
from service.config import Settings
from service.features import SAMPLE_RATE
from service.inference import Classifier
from service.security import CONTENT_SECURITY_POLICY, public_card
from tests.conftest import make_signal
from tests.live_server import LiveServer

KEY = "s3cret/key+with=odd chars"
FOREIGN = "https://evil.example"


def pcm(seconds: float = 2.0) -> bytes:
    return (make_signal("noise", seconds) * 32767).astype("<i2").tobytes()


def flac(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(classifier):
    with LiveServer(create_app(Settings(), classifier=classifier)) as live:
        yield live


@pytest.fixture(scope="module")
def keyed(classifier):
    with LiveServer(create_app(Settings(api_key=KEY), classifier=classifier)) as live:
        yield live


def refusal(url: str, **options) -> int:
    with pytest.raises(InvalidStatus) as refused:
        connect(url, **options).close()
    return refused.value.response.status_code


def raw_handshake(port: int, host: str) -> bytes:
    """The answer to a WebSocket handshake on /v1/stream naming ``host`` (websockets' client sets its own)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET /v1/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        sock.settimeout(10)
        return sock.recv(4096)


def first_reply(ws) -> dict:
    """The first message of a stream or of /v1/live (live input is off here: an error, then 1008)."""
    return json.loads(ws.recv(timeout=10))


def metric(live: LiveServer, sample: str) -> float:
    for line in httpx.get(f"{live.http}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize("path", ["/v1/stream", "/v1/live"])
def test_websockets_refuse_foreign_origins_and_accept_their_own(server, path):
    refused_before = metric(server, 'swishnet_refused_total{reason="origin"}')
    assert refusal(server.ws(path=path), origin=FOREIGN) == 403
    assert refusal(server.ws(path=path), origin="null") == 403
    own = f"http://127.0.0.1:{server.port}"
    with connect(server.ws(path=path), origin=own) as ws:  # the page the service serves itself
        if path == "/v1/stream":
            ws.send(pcm())
            assert first_reply(ws)["type"] == "label"
        else:
            assert "live input is off" in first_reply(ws)["message"]
    with connect(server.ws(path=path)) as ws:  # no Origin at all: a CLI or a script
        if path == "/v1/stream":
            ws.send(pcm())
            assert first_reply(ws)["type"] == "label"
    assert metric(server, 'swishnet_refused_total{reason="origin"}') == refused_before + 2


def test_allowed_origins_setting(classifier):
    app = create_app(Settings(allowed_origins="https://app.example, http://localhost:3000"), classifier=classifier)
    with LiveServer(app) as live:
        for origin in ("https://app.example", "http://localhost:3000"):
            with connect(live.ws(), origin=origin) as ws:
                ws.send(pcm())
                assert first_reply(ws)["type"] == "label"
        assert refusal(live.ws(), origin="https://app.example.evil") == 403
        upload = httpx.post(f"{live.http}/v1/classify", content=flac(make_signal("noise", 2.0)),
                            headers={"Origin": FOREIGN})
        assert upload.status_code == 403 and "SWISHNET_ALLOWED_ORIGINS" in upload.json()["detail"]
        assert httpx.get(f"{live.http}/healthz", headers={"Origin": FOREIGN}).status_code == 200  # reads are safe


def test_foreign_host_is_refused(server):
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example"):
        response = httpx.get(f"{server.http}/web", headers={"Host": host})
        assert response.status_code == 400 and "SWISHNET_ALLOWED_HOSTS" in response.json()["detail"]
        assert "location" not in response.headers
    assert raw_handshake(server.port, "evil.example").startswith(b"HTTP/1.1 400")
    assert raw_handshake(server.port, f"127.0.0.1:{server.port}").startswith(b"HTTP/1.1 101")
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost", f"[::1]:{server.port}"):
        assert httpx.get(f"{server.http}/healthz", headers={"Host": host}).status_code == 200
    redirect = httpx.get(f"{server.http}/web")  # the trusted Host is the one redirects name
    assert redirect.headers["location"] == f"http://127.0.0.1:{server.port}/web/"


def test_allowed_hosts_wildcards_and_the_bind_address(classifier):
    settings = Settings(host="192.0.2.7", allowed_hosts="*.example.org")
    assert settings.hosts() == ("*.example.org", "192.0.2.7")
    with LiveServer(create_app(settings, classifier=classifier)) as live:
        assert httpx.get(f"{live.http}/healthz", headers={"Host": "api.example.org"}).status_code == 200
        assert httpx.get(f"{live.http}/healthz", headers={"Host": "192.0.2.7:8000"}).status_code == 200
        assert httpx.get(f"{live.http}/healthz").status_code == 400  # 127.0.0.1 is no longer listed


def test_key_is_required_when_set(keyed):
    model = f"{keyed.http}/v1/model"
    refused = httpx.get(model)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(model, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(model, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(model, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(f"{keyed.http}/metrics").status_code == 401
    assert httpx.get(f"{keyed.http}/metrics", headers={"X-API-Key": KEY}).status_code == 200
    upload = flac(make_signal("noise", 2.0))
    assert httpx.post(f"{keyed.http}/v1/classify", content=upload).status_code == 401
    assert httpx.post(f"{keyed.http}/v1/classify", content=upload, headers={"X-API-Key": KEY}).status_code == 200
    for open_path in ("/healthz", "/", "/web/app.js", "/docs", "/openapi.json"):
        assert httpx.get(keyed.http + open_path).status_code == 200, open_path


def test_key_on_websockets_by_header_or_browser_subprotocol(keyed):
    assert refusal(keyed.ws()) == 401
    assert refusal(keyed.ws(), additional_headers={"Authorization": "Bearer wrong"}) == 401
    assert refusal(keyed.ws(path="/v1/live")) == 401
    with connect(keyed.ws(), additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send(pcm())
        assert first_reply(ws)["type"] == "label"
    encoded = base64.urlsafe_b64encode(KEY.encode()).decode().rstrip("=")
    with connect(keyed.ws(), subprotocols=["swishnet", f"swishnet.key.{encoded}"]) as ws:  # as the web page does
        assert ws.subprotocol == "swishnet"
        ws.send(pcm())
        assert first_reply(ws)["type"] == "label"


def test_key_from_a_file(classifier, tmp_path):
    (tmp_path / "key").write_text(f"  {KEY}\n")
    with LiveServer(create_app(Settings(api_key_file=tmp_path / "key"), classifier=classifier)) as live:
        assert httpx.get(f"{live.http}/v1/model").status_code == 401
        assert httpx.get(f"{live.http}/v1/model", headers={"X-API-Key": KEY}).status_code == 200
    with pytest.raises(ValueError, match="cannot read api_key_file"):
        create_app(Settings(api_key_file=tmp_path / "missing"), classifier=classifier)


def test_exposed_without_a_key_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="service.app"):
        _warn_if_exposed(Settings(host="127.0.0.1"), None)
        _warn_if_exposed(Settings(host="0.0.0.0"), "key")
        assert not caplog.records
        _warn_if_exposed(Settings(host="0.0.0.0"), None)
    assert "without a key" in caplog.text


def test_security_headers_on_every_response(server):
    responses = [httpx.get(f"{server.http}/"), httpx.get(f"{server.http}/healthz"),
                 httpx.get(f"{server.http}/no/such/page"), httpx.post(f"{server.http}/v1/classify", content=b""),
                 httpx.get(f"{server.http}/healthz", headers={"Host": "evil.example"})]
    for response in responses:
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "default-src 'self'" in CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "server" not in response.headers


def test_model_card_names_no_folder_of_the_training_machine(classifier, tiny_model_path):
    trained = Classifier(tiny_model_path)
    trained.card = {**trained.card, "training": {"options": {"corpus": "/work/data/corpus-v3", "out": "/work/runs/x",
                                                              "epochs": 3, "cache": "C:\\Users\\me\\cache"}},
                    "sources": ["~/recordings", "relative/name"]}
    with LiveServer(create_app(Settings(), classifier=trained)) as live:
        card = httpx.get(f"{live.http}/v1/model").json()
    assert card["training"]["options"] == {"epochs": 3} and card["sources"] == ["relative/name"]
    assert card["labels"] == list(classifier.labels)
    text = json.dumps(card)
    assert "/work/" not in text and "Users" not in text


def test_bundled_cards_lose_their_paths():
    from service.inference import load_card
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "models").glob("*.onnx")):
        card = public_card(load_card(path))
        assert "/work/" not in json.dumps(card), path.name


def stalled_upload(port: int, declared: int, sent: bytes) -> bytes:
    """POST headers declaring ``declared`` bytes, then ``sent``, then silence; the whole answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + sent)
        sock.settimeout(30)
        answer = b""
        while chunk := sock.recv(65536):  # the server answers and closes: no wait for the rest of the body
            answer += chunk
        return answer


def test_a_stalled_body_gets_408_and_the_connection_closes(classifier):
    with LiveServer(create_app(Settings(upload_timeout_s=0.5), classifier=classifier)) as live:
        answer = stalled_upload(live.port, 50_000_000, b"0123456789")
        assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer
        assert b"connection: close" in answer.lower()
        assert httpx.get(f"{live.http}/healthz").status_code == 200
        assert 'route="/v1/classify",status="408"' in httpx.get(f"{live.http}/metrics").text


def silence_bomb(seconds: float) -> bytes:
    """A FLAC of digital silence: tens of bytes per second of audio."""
    buffer = io.BytesIO()
    block = np.zeros(SAMPLE_RATE * 60, dtype=np.int16)
    with sf.SoundFile(buffer, "w", SAMPLE_RATE, 1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(int(seconds // 60)):
            out.write(block)
    return buffer.getvalue()


def test_silence_bombs_are_refused_and_a_clip_beside_them_is_answered(classifier):
    bomb = silence_bomb(30 * 60)
    assert len(bomb) / 1800 < 100  # bytes per second of audio
    clip = flac(make_signal("music", 2.0))
    with LiveServer(create_app(Settings(), classifier=classifier)) as live:
        with ThreadPoolExecutor(3) as pool:
            bombs = [pool.submit(httpx.post, f"{live.http}/v1/classify", content=bomb, timeout=60) for _ in range(2)]
            small = pool.submit(httpx.post, f"{live.http}/v1/classify", content=clip, timeout=60)
            assert small.result().status_code == 200 and small.result().json()["label"] == "music"
            for refused in (b.result() for b in bombs):
                assert refused.status_code == 413
                assert "decompression bomb" in refused.json()["detail"]
                assert "400 bytes per second" in refused.json()["detail"]
    # an honest silent minute is not a bomb
    with LiveServer(create_app(Settings(), classifier=classifier)) as live:
        assert httpx.post(f"{live.http}/v1/classify", content=silence_bomb(60), timeout=60).status_code == 200


def piped_flac(audio: np.ndarray) -> bytes:
    """A FLAC as an encoder writing to a pipe leaves it: the header's sample count is 0 (unknown)."""
    data = bytearray(flac(audio))
    assert data[:4] == b"fLaC"
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)  # STREAMINFO: rate, channels, bits, samples
    data[18:26] = packed.to_bytes(8, "big")
    data[26:42] = bytes(16)  # and no MD5 either
    return bytes(data)


def test_a_flac_written_to_a_pipe_is_classified(server):
    audio = np.concatenate([make_signal("noise", 2.0), make_signal("music", 3.0)])
    response = httpx.post(f"{server.http}/v1/classify", content=piped_flac(audio), timeout=30)
    assert response.status_code == 200, response.text
    assert abs(response.json()["duration"] - 5.0) < 0.05
    assert [s["label"] for s in response.json()["segments"]] == ["noise", "music"]
