"""``swishnet mic``: classify a microphone live in the terminal, here or on a running service."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from service.classify_cli import add_analysis_options, load_classifier, stream_config
from service.cli import CommandError

if TYPE_CHECKING:
    from service.mic import Engine
    from service.stream import StreamConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mic",
        help="classify the microphone live in the terminal",
        description="Listen to an input device and show the current class, its probabilities and the recent "
        "segments; Ctrl-C stops and prints the seconds per class. By default the model runs here; with "
        "--server the audio is streamed to a running 'swishnet serve'. Needs the mic extra "
        "(in the source folder: pip install -e '.[mic]') and PortAudio.",
    )
    parser.add_argument("--device", metavar="N",
                        help="input device: index or part of its name (default: the system's default input)")
    parser.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    parser.add_argument("--server", metavar="URL",
                        help="stream to this service (ws://HOST:PORT) instead of classifying here")
    parser.add_argument("--model", type=Path, metavar="PATH",
                        help="ONNX model with its .json card beside it (default: the bundled swishnet-slim)")
    add_analysis_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from service.mic import MicError

    try:
        return _run(args)
    except MicError as error:
        raise CommandError(str(error)) from None


def _run(args: argparse.Namespace) -> int:
    from service.mic import Capture, ctrl_c_sets, describe_devices, import_sounddevice, parse_device, run_capture
    from service.mic_display import LiveDisplay, format_summary

    if args.list_devices:
        print(describe_devices(import_sounddevice()))
        return 0
    if args.server and args.model:
        raise CommandError("--model applies to the local engine; with --server the service's model is used")
    config = stream_config(args)
    capture = Capture(parse_device(args.device))
    engine, where = _engine(args, config, capture.sample_rate)
    display = LiveDisplay(sys.stdout, f"{capture.name} → {where}")
    try:  # Ctrl-C ends the capture between two blocks; what was captured before it is classified
        with ctrl_c_sets(threading.Event()) as stop, engine, capture:
            run_capture(capture, engine, display.update, stop, drain=True)
    finally:
        display.close()
    print(format_summary(display.state.seconds_per_label))
    if capture.dropped_blocks:
        print(f"warning: {capture.dropped_blocks} blocks were dropped: the engine could not keep up", file=sys.stderr)
    return 0


def _engine(args: argparse.Namespace, config: StreamConfig, sample_rate: int) -> tuple[Engine, str]:
    """The engine the options ask for, and where it runs (for the display's title)."""
    from service.mic import LocalEngine, RemoteEngine

    if args.server:
        return RemoteEngine(args.server, sample_rate, config), args.server
    classifier = load_classifier(args.model, 1)
    return LocalEngine(classifier, config, sample_rate), f"model {classifier.name}"
