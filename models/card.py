"""Model cards: the JSON written beside every model, and its readable markdown twin.

The runtime reads the JSON (``features`` must equal service.features.
FEATURE_CONTRACT, ``labels`` gives the order of ``probs``); people read the
markdown. ``swishnet export`` writes the ONNX-specific keys, ``swishnet
evaluate`` the ``metrics``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli import CommandError
from service.features import FEATURE_CONTRACT
from service.inference import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    from models.swishnet import SwishNetConfig

CARD_KEYS = ("name", "architecture", "labels", "features", "input", "output", "window_s", "parameters",
             "onnx_sha256", "opset", "training", "metrics", "licence")
LICENCE = ("Code: MIT. Weights: trained on audio from Debian main packages and Flight of the Amazon Queen "
           "(freeware); every source's licence is in the corpus manifest (training.manifest_sha256), hours per "
           "licence in training.corpus.licence_hours.")
WINDOW_DECISION = (
    "Every frame is scored once, causally, with the frames before it as left context (in training, "
    "windows carry up to 1.2 s of context, more than the receptive field). A window's decision is the "
    "softmax of the mean logits of its non-silent frames; a frame is silent when the 0.1 s of audio "
    "around it is below -50 dBFS RMS (the runtime's default silence_threshold_db and hop), and a window "
    "whose frames are all silent averages all of them. At run time the hop is labelled silence when the "
    "window's middle frame is silent, whatever the network says.")
PAPER = {  # SWISHNET.md: published clip accuracy, overall / speech-vs-non-speech, on MUSAN
    "slim": {"0.5s": (97.64, 99.24), "1s": (98.20, 99.60), "2s": (98.41, 99.76), "segmentation": 93.26},
    "wide": {"0.5s": (98.05, 99.45), "1s": (98.54, 99.71), "2s": (98.92, 99.84), "segmentation": 94.11},
}


def base_card(name: str, config: "SwishNetConfig", parameters: int, training: dict | None) -> dict:
    """Every card key that does not depend on an ONNX file or an evaluation."""
    return {
        "name": name,
        "architecture": config.arch,
        "labels": list(config.labels),
        "features": dict(FEATURE_CONTRACT),
        "input": INPUT_NAME,
        "input_shape": ["batch", FEATURE_CONTRACT["n_mfcc"], "frames"],
        "input_description": "raw service.features.mfcc() output, transposed to (n_mfcc, frames); float32",
        "output": OUTPUT_NAME,
        "output_description": "softmax of the time-pooled logits, in the order of 'labels'; float32 (batch, 3)",
        "window_s": (training or {}).get("window_s", [0.5, 2.0]),
        "receptive_field_frames": config.receptive_field,
        "window_decision": WINDOW_DECISION,
        "stack_dilations": list(config.stack_dilations),
        "parameters": int(parameters),
        "training": training,
        "metrics": {},
        "licence": LICENCE,
    }


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def onnx_facts(path: Path) -> dict:
    """The card keys that describe an ONNX file: its sha256 and default-domain opset."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"onnx_sha256": sha256_file(path), "opset": int(opset)}


def card_for_model(path: Path) -> dict:
    """The card of a checkpoint (built from it) or of an ONNX file (the JSON that export wrote beside it)."""
    path = Path(path)
    if path.suffix == ".onnx":
        beside = path.with_suffix(".json")
        if beside.is_file():
            return {**json.loads(beside.read_text()), **onnx_facts(path)}
        raise CommandError(f"no card {beside} beside {path}: evaluate the checkpoint, or export it again")
    from models.swishnet import load_checkpoint, parameter_count

    model, checkpoint = load_checkpoint(path)
    return base_card(f"swishnet-{model.config.arch}", model.config, parameter_count(model), checkpoint.get("training"))


def write_card(card: dict, path: Path) -> None:
    """Write the JSON card and, beside it with the suffix .md, its markdown."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2) + "\n")
    path.with_suffix(".md").write_text(card_markdown(card))


def _row(cells: list) -> str:
    return "| " + " | ".join("-" if cell is None else str(cell) for cell in cells) + " |"


def _accuracy_table(metrics: dict, architecture: str) -> list[str]:
    lines = [_row(["window", "clean acc / SNS", "telephone acc / SNS", "mp3 acc / SNS", "paper (MUSAN)"]),
             _row(["---"] * 5)]
    for length, conditions in metrics["clip_classification"].items():
        cells = [f"{conditions[c]['accuracy']} / {conditions[c]['speech_vs_nonspeech_accuracy']}" for c in conditions]
        paper = PAPER.get(architecture, {}).get(length)
        lines.append(_row([length, *cells, f"{paper[0]} / {paper[1]}" if paper else None]))
    return lines


def _class_table(report: dict) -> list[str]:
    lines = [_row(["class", "precision", "recall", "F1", "windows"]), _row(["---"] * 5)]
    for label, scores in report["per_class"].items():
        lines.append(_row([label, scores["precision"], scores["recall"], scores["f1"], scores["support"]]))
    labels = report["confusion"]["rows_true_columns_predicted"]
    lines += ["", "Confusion (rows: true, columns: predicted):", "", _row(["", *labels]),
              _row(["---"] * (len(labels) + 1))]
    lines += [_row([label, *counts]) for label, counts in zip(labels, report["confusion"]["counts"])]
    return lines


def _metrics_section(card: dict) -> list[str]:
    metrics = card.get("metrics") or {}
    if not metrics:
        return ["No evaluation yet: run `swishnet evaluate MODEL --corpus DIR --card THIS.json`."]
    lines = [f"Split `{metrics['split']}`, seed {metrics['seed']}. {metrics['method']}", "",
             "Clip accuracy (percent), overall / speech-vs-non-speech:", ""]
    lines += _accuracy_table(metrics, card.get("architecture", ""))
    one_second = metrics["clip_classification"]["1s"]["clean"]
    lines += ["", "Per class, 1 s windows, clean:", ""] + _class_table(one_second)
    segmentation = metrics.get("segmentation")
    if segmentation:
        paper = PAPER.get(card.get("architecture", ""), {}).get("segmentation")
        lines += ["", f"Segmentation (frame accuracy, silence not scored): streaming engine "
                  f"{segmentation['accuracy_engine']} %; its raw decisions {segmentation['accuracy_raw']} %, "
                  f"median-filtered {segmentation['accuracy_median']} % (paper: {paper} %). {segmentation['method']}"]
    lines += ["", "Accuracy per source package, 1 s windows, clean:", ""]
    lines += [f"- {package}: {accuracy}" for package, accuracy in one_second.get("accuracy_per_package", {}).items()]
    return lines


def _corpus_table(corpus: dict) -> list[str]:
    """Hours, real hours, band-music hours and package counts per split and class (corpus v2 summaries)."""
    rows = [(split, label, figures) for split, classes in corpus.items() if isinstance(classes, dict)
            for label, figures in classes.items() if isinstance(figures, dict) and "real_hours" in figures]
    if not rows:
        return []
    lines = [_row(["split", "class", "hours", "real hours", "band hours", "packages"]), _row(["---"] * 6)]
    lines += [_row([split, label, f["hours"], f["real_hours"], f.get("band_hours", 0), len(f["packages"])])
              for split, label, f in rows]
    return ["Corpus:", ""] + lines + [""]


def card_markdown(card: dict) -> str:
    """A readable rendering of the card: identity, metrics, training."""
    training = card.get("training") or {}
    lines = [f"# {card['name']}", "",
             f"SwishNet-{card['architecture']}, {card['parameters']:,} parameters, labels {', '.join(card['labels'])}; "
             f"input `{card['input']}` (batch, 20, frames), output `{card['output']}` (batch, 3).", ""]
    if card.get("onnx_sha256"):
        lines += [f"ONNX opset {card.get('opset')}, sha256 `{card['onnx_sha256']}`.", ""]
    lines += ["## Metrics", ""] + _metrics_section(card) + [""]
    if card.get("window_decision"):
        lines += ["## Window decision and silence", "", card["window_decision"], ""]
    lines += ["## Training", ""]
    lines += _corpus_table(training.get("corpus") or {})
    if training:
        lines += [f"- corpus manifest sha256 `{training.get('manifest_sha256')}`",
                  f"- epochs {training.get('epochs')} (best {training.get('best_epoch')}), "
                  f"seed {training.get('seed')}, {training.get('train_minutes')} min",
                  f"- validation at best epoch: {training.get('validation')}",
                  f"- windows {training.get('window_s')} s"]
    lines += ["", "## Licence", "", card["licence"], ""]
    return "\n".join(lines)
