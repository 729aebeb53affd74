"""Runtime settings of the service: one object, overridable by SWISHNET_* environment variables.

Model-contract constants (sample rate, MFCC parameters) are not settings: they
live in service.features and travel with each model's card.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Knobs of `swishnet serve`. Each field can be set as SWISHNET_<FIELD> (e.g. SWISHNET_PORT=9000)."""

    model_config = SettingsConfigDict(env_prefix="SWISHNET_", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on; 0.0.0.0 to accept remote clients.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, description="Server processes (each loads its own copy of the model).")
    model_path: Path | None = Field(None, description="ONNX model to serve; default: the bundled SwishNet-slim.")
    intra_op_threads: int = Field(1, ge=1, description="onnxruntime threads per inference call.")
    max_batch_frames: int = Field(4096, ge=1, description="Most MFCC frames (new frames and their context) the "
                                  "streams of a process score in one call; a stream waits at most for the call "
                                  "in progress, so this bounds its wait (about 10 ms for SwishNet-slim on one core).")
    max_upload_bytes: int = Field(100 * 2**20, ge=1, description="Largest accepted upload to /v1/classify.")
    max_upload_duration_s: float = Field(3 * 3600, gt=0, description="Longest accepted upload, in seconds of audio.")
    max_rest_jobs: int = Field(2, ge=1, description="Uploads classified at once; more wait their turn, so uploads "
                               "never take the threads streams need.")
    max_streams: int = Field(256, ge=1, description="Concurrent /v1/stream streams, and separately /v1/live "
                             "subscribers; more are refused (close 1013).")
    max_stream_speed: float = Field(
        50.0, gt=0, description="Fastest a stream may send, as a multiple of real time; faster senders are slowed down."
    )
    stream_burst_s: float = Field(10.0, ge=0, description="Audio a stream may send ahead of the speed limit.")
    max_message_bytes: int = Field(4 * 2**20, ge=1, description="Largest WebSocket message accepted.")
    ws_deflate: bool = Field(False, description="Accept permessage-deflate when a client offers it (browsers do); "
                             "off by default: it costs CPU on both ends for little gain on PCM audio and short events.")
    idle_timeout_s: float = Field(30.0, gt=0, description="A stream that sends nothing for this long is closed.")
    mic_device: str | None = Field(
        None, description="Input device to classify live and publish on WS /v1/live: 'default', an index or part of "
        "a name (see swishnet mic --list-devices). Unset: no live input."
    )
    live_queue_events: int = Field(
        256, ge=1, description="Events a /v1/live subscriber may fall behind; beyond it its oldest are dropped."
    )

    @model_validator(mode="after")
    def _one_capture(self) -> Settings:
        if self.mic_device is not None and self.workers > 1:
            raise ValueError("live input (mic_device) needs a single worker: each worker would open the device")
        return self
