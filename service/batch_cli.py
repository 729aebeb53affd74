"""``swishnet batch SOURCES... --out DIR``: classify archives with Ray, locally or on a cluster.

Registration imports nothing heavy; Ray is imported when the command runs
(the ``batch`` extra), so the runtime install and ``swishnet --help`` stay
Ray-free. See service/batch.py for how the job runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.batch_output import FORMATS, OutputError
from service.batch_sources import SourceError, expand_sources
from service.classify_cli import add_analysis_options, load_classifier, stream_config
from service.cli import CommandError, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="classify many files with Ray (this machine, or a cluster): resumable, rows in shards",
        description="Classify every audio file the SOURCES name with the streaming engine, on a pool of Ray "
                    "workers, and write one row per file (the JSON of 'swishnet classify' plus 'error') to "
                    "shards in DIR. A re-run skips files that already have a row. Needs the batch extra "
                    "(pip install 'swishnet[batch]').",
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="a folder (searched recursively), a glob, an audio file or URI, or a manifest: "
                             ".txt/.lst with one path or URI per line, or .csv with a 'path' column")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the output shards")
    parser.add_argument("--format", choices=sorted(FORMATS), default="jsonl",
                        help="jsonl: JSON lines; parquet: the same rows in Parquet (default: %(default)s)")
    parser.add_argument("--model", type=Path, metavar="PATH",
                        help="ONNX model with its .json card beside it (default: the bundled swishnet-slim); "
                             "it is sent to the workers")
    add_analysis_options(parser)
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N",
                        help="Ray actors classifying at once, each with its own model (default: %(default)s)")
    parser.add_argument("--cpus-per-worker", type=positive_float, default=1.0, metavar="C",
                        help="CPUs Ray reserves per worker; inference uses int(C) threads, at least 1 "
                             "(default: %(default)s)")
    parser.add_argument("--address", metavar="ADDRESS",
                        help="join a Ray cluster: 'auto' (this node's cluster) or ray://HOST:PORT "
                             "(default: $RAY_ADDRESS, else a local Ray started for the job)")
    parser.add_argument("--files-per-task", type=positive_int, metavar="N",
                        help="files per Ray task, the unit a dead worker's retry repeats "
                             "(default: from the job's size, 1 to 32)")
    parser.add_argument("--shard-files", type=positive_int, default=1000, metavar="N",
                        help="rows per output shard (default: %(default)s)")
    parser.add_argument("--object-store-mb", type=positive_int, default=256, metavar="MB",
                        help="shared memory of a local Ray (default: %(default)s)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="classify again the files whose rows in DIR are errors (their rows are replaced)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler=run)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value:g}")
    return value


def run(args: argparse.Namespace) -> int:
    from service.batch import BatchError, BatchOptions, RayMissing, import_ray, run_batch

    config = stream_config(args)
    try:
        import_ray()  # before any work: a missing extra is a usage error
        files = expand_sources(args.sources)
    except (RayMissing, SourceError) as error:
        raise CommandError(str(error)) from None
    options = BatchOptions(out_format=args.format, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                           address=args.address, files_per_task=args.files_per_task, shard_rows=args.shard_files,
                           object_store_mb=args.object_store_mb, progress=not args.no_progress,
                           retry_errors=args.retry_errors)
    classifier = load_classifier(args.model, options.threads_per_worker)
    try:
        summary = run_batch(files, args.out, classifier, config, options)
    except OutputError as error:
        raise CommandError(str(error)) from None
    except BatchError as error:
        print(f"swishnet: error: {error}", file=sys.stderr)
        return 1
    print(summary.line(), flush=True)
    return 1 if summary.errors else 0
