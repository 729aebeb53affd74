"""``swishnet classify FILE...``: speech / music / noise / silence segments of audio files.

Output formats: JSON lines (one object per file), CSV (one row per segment,
like inaSpeechSegmenter's, with a file column), Praat TextGrid (one
IntervalTier per file) and the stream's events as JSON lines (``--format
events``; ``--events`` chooses label events every hop, on change only, or
none, as WS /v1/stream's ``events`` parameter does). An unreadable file gets a one-line error on stderr
and a non-zero exit status; the other files are still classified.

A folder stands for the audio and video files under it (by suffix,
recursively, sorted); ``-`` for standard input, read whole first (spooled to
disk past 1 MB: the decoders need to seek). What decoder libraries print
themselves (libmpg123's notes on damaged MP3 frames) is kept off stderr
unless ``--log-level DEBUG``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from service.audio import AUDIO_SUFFIXES, AudioError
from service.cli import CommandError, native_stderr_silenced, positive_int
from service.stream import EVENT_MODES, OPTION_FIELDS, StreamConfig

if TYPE_CHECKING:
    from service.stream import FileResult

LONG_INPUT_S = 60.0  # show a progress bar (on stderr, if it is a terminal) for longer files
CSV_COLUMNS = ["file", "labels", "start", "stop", "confidence"]
STDIN = "-"
STDIN_OUTPUT_STEM = "stdin"  # its output's name in --output-dir
SPOOL_MEMORY_BYTES = 1 << 20
_DEFAULTS = StreamConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="label speech / music / noise / silence segments of audio files",
        description="Classify audio files with the streaming engine and print their segments.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="audio or video files (WAV, FLAC, OGG, MP3, M4A, AMR, MP4, MKV, ...), folders "
                             "(their audio and video files, recursively), or - for standard input")
    parser.add_argument("--format", choices=sorted([*FORMATS, "events"]), default="json",
                        help="json: one JSON object per line and file; csv: one row per segment; "
                             "textgrid: Praat TextGrid; events: the stream's events, one JSON object per line "
                             "with a file key (default: %(default)s)")
    parser.add_argument("--events", choices=EVENT_MODES, default=_DEFAULTS.events,
                        help="with --format events: a label event every hop (labels), only when the label "
                             "changes (changes), or segment events only (segments) (default: %(default)s)")
    parser.add_argument("--model", type=Path, metavar="PATH",
                        help="ONNX model with its .json card beside it (default: the bundled swishnet-slim)")
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="write one output file per input (NAME.json, NAME.csv or NAME.TextGrid) "
                             "instead of printing")
    add_analysis_options(parser)
    parser.add_argument("--threads", type=positive_int, default=1, metavar="N",
                        help="inference threads (default: %(default)s)")
    parser.set_defaults(handler=run)


def add_analysis_options(parser: argparse.ArgumentParser) -> None:
    """The engine's knobs (--window, --hop, ...), shared by the commands that run it; see stream_config."""
    parser.add_argument("--window", type=float, default=_DEFAULTS.window_s, metavar="S",
                        help="analysis window in seconds (default: %(default)s)")
    parser.add_argument("--hop", type=float, default=_DEFAULTS.hop_s, metavar="S",
                        help="time between decisions in seconds (default: %(default)s)")
    parser.add_argument("--min-segment", type=float, default=_DEFAULTS.min_segment_s, metavar="S",
                        help="shorter segments are merged into the one before (default: %(default)s)")
    parser.add_argument("--min-pause", type=float, default=_DEFAULTS.min_pause_s, metavar="S",
                        help="shorter interruptions between two segments of one label are absorbed "
                             "(default: %(default)s)")
    parser.add_argument("--silence-threshold", type=float, default=_DEFAULTS.silence_threshold_db, metavar="DB",
                        help="audio quieter than this (dBFS) is silence (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    config = stream_config(args)
    args.files = expand_inputs(args.files)
    outputs = output_paths(args)
    classifier = load_classifier(args.model, args.threads)
    with ExitStack() as stack:
        if args.log_level != "DEBUG":
            stack.enter_context(native_stderr_silenced())
        sources = {name: stack.enter_context(stdin_audio()) if name == STDIN else name for name in args.files}
        if args.format == "events":
            return write_events(args, classifier, replace(config, events=args.events), sources, outputs)
        return write_results(args, classifier, config, sources, outputs)


def write_results(args: argparse.Namespace, classifier, config: StreamConfig, sources: dict[str, str | BinaryIO],
                  outputs: dict[str, Path] | None) -> int:
    """One result per file, in --format json, csv or textgrid."""
    from service.stream import classify_file  # after the model: nothing heavy before argument checks

    failures = written = 0
    for path, source in sources.items():
        bar = ProgressBar(path)
        try:
            result = classify_file(source, classifier, config, file=path, progress=bar)
        except AudioError as error:
            print(f"swishnet: error: {path}: {error}", file=sys.stderr)
            failures += 1
            continue
        finally:
            bar.close()
        text = FORMATS[args.format](result, outputs is not None or written == 0)  # header: once per output
        if outputs is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            outputs[path].write_text(text, encoding="utf-8")
        written += 1
    return 1 if failures else 0


def write_events(args: argparse.Namespace, classifier, config: StreamConfig, sources: dict[str, str | BinaryIO],
                 outputs: dict[str, Path] | None) -> int:
    """--format events: each file's events as JSON lines, written as they come (no file is held in memory)."""
    from service.stream import file_events

    failures = 0
    for path, source in sources.items():
        bar = ProgressBar(path)
        out = sys.stdout if outputs is None else outputs[path].open("w", encoding="utf-8")
        try:
            for event in file_events(source, classifier, config, progress=bar):
                out.write(json.dumps({"file": path, **event.to_dict()}) + "\n")
        except AudioError as error:
            print(f"swishnet: error: {path}: {error}", file=sys.stderr)
            failures += 1
        finally:
            bar.close()
            if out is sys.stdout:
                out.flush()
            else:
                out.close()
    return 1 if failures else 0


def expand_inputs(names: list[str]) -> list[str]:
    """FILE arguments as files: a folder becomes the audio and video files under it (recursively, sorted);
    ``-`` (standard input) may come once."""
    if names.count(STDIN) > 1:
        raise CommandError("standard input (-) can be read only once")
    files: list[str] = []
    for name in names:
        if name == STDIN or not os.path.isdir(name):
            files.append(name)
            continue
        found = sorted(os.path.join(root, file) for root, _, names_there in os.walk(name, followlinks=True)
                       for file in names_there if Path(file).suffix.lower() in AUDIO_SUFFIXES)
        if not found:
            raise CommandError(f"{name} is a folder with no audio or video files in it (searched recursively "
                               f"for {', '.join(sorted(AUDIO_SUFFIXES))})")
        files += found
    return list(dict.fromkeys(files))  # each file once, in order


@contextmanager
def stdin_audio() -> Iterator[BinaryIO]:
    """Standard input as a seekable binary file: itself when it is a regular file (``< file``), else its
    bytes spooled (to disk past SPOOL_MEMORY_BYTES) until the end of input."""
    stdin = sys.stdin.buffer
    if stdin.seekable():
        yield stdin
        return
    with tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES) as spool:
        shutil.copyfileobj(stdin, spool)
        spool.seek(0)
        yield spool


def stream_config(args: argparse.Namespace) -> StreamConfig:
    try:
        return StreamConfig.from_options(**{name: getattr(args, name) for name in OPTION_FIELDS})
    except ValueError as error:  # its message starts with the option's name: say it as typed
        name, rest = str(error).split(" ", 1)
        raise CommandError(f"--{name.replace('_', '-')} {rest}") from None


def output_paths(args: argparse.Namespace) -> dict[str, Path] | None:
    """Where each file's output goes: stdout (None), or one file per input in --output-dir."""
    if args.output_dir is None:
        if args.format == "textgrid" and len(args.files) > 1:
            raise CommandError("a TextGrid describes one file: give one FILE, or --output-dir for several")
        return None
    suffix = {"json": ".json", "csv": ".csv", "textgrid": ".TextGrid", "events": ".events.jsonl"}[args.format]
    paths = {name: args.output_dir / ((STDIN_OUTPUT_STEM if name == STDIN else Path(name).stem) + suffix)
             for name in args.files}
    if len(set(paths.values())) < len(paths):
        raise CommandError("several FILEs have the same name; their outputs in --output-dir would collide")
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create --output-dir {args.output_dir}: {error.strerror}") from None
    return paths


def load_classifier(model: Path | None, threads: int):
    from service.inference import Classifier, ModelError

    try:
        return Classifier(model, intra_op_num_threads=threads)
    except (ModelError, ValueError) as error:
        raise CommandError(str(error)) from None


class ProgressBar:
    """A tqdm bar on stderr, for long files only; tqdm hides it when stderr is not a terminal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bar = None

    def __call__(self, done_s: float, total_s: float) -> None:
        if self._bar is None:
            if total_s < LONG_INPUT_S:
                return
            from tqdm import tqdm

            self._bar = tqdm(total=round(total_s), unit="s", desc=Path(self.name).name, file=sys.stderr,
                             leave=False, disable=None)
        self._bar.update(min(round(done_s), self._bar.total) - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def format_json(result: FileResult, header: bool) -> str:
    return json.dumps(result.to_dict()) + "\n"


def format_csv(result: FileResult, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for segment in result.to_dict()["segments"]:
        writer.writerow([result.file, segment["label"], segment["start"], segment["end"], segment["confidence"]])
    return buffer.getvalue()


def format_textgrid(result: FileResult, header: bool) -> str:
    """Praat's long text format, one IntervalTier named "class"."""
    summary = result.to_dict()
    segments, duration = summary["segments"], summary["duration"]
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration}",
             "tiers? <exists>", "size = 1", "item []:", "    item [1]:", '        class = "IntervalTier"',
             '        name = "class"', "        xmin = 0", f"        xmax = {duration}",
             f"        intervals: size = {len(segments)}"]
    for number, segment in enumerate(segments, 1):
        lines += [f"        intervals [{number}]:", f"            xmin = {segment['start']}",
                  f"            xmax = {segment['end']}", f'            text = "{segment["label"]}"']
    return "\n".join(lines) + "\n"


FORMATS: dict[str, Callable[[FileResult, bool], str]] = {
    "json": format_json,
    "csv": format_csv,
    "textgrid": format_textgrid,
}
