"""`swishnet serve`: run the REST + WebSocket service with uvicorn."""

from __future__ import annotations

import argparse
import os
import signal

from pydantic import ValidationError

from service.cli import CommandError
from service.config import Settings
from service.server import uvicorn_options


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = Settings.model_fields
    parser = subparsers.add_parser(
        "serve",
        help="run the REST and WebSocket service",
        description="Serve POST /v1/classify, WS /v1/stream, GET /v1/model, /healthz, /metrics and the web page "
        "at /; with --mic, also WS /v1/live. "
        "Every limit can also be set by environment variable: SWISHNET_MAX_STREAMS, "
        "SWISHNET_MAX_UPLOAD_BYTES, SWISHNET_IDLE_TIMEOUT_S, ... (see service/config.py).",
    )
    parser.add_argument("--host", help=f"interface to listen on (default: {defaults['host'].default})")
    parser.add_argument("--port", type=int, help=f"TCP port (default: {defaults['port'].default})")
    parser.add_argument("--model", help="ONNX model file to serve, its .json card beside it (default: the bundled "
                                        "SwishNet-slim)")
    parser.add_argument("--workers", type=int, help="server processes (default: 1)")
    parser.add_argument("--mic", nargs="?", const="default", metavar="DEVICE",
                        help="also listen to this input device (index or part of its name; without DEVICE: the "
                             "default input) and publish its events on WS /v1/live; needs the mic extra")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.inference import Classifier, ModelError

    # Options go through the environment so that every uvicorn worker builds the same Settings.
    for name, value in {"host": args.host, "port": args.port, "model_path": args.model,
                        "workers": args.workers, "mic_device": args.mic}.items():
        if value is not None:
            os.environ[f"SWISHNET_{name.upper()}"] = str(value)
    settings = _settings()
    try:  # fail here, with one clear line, rather than in every worker's start-up
        settings.key()
        Classifier(settings.model_path)
    except (ModelError, ValueError) as error:
        raise CommandError(str(error)) from None
    _check_mic(settings.mic_device)
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level=args.log_level.lower(), **uvicorn_options(settings))
    return 0


def _stopped(signum: int, frame: object) -> None:
    """SIGTERM is how containers and service managers stop a service: exit status 0. uvicorn catches it while
    it serves, shuts down within settings.shutdown_timeout_s, then raises it again to this handler."""
    raise SystemExit(0)


def _settings() -> Settings:
    from service.schemas import describe_errors

    try:
        return Settings()
    except ValidationError as error:
        raise CommandError(f"invalid settings: {describe_errors(error.errors(), 'settings')}") from None


def _check_mic(device: str | None) -> None:
    """Fail before serving when live input is asked for and the device cannot be used."""
    if device is None:
        return
    from service.mic import MicError, import_sounddevice, input_device, parse_device

    try:
        input_device(import_sounddevice(), parse_device(device))
    except MicError as error:
        raise CommandError(str(error)) from None
