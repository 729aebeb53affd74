"""The ``train`` and ``evaluate`` subcommands. Registration builds argparse parsers only;
torch and the training code are imported inside the handlers (see service/cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.corpus_config import DEFAULT_OUT as DEFAULT_CORPUS
from models.options import TrainOptions
from service.cli import needs_extra


def register_train(subparsers: argparse._SubParsersAction) -> None:
    d = TrainOptions  # the dataclass's field defaults are the command's defaults
    parser = subparsers.add_parser("train", help="train SwishNet on a corpus (needs the train extra)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory (default: %(default)s)")
    parser.add_argument("--arch", choices=["slim", "wide"], default=d.arch, help="network width (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="run directory for last.pt and best.pt")
    parser.add_argument("--dilations", type=_dilations, help="the five stack dilations, e.g. 1,3,6,12,24 "
                        "(default: the paper's strides as dilations, 3,2,2,2,2)")
    parser.add_argument("--epochs", type=int, default=d.epochs,
                        help="epochs; cosine cycles end at 10, 30, 70, 150, 310 (default: %(default)s)")
    parser.add_argument("--max-minutes", type=float,
                        help="wall-clock budget for the whole command, data preparation included")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed for sampling, augmentation, crops and weights")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--windows-per-class", type=int, default=d.windows_per_class,
                        help="windows per class in each data variant (default: %(default)s)")
    parser.add_argument("--variants", type=int, default=d.variants,
                        help="augmented data variants, cycled over epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="windows per optimiser step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=d.learning_rate, help="peak learning rate of each cosine cycle")
    parser.add_argument("--workers", type=int, default=d.workers, help="processes preparing data (0: in this process)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="torch threads; 2 helps only on an otherwise idle machine (default: %(default)s)")
    parser.add_argument("--cache", type=Path, help="feature cache directory (default: 'features' beside the corpus)")
    parser.add_argument("--teacher", type=Path, action="append", default=[], metavar="CHECKPOINT",
                        help="distil from this trained checkpoint (repeat for an ensemble: their probabilities "
                        "are averaged); the loss is 90 %% soft targets, 10 %% hard labels, as in the paper")
    parser.add_argument("--package-floor", type=float, default=d.package_floor,
                        help="selection penalises a model whose worst validation package scores below this "
                        "percentage (default: %(default)s)")
    parser.set_defaults(handler=_train)


def _dilations(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _train(args: argparse.Namespace) -> int:
    with needs_extra("train", "swishnet train"):
        from models.train import train

    options = TrainOptions(
        corpus=args.corpus, out=args.out, arch=args.arch, dilations=args.dilations, epochs=args.epochs,
        max_minutes=args.max_minutes,
        seed=args.seed, resume=args.resume, batch_size=args.batch_size, learning_rate=args.lr,
        windows_per_class=args.windows_per_class, variants=args.variants,
        workers=args.workers, threads=args.threads, cache=args.cache,
        teachers=tuple(str(path) for path in args.teacher), package_floor=args.package_floor,
    )
    train(options)
    return 0


def register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a checkpoint or ONNX model and write its card "
                                                    "(needs the train extra)")
    parser.add_argument("model", type=Path, help="a .pt checkpoint from 'swishnet train' or an exported .onnx")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory (default: %(default)s)")
    parser.add_argument("--split", choices=["train", "val", "test"], default="test",
                        help="corpus split to score (default: %(default)s, the held-out packages)")
    parser.add_argument("--card", type=Path, required=True, help="JSON model card to write (markdown beside it)")
    parser.add_argument("--seed", type=int, default=0, help="seed for window choice and segmentation sequences")
    parser.add_argument("--workers", type=int, default=2, help="processes featurising clips (0: in this process)")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    with needs_extra("train", "swishnet evaluate"):
        from models.card import card_for_model, write_card
        from models.evaluate import evaluate

    card = card_for_model(args.model)
    card["metrics"] = evaluate(args.model, args.corpus, args.split, args.seed, args.workers)
    write_card(card, args.card)
    summary = {key: value["clean"]["accuracy"] for key, value in card["metrics"]["clip_classification"].items()}
    print(json.dumps({"card": str(args.card), "clean_accuracy": summary,
                      "segmentation_engine": card["metrics"]["segmentation"]["accuracy_engine"]}))
    return 0
