"""Runtime settings of the service: one object, overridable by SWISHNET_* environment variables.

Model-contract constants (sample rate, MFCC parameters) are not settings: they
live in service.features and travel with each model's card.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_INTERFACE = ("0.0.0.0", "::", "")

UPLOAD_PCM_BYTES_PER_S = 48_000 * 2 * 2  # 48 kHz 16-bit stereo PCM: the densest common uncompressed upload
UPLOAD_HEADER_BYTES = 2**20  # a container's header and metadata (cover art, tags) beside the audio

Names = Annotated[tuple[str, ...], NoDecode]  # from the environment as a comma-separated list


def upload_bytes_for(duration_s: float) -> int:
    """The upload size that holds ``duration_s`` of 48 kHz 16-bit stereo WAV (max_upload_bytes' default)."""
    return math.ceil(duration_s * UPLOAD_PCM_BYTES_PER_S) + UPLOAD_HEADER_BYTES


def is_loopback(host: str) -> bool:
    """Whether a bind address or host name reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Knobs of `swishnet serve`. Each field can be set as SWISHNET_<FIELD> (e.g. SWISHNET_PORT=9000)."""

    model_config = SettingsConfigDict(env_prefix="SWISHNET_", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 to accept remote clients (then set "
                      "api_key, allowed_hosts and allowed_origins: see the README's Security section).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, description="Server processes (each loads its own copy of the model).")
    model_path: Path | None = Field(None, description="ONNX model to serve; default: the bundled SwishNet-slim.")
    intra_op_threads: int = Field(1, ge=1, description="onnxruntime threads per inference call.")
    max_batch_frames: int = Field(4096, ge=1, description="Most MFCC frames (new frames and their context) the "
                                  "streams of a process score in one call; a stream waits at most for the call "
                                  "in progress, so this bounds its wait (about 10 ms for SwishNet-slim on one core).")
    max_upload_duration_s: float = Field(3 * 3600, gt=0, description="Longest accepted upload, in seconds of audio.")
    max_upload_bytes: int = Field(
        default_factory=lambda fields: upload_bytes_for(fields["max_upload_duration_s"]), ge=1,
        description="Largest accepted upload to /v1/classify. Default: what max_upload_duration_s of 48 kHz 16-bit "
        "stereo WAV takes (3 h: 2 GB), so an uncompressed upload within the duration limit is never refused for "
        "its size; compressed formats hold more.")
    min_upload_bytes_per_s: float = Field(
        400.0, ge=0, description="Past its first minute, an upload must hold at least this many bytes per second "
        "of audio (3.2 kbit/s, below any codec's lowest rate; Opus goes down to 6 kbit/s): a small file that "
        "decodes to hours (a decompression bomb) is refused with 413 instead of costing minutes of CPU. 0: off.")
    upload_timeout_s: float = Field(15.0, gt=0, description="Longest wait for the next part of an upload's body; "
                                    "a client that stalls longer gets 408 and its connection is closed.")
    max_rest_jobs: int = Field(2, ge=1, description="Uploads classified at once; more wait their turn, so uploads "
                               "never take the threads streams need.")
    max_rest_queue: int = Field(16, ge=0, description="Uploads that may wait (or still be arriving) beyond "
                                "max_rest_jobs; more are refused at once with 503 and Retry-After.")
    max_streams: int = Field(256, ge=1, description="Concurrent /v1/stream streams, and separately /v1/live "
                             "subscribers; more are refused (close 1013).")
    max_stream_speed: float = Field(
        50.0, gt=0, description="Fastest a stream may send, as a multiple of real time; faster senders are slowed down."
    )
    stream_burst_s: float = Field(10.0, ge=0, description="Audio a stream may send ahead of the speed limit.")
    max_message_bytes: int = Field(4 * 2**20, ge=1, description="Largest WebSocket message accepted.")
    max_pending_events: int = Field(
        256, ge=1, description="Events a /v1/stream client may leave unread beyond what its connection's buffers "
        "hold; past it the client is too slow (or not reading) and is closed with 1008.")
    ws_deflate: bool = Field(False, description="Accept permessage-deflate when a client offers it (browsers do); "
                             "off by default: it costs CPU on both ends for little gain on PCM audio and short events.")
    idle_timeout_s: float = Field(30.0, gt=0, description="A stream that sends nothing for this long is closed.")
    shutdown_timeout_s: float = Field(
        8.0, gt=0, description="On SIGTERM, the longest the service waits for its connections before it ends "
        "them; below `docker stop`'s default 10 s. Every WebSocket client that still reads gets 1012 first.")
    api_key: SecretStr | None = Field(
        None, description="When set, every endpoint but /healthz, the web page and the API docs needs it "
        "(Authorization: Bearer KEY or X-API-Key: KEY; browsers' WebSockets: subprotocol swishnet.key.BASE64URL).")
    api_key_file: Path | None = Field(None, description="A file holding the key (e.g. a container secret); "
                                      "its surrounding white space is ignored.")
    allowed_hosts: Names = Field(
        LOOPBACK_HOSTS, description="Host names (Host header, port ignored) the service answers to; "
        "'*.example.com' for subdomains, '*' for any. The address in `host` is always allowed. Others get 400, "
        "which stops DNS rebinding.")
    allowed_origins: Names = Field(
        (), description="Web origins (scheme://host[:port]) whose pages may open WebSockets and send uploads, "
        "besides the service's own origin; '*' for any. Requests without Origin (CLIs, scripts) are not affected.")
    mic_device: str | None = Field(
        None, description="Input device to classify live and publish on WS /v1/live: 'default', an index or part of "
        "a name (see swishnet mic --list-devices). Unset: no live input."
    )
    live_queue_events: int = Field(
        256, ge=1, description="Events a /v1/live subscriber may fall behind; beyond it its oldest are dropped."
    )

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_have_a_scheme(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin != "*" and "://" not in origin:
                raise ValueError(f"origin {origin!r} needs its scheme, as browsers send it: e.g. https://{origin}")
        return tuple(origin.rstrip("/").lower() for origin in origins)

    @model_validator(mode="after")
    def _one_capture(self) -> Settings:
        if self.mic_device is not None and self.workers > 1:
            raise ValueError("live input (mic_device) needs a single worker: each worker would open the device")
        return self

    @model_validator(mode="after")
    def _one_key(self) -> Settings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set api_key or api_key_file, not both")
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError("api_key is empty")
        return self

    def key(self) -> str | None:
        """The API key, read from api_key or api_key_file; None when the service is open."""
        if self.api_key is not None:
            return self.api_key.get_secret_value().strip()
        if self.api_key_file is None:
            return None
        try:
            key = self.api_key_file.read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read api_key_file {self.api_key_file}: {error.strerror}") from None
        if not key:
            raise ValueError(f"api_key_file {self.api_key_file} is empty")
        return key

    def upload_bytes_limit_text(self) -> str:
        """The byte cap as a 413 states it: in bytes, MiB, and the audio it holds."""
        wav_s = (self.max_upload_bytes - UPLOAD_HEADER_BYTES) / UPLOAD_PCM_BYTES_PER_S
        return (f"{self.max_upload_bytes} bytes ({self.max_upload_bytes / 2**20:.0f} MiB, about "
                f"{_duration_text(max(wav_s, 0))} of 48 kHz 16-bit stereo WAV; compressed formats hold more, "
                f"up to the duration limit of {_duration_text(self.max_upload_duration_s)})")

    def hosts(self) -> tuple[str, ...]:
        """allowed_hosts, plus the bind address when it is a specific one."""
        if self.host in ANY_INTERFACE or self.host in self.allowed_hosts:
            return self.allowed_hosts
        return (*self.allowed_hosts, self.host)


def _duration_text(seconds: float) -> str:
    """3 h, 10 min, 45 s: the largest unit that gives a whole number, else minutes with a decimal."""
    for unit, name in ((3600, "h"), (60, "min"), (1, "s")):
        if seconds >= unit and (seconds / unit).is_integer():
            return f"{seconds / unit:g} {name}"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
