"""Tiny ONNX test models with their cards, built with onnx.helper (no training).

The main one is a nearest-centroid classifier on the time-averaged MFCCs: it
reacts to what make_signal generates, deterministically, so stream tests check
the engine and not a trained model. Because its decision boundaries are the
bisectors between class centroids, a window that is half one class and half
another sits on the boundary: the label switches when the window's centre
crosses the change, which is what the engine's time stamps assume.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.features import FEATURE_CONTRACT, N_MFCC, mfcc
from tests.conftest import make_signal

LABELS = ["speech", "music", "noise"]
OPSET = 17
IR_VERSION = 8  # what onnxruntime reads; onnx.helper defaults to its newest


@functools.lru_cache(maxsize=1)
def centroid_weights() -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a linear layer whose argmax is the nearest class centroid."""
    means = np.stack([mfcc(make_signal(label, seconds=2.0, seed=11)).mean(axis=0) for label in LABELS])
    scale = means.std(axis=0) + 1.0  # per-coefficient, the same for every class
    centroids = means / scale
    temperature = 0.3
    weights = 2 * centroids.T / scale[:, None] * temperature
    bias = -(centroids**2).sum(axis=1) * temperature
    return weights.astype(np.float32), bias.astype(np.float32)


def centroid_graph() -> onnx.ModelProto:
    """mfcc (batch, 20, frames) -> mean over frames -> linear -> softmax -> probs."""
    weights, bias = centroid_weights()
    nodes = [
        helper.make_node("ReduceMean", ["mfcc"], ["pooled"], axes=[2], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "centroid",
        [helper.make_tensor_value_info("mfcc", TensorProto.FLOAT, ["batch", N_MFCC, "frames"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def make_card(onnx_bytes: bytes, **overrides: object) -> dict:
    card = {
        "name": "centroid-test",
        "architecture": "nearest-centroid (test only)",
        "labels": LABELS,
        "features": dict(FEATURE_CONTRACT),
        "input": {"name": "mfcc", "shape": ["batch", N_MFCC, "frames"]},
        "output": {"name": "probs", "shape": ["batch", len(LABELS)]},
        "window_s": 1.0,
        "parameters": N_MFCC * len(LABELS) + len(LABELS),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "opset": OPSET,
        "training": {},
        "metrics": {},
        "licence": "MIT",
    }
    card.update(overrides)
    return card


def write_model(directory: Path, name: str = "tiny", model: onnx.ModelProto | None = None,
                **card_overrides: object) -> Path:
    """Write ``name.onnx`` and its card ``name.json`` into ``directory``; return the .onnx path."""
    onnx_bytes = (model or centroid_graph()).SerializeToString()
    path = directory / f"{name}.onnx"
    path.write_bytes(onnx_bytes)
    path.with_suffix(".json").write_text(json.dumps(make_card(onnx_bytes, **card_overrides)))
    return path
