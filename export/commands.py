"""The ``export`` subcommand. Registration builds the parser only; torch is imported in the handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.cli import needs_extra


def register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint to ONNX with its model card "
                                                  "(needs the train extra)")
    parser.add_argument("checkpoint", type=Path, help="best.pt (or last.pt) from 'swishnet train'")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx to write, e.g. models/swishnet-slim.onnx")
    parser.add_argument("--quantize", choices=["dynamic", "static"],
                        help="ship int8 instead, if its clean accuracy on the validation split stays within 0.5 "
                             "points of float (needs --corpus)")
    parser.add_argument("--corpus", type=Path, help="evaluate on this corpus and put the metrics in the card")
    parser.add_argument("--split", choices=["train", "val", "test"], default="test",
                        help="corpus split the card's metrics come from (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for window choice, segmentation sequences and calibration (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="processes featurising clips (0: in this process)")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    with needs_extra("train", "swishnet export"):
        from export.ship import ship

    card = ship(args.checkpoint, args.out, args.quantize, args.corpus, args.split, args.seed, args.workers)
    print(json.dumps({"onnx": str(args.out), "sha256": card["onnx_sha256"], "parity": card["parity_max_abs_diff"],
                      "quantization": card["quantization"]}))
    return 0
