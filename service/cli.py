"""The ``swishnet`` command.

Subcommands are registered through the ``swishnet.commands`` entry-point group
(see pyproject.toml): each entry is a function ``register(subparsers)`` that
adds one parser and sets ``handler``. Registration only builds argparse
parsers; heavy imports (torch, onnxruntime) happen inside the handlers, so
``swishnet --help`` is fast and works without the training extras.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shlex
import sys
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from service import __version__

Handler = Callable[[argparse.Namespace], int]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class CommandError(Exception):
    """A failure a user can fix; printed as one line, exit status 2."""


def install_command(extra: str) -> str:
    """The command that installs an extra into the environment running this: from the source folder when
    swishnet runs from one (the README's way), else by name."""
    source = Path(__file__).resolve().parents[1]
    target = f"{source}[{extra}]" if (source / "pyproject.toml").is_file() else f"swishnet[{extra}]"
    editable = ["-e"] if (source / "pyproject.toml").is_file() else []
    return shlex.join([sys.executable, "-m", "pip", "install", *editable, target])


@contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Inside, a package that is not installed (ModuleNotFoundError for a module outside swishnet) is a
    CommandError that names the extra to install and the command that installs it."""
    try:
        yield
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] in ("service", "models", "export"):
            raise  # our own module missing is a bug, not a missing extra
        raise CommandError(f"{what} needs the {extra} extra ({error.name} is not installed); install it with: "
                           f"{install_command(extra)}") from None


def positive_int(text: str) -> int:
    """argparse type of counts such as --threads: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Inside, what C libraries print on stderr themselves (libmpg123's notes on damaged MP3 frames) goes
    to /dev/null, while Python's sys.stderr (errors, logging, progress bars) still reaches the real stderr.

    File descriptor 2 is pointed at /dev/null; when sys.stderr writes to it, sys.stderr (and the logging
    handlers that use it) are moved to a duplicate of the real stderr for the duration. For one command in
    its own process: the descriptor is shared by every thread.
    """
    try:
        python_uses_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):  # replaced by a test's capture, or closed
        python_uses_fd2 = False
    sys.stderr.flush()
    real_stderr = os.dup(2)
    original = sys.stderr
    if python_uses_fd2:
        _move_stderr(original, os.fdopen(os.dup(real_stderr), "w", encoding=original.encoding,
                                         errors=original.errors, buffering=1))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        if python_uses_fd2:
            moved = sys.stderr
            _move_stderr(moved, original)
            moved.close()
        os.dup2(real_stderr, 2)
        os.close(real_stderr)


def _move_stderr(old: TextIO, new: TextIO) -> None:
    """sys.stderr and the logging handlers that write to ``old`` write to ``new``."""
    old.flush()
    sys.stderr = new
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)


def register_version(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("version", help="print the installed version and exit")
    parser.set_defaults(handler=lambda args: print(f"swishnet {__version__}") or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swishnet",
        description=(
            "Real-time speech / music / noise classification with SwishNet. "
            "Run 'swishnet COMMAND --help' for the options of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"swishnet {__version__}")
    _add_log_level(parser, "INFO")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for entry in sorted(entry_points(group="swishnet.commands"), key=lambda e: e.name):
        entry.load()(subparsers)
    for command in subparsers.choices.values():  # also after the command: 'swishnet serve --log-level DEBUG'
        _add_log_level(command, argparse.SUPPRESS)
    return parser


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--log-level", default=default, choices=LOG_LEVELS,
                        help="how much to log on stderr (default: INFO)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return int(args.handler(args) or 0)
    except CommandError as error:
        print(f"swishnet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
