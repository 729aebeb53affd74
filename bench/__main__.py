"""python -m bench: run the benchmark suite, print its tables and write them as JSON.

Sections (all by default, in this order): features (streaming MFCC against
recomputing the window), model (ms per window), engine (CPU per hop of one
stream for windows of 0.5 to 10 s, JSON, memory per stream, batching), files
(audio seconds per CPU second of classify_file beside Silero VAD, window 10 s
against 1 s), service (concurrent WebSocket streams against W server workers
from C client processes: latency, CPU, memory); and only when named, batch (swishnet batch on Ray
against swishnet classify; needs the batch extra) and soak (swishnet serve with its defaults under a
1-hour stream, churn, uploads, floods and bad input, then SIGTERM; RSS, threads and files before and
after; bench/soak.py). Models default to the
bundled ones; missing ones are skipped with a note. ``--quick`` runs every section in a few seconds (for
the tests: its figures mean little). A section that fails is recorded with
its error and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from bench import batch, engine, features, files, load, model, soak
from bench.common import Options, bundled_model_paths, load_models, machine_info
from service.inference import Classifier

SECTIONS = ("features", "model", "engine", "files", "service")
OPT_IN = ("batch", "soak")  # run only when named: batch needs the batch extra (Ray); soak takes about 10 minutes
QUICK = Options(quick=True, repeats=3, file_repeats=1, file_s=20.0, streams=(1, 4), step_s=1.5, workers=1,
                client_processes=1)
RESULTS = Path(__file__).parent / "results"
SCHEMA = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*",
                        help=f"sections to run (default: all but {', '.join(OPT_IN)}): {', '.join(SECTIONS + OPT_IN)}")
    parser.add_argument("--quick", action="store_true", help="tiny configuration, a few seconds in all")
    parser.add_argument("--model", type=Path, action="append", metavar="PATH",
                        help="an ONNX model with its .json card (repeatable; default: the bundled models); "
                             "the service section serves the first")
    parser.add_argument("--tiny", action="store_true",
                        help="measure the tiny test model of tests/tiny_model.py (needs onnx): the engine, not a network")
    parser.add_argument("--repeats", type=int, help="measurements behind each features and model figure (default 5)")
    parser.add_argument("--file-repeats", type=int, help="passes over the generated file (default 3)")
    parser.add_argument("--file-minutes", type=float, help="length of the generated file (default 60)")
    parser.add_argument("--streams", help="load steps, comma-separated (default 1,10,50,100,200,400,600,800,1000,1200)")
    parser.add_argument("--workers", type=int, help="server processes for the service section (default 2)")
    parser.add_argument("--client-processes", type=int,
                        help="client processes for the service section (default: one per 250 streams, at most 4)")
    parser.add_argument("--step-seconds", type=float, help="seconds each load step lasts (default 12)")
    parser.add_argument("--no-deflate", action="store_true",
                        help="load streams without permessage-deflate (default: offered, as browsers do)")
    parser.add_argument("--out", type=Path,
                        help="JSON output (default bench/results/latest.json; with --quick, quick.json)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS + OPT_IN]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS + OPT_IN)}")
    return args


def build_options(args: argparse.Namespace, models: tuple[Path, ...]) -> Options:
    base = QUICK if args.quick else Options()
    overrides = {
        "repeats": args.repeats,
        "file_repeats": args.file_repeats,
        "file_s": None if args.file_minutes is None else 60 * args.file_minutes,
        "streams": None if args.streams is None else tuple(int(n) for n in args.streams.split(",")),
        "step_s": args.step_seconds,
        "workers": args.workers,
        "client_processes": args.client_processes,
        "deflate": False if args.no_deflate else None,
    }
    return dataclasses.replace(base, models=models, **{k: v for k, v in overrides.items() if v is not None})


def _section(name: str, work: Callable[[], dict], report: dict) -> None:
    """Run one section into the report, recording (not hiding) a failure."""
    print(f"running {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        report[name] = work()
    except Exception as error:  # noqa: BLE001  (recorded, printed and turned into exit status 1)
        traceback.print_exc()
        report[name] = {"error": f"{type(error).__name__}: {error}"}
    report["seconds"][name] = round(time.perf_counter() - started, 1)


def _service(options: Options, classifiers: dict[str, Classifier], report: dict) -> dict:
    served = next(iter(classifiers.values())).path if classifiers else None
    result, report["memory"] = load.run(options, served)
    return result


def run_suite(options: Options, sections: Sequence[str]) -> dict:
    notes: list[str] = []
    report: dict = {"schema": SCHEMA, "machine": machine_info(), "options": _options_dict(options),
                    "notes": notes, "seconds": {}}
    classifiers = load_models(options.models, notes)
    work = {
        "features": lambda: features.run(options),
        "model": lambda: model.run(options, classifiers),
        "engine": lambda: engine.run(options, classifiers),
        "files": lambda: files.run(options, classifiers, notes),
        "service": lambda: _service(options, classifiers, report),
        "batch": lambda: batch.run(options, classifiers, notes),
        "soak": lambda: soak.run(options, options.models[0] if options.models else None),
    }
    for name in sections:
        _section(name, work[name], report)
    return report


def _options_dict(options: Options) -> dict:
    values = dataclasses.asdict(options)
    values["models"] = [str(path) for path in options.models]
    return values


RENDERERS: dict[str, Callable[[dict], str]] = {
    "features": features.render, "model": model.render, "engine": engine.render, "files": files.render,
    "service": load.render, "memory": load.render_memory, "batch": batch.render, "soak": soak.render,
}


def render(report: dict) -> str:
    machine = report["machine"]
    parts = [f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
             f"onnxruntime {machine['onnxruntime']}, load average {machine['load_average_1min']}, {machine['date']}"]
    for name, render_section in RENDERERS.items():
        if name in report:
            result, took = report[name], report["seconds"].get(name)
            body = str(result) if "skipped" in result or "error" in result else render_section(result)
            parts.append(f"== {name}{'' if took is None else f' ({took:g} s)'} ==\n{body}")
    parts += [f"note: {note}" for note in report["notes"]]
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sections = [name for name in SECTIONS + OPT_IN if name in args.sections] or SECTIONS
    with tempfile.TemporaryDirectory(prefix="swishnet-bench-model-") as folder:
        if args.tiny:
            from tests.tiny_model import write_model

            models: tuple[Path, ...] = (write_model(Path(folder)),)
        else:
            models = tuple(args.model or bundled_model_paths())
        report = run_suite(build_options(args, models), sections)
    out = args.out or RESULTS / ("quick.json" if args.quick else "latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"\nwritten to {out}")
    return 1 if any("error" in report.get(name, {}) for name in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
