"""``swishnet corpus``: build, import-musan and stats. Registration is argparse only;
the builder (numpy, torch for the speech detector) is imported when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.corpus_config import DEFAULT_OUT
from service.cli import CommandError, needs_extra


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("corpus", help="build the training corpus (speech / music / noise clips)")
    commands = parser.add_subparsers(title="corpus commands", metavar="COMMAND", required=True)

    build = commands.add_parser("build", help="build the corpus from Debian packages (resumable)")
    build.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    build.add_argument("--sources", nargs="+", metavar="NAME", help="only these packages (default: all listed)")
    build.add_argument("--sources-file", type=Path, help="sources file (default: models/corpus_sources.yaml)")
    build.add_argument("--cache", type=Path, help=".deb cache (default: 'debs' beside the --out folder)")
    build.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    build.set_defaults(handler=_build)

    musan = commands.add_parser("import-musan", help="build the same manifest from a MUSAN folder")
    musan.add_argument("path", type=Path, help="MUSAN folder with speech/, music/ and noise/")
    musan.add_argument("--out", type=Path, required=True, help="output folder")
    musan.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    musan.set_defaults(handler=_import_musan)

    leaks = commands.add_parser("leaks", help="list val and test clips whose audio is also in a train clip",
                                description="Games ship each other's assets, so a split by package can still put "
                                "the same sound in train and test. Lists each val/test clip that matches a train "
                                "clip (MFCC trajectories correlated at some lag), as CSV.")
    leaks.add_argument("path", type=Path, help="corpus folder (holds manifest.csv)")
    leaks.add_argument("--out", type=Path, help="CSV to write (default: standard output)")
    leaks.add_argument("--jobs", type=int, default=2, help="worker processes (default: %(default)s)")
    leaks.set_defaults(handler=_leaks)

    stats = commands.add_parser("stats", help="print the report of a built corpus")
    stats.add_argument("path", type=Path, help="corpus folder (holds manifest.csv)")
    stats.set_defaults(handler=_stats)


def _build(args: argparse.Namespace) -> int:
    with needs_extra("train", "swishnet corpus build"):
        from models.corpus import build
        from models.corpus_config import DEFAULT_SOURCES_FILE, load_sources
        from models.debian_sources import DebianSourceError

        sources = load_sources(args.sources_file or DEFAULT_SOURCES_FILE)
    try:
        build(sources, args.out, args.sources, args.cache or args.out.parent / "debs", _jobs(args.jobs))
    except DebianSourceError as error:  # CorpusError is a CommandError already
        raise CommandError(str(error)) from None
    print(f"corpus written to {args.out}; report: {args.out / 'CORPUS.md'}")
    return 0


def _import_musan(args: argparse.Namespace) -> int:
    from models.corpus import import_musan

    import_musan(args.path, args.out, _jobs(args.jobs))
    print(f"corpus written to {args.out}; report: {args.out / 'CORPUS.md'}")
    return 0


def _leaks(args: argparse.Namespace) -> int:
    import csv
    import sys

    from models.leaks import Leak, find_leaks

    leaks = find_leaks(args.path, _jobs(args.jobs))
    handle = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.DictWriter(handle, fieldnames=list(Leak.COLUMNS))
        writer.writeheader()
        writer.writerows(leak.to_row() for leak in leaks)
    finally:
        if args.out:
            handle.close()
    print(f"{len(leaks)} val/test clips share audio with train clips", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from models.corpus import read_csv
    from models.corpus_report import render_report

    manifest, dropped = args.path / "manifest.csv", args.path / "dropped.csv"
    if not manifest.is_file():
        raise CommandError(f"{manifest} not found: build the corpus first ('swishnet corpus build --out DIR')")
    print(render_report(read_csv(manifest), read_csv(dropped) if dropped.is_file() else []))
    return 0


def _jobs(jobs: int) -> int:
    if jobs < 1:
        raise CommandError(f"--jobs must be at least 1, got {jobs}")
    return jobs
