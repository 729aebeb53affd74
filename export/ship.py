"""``swishnet export``: checkpoint to a shipped ONNX model with its card.

Steps: export the float graph (frame logits), check it against PyTorch
(PARITY_ATOL), then, given a corpus, evaluate it on ``--split`` (and
optionally an int8 version, shipped only if its accuracy on the validation
split holds), and write NAME.onnx, NAME.json and NAME.md. The metrics are
computed with the runtime's own Classifier, so segmentation runs the
streaming engine exactly as the service does.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from export.contract import contract_entries, write_card_files
from export.onnx_export import export_onnx
from export.parity import check_parity
from export.quantize import MAX_ACCURACY_DROP, calibration_windows, quantize
from models.card import base_card, onnx_facts
from models.evaluate import OnnxScorer, clip_classification, mean_clean_accuracy, prepare_split, split_metrics
from models.swishnet import load_checkpoint, parameter_count
from service.cli import CommandError
from service.inference import Classifier

log = logging.getLogger(__name__)

GATE_SPLIT = "val"


def accuracy_gate(mode: str, float_accuracy: float, int8_accuracy: float) -> dict:
    """The card's ``quantization`` entry; raises if int8 loses more than MAX_ACCURACY_DROP points."""
    drop = round(float_accuracy - int8_accuracy, 2)
    if drop > MAX_ACCURACY_DROP:
        raise CommandError(f"{mode} int8 loses {drop} points of clean clip accuracy ({float_accuracy} -> "
                           f"{int8_accuracy}; the limit is {MAX_ACCURACY_DROP}); export without --quantize")
    return {"mode": mode, "float_accuracy": float_accuracy, "int8_accuracy": int8_accuracy, "drop_points": drop}


def _quantised(float_path: Path, mode: str, corpus: Path, seed: int, workers: int) -> tuple[Path, dict]:
    """The int8 model and its ``quantization`` entry, after the accuracy gate on the validation split
    (shipping is a decision: the test split only reports)."""
    calibration = calibration_windows(corpus, seed=seed) if mode == "static" else None
    int8_path = quantize(float_path, float_path.with_name("int8.onnx"), mode, calibration)
    data = prepare_split(corpus, GATE_SPLIT, workers)
    float_accuracy, int8_accuracy = (
        round(mean_clean_accuracy({"clip_classification": clip_classification(
            OnnxScorer(path), data.clips, data.prepared, seed)}), 2)
        for path in (float_path, int8_path)
    )
    return int8_path, {**accuracy_gate(mode, float_accuracy, int8_accuracy), "split": GATE_SPLIT}


def ship(checkpoint: Path, out: Path, quantize_mode: str | None = None, corpus: Path | None = None,
         split: str = "test", seed: int = 0, workers: int = 2) -> dict:
    """Export, check, evaluate and write the model and its card; returns the card."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise CommandError(f"--out must name a .onnx file, got {out}")
    if quantize_mode and corpus is None:
        raise CommandError("--quantize needs --corpus: int8 is shipped only after checking its accuracy")
    model, saved = load_checkpoint(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = prepare_split(corpus, split, workers) if corpus else None
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        shipped = export_onnx(model, Path(tmp) / "float.onnx")
        parity = check_parity(model, shipped)
        quantization = None
        if quantize_mode:
            shipped, quantization = _quantised(shipped, quantize_mode, corpus, seed, workers)
        os.replace(shipped, out)
    card = base_card(out.stem, model.config, parameter_count(model), saved.get("training"))
    card.update(contract_entries(len(model.config.labels), model.config.receptive_field))
    card.update(onnx_facts(out), parity_max_abs_diff=parity, quantization=quantization)
    write_card_files(card, out.with_suffix(".json"))  # the runtime's Classifier below loads the model by its card
    card["metrics"] = split_metrics(Classifier(out, intra_op_num_threads=2), data, seed) if data else {}
    write_card_files(card, out.with_suffix(".json"))
    log.info("wrote %s and its card %s", out, out.with_suffix(".json"))
    return card
