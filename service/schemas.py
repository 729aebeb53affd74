"""Pydantic models of what the API takes and returns (they also document the OpenAPI page)."""

from __future__ import annotations

from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from service.stream import OPTION_FIELDS, StreamConfig


class Segment(BaseModel):
    start: float = Field(description="Start, seconds from the beginning of the audio.")
    end: float = Field(description="End, seconds from the beginning of the audio.")
    label: str = Field(description="speech, music, noise or silence.")
    confidence: float = Field(description="Mean probability of the label over the segment (1.0 for silence).")


class ClassifyResponse(BaseModel):
    """One classified file: the same object `swishnet classify --format json` prints."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "file": "meeting.wav",
                "duration": 12.5,
                "label": "speech",
                "probs": {"speech": 0.91, "music": 0.06, "noise": 0.03},
                "segments": [
                    {"start": 0.0, "end": 9.8, "label": "speech", "confidence": 0.95},
                    {"start": 9.8, "end": 12.5, "label": "music", "confidence": 0.88},
                ],
            }
        }
    )

    file: str | None = Field(description="The upload's filename, or null for a raw body.")
    duration: float = Field(description="Length of the audio in seconds.")
    label: str = Field(description="Dominant class (highest mean probability), or silence if the audio is silent.")
    probs: dict[str, float] = Field(description="Mean probability of each class over the non-silent audio.")
    segments: list[Segment]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str = Field(description="Name of the loaded model.")
    streams_open: int


class ErrorMessage(BaseModel):
    detail: str = Field(description="What was wrong with the request and what is accepted.")


class StreamOptions(BaseModel):
    """Analysis knobs shared by /v1/classify and /v1/stream (query parameters); unset means the engine default.

    Unknown parameters are refused: a typo such as ``samplerate`` would otherwise pass silently, and
    the audio would be read wrongly."""

    model_config = ConfigDict(extra="forbid")

    window: float | None = Field(None, description="Analysis window in seconds (0.5 to 10; default 1).")
    hop: float | None = Field(None, description="Decision hop in seconds, a multiple of 0.01 (default 0.1).")
    min_segment: float | None = Field(None, ge=0, description="Shortest segment kept, in seconds.")
    min_pause: float | None = Field(None, ge=0, description="Shorter interruptions between two segments of the "
                                    "same label are absorbed, in seconds.")
    silence_threshold: float | None = Field(None, description="Energy gate in dBFS below which audio is silence.")

    def to_config(self) -> StreamConfig:
        """The engine configuration; raises ValueError naming the parameter for invalid values."""
        return StreamConfig.from_options(**{name: getattr(self, name) for name in OPTION_FIELDS})


def describe_errors(errors: Sequence[dict], default: str = "request") -> str:
    """Pydantic validation errors as one line a user can act on: ``window: Input should be ...; hop: ...``."""
    def where(error: dict) -> str:
        return ".".join(str(part) for part in error["loc"] if part not in ("query", "body")) or default

    return "; ".join(f"{where(error)}: {error['msg']}" for error in errors)
