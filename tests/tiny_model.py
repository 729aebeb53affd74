"""Tiny ONNX test models with their cards, built with onnx.helper (no training).

The main one is a nearest-centroid classifier: a linear layer on each MFCC
frame gives frame logits (receptive field 1), and the mean of a window's
frame logits is the linear layer on its mean MFCCs. It reacts to what
make_signal generates, deterministically, so stream tests check the engine
and not a trained model. Because its decision boundaries are the bisectors
between class centroids, a window that is half one class and half another
sits on the boundary: the label switches when the window's centre crosses
the change, which is what the engine's time stamps assume.

``causal_graph`` puts a causal dilated convolution in front (receptive field
``CAUSAL_RECEPTIVE_FIELD``), so a frame's logits depend on its left context;
``pooled_graph`` is a model in the contract before frame logits (time-pooled
softmax ``probs``), laid out as the old exports were, for the conversion.
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


CAUSAL_KERNEL, CAUSAL_DILATION = 3, 4
CAUSAL_RECEPTIVE_FIELD = 1 + (CAUSAL_KERNEL - 1) * CAUSAL_DILATION
INPUT = helper.make_tensor_value_info("mfcc", TensorProto.FLOAT, ["batch", N_MFCC, "frames"])
FRAME_LOGITS = helper.make_tensor_value_info("frame_logits", TensorProto.FLOAT, ["batch", "frames", len(LABELS)])


def _model(nodes: list, output: onnx.ValueInfoProto, initializers: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [INPUT], [output], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _linear_per_frame(source: str, output: str) -> tuple[list, list]:
    """(batch, 20, frames) -> transpose -> per-frame linear layer of the centroids -> (batch, frames, 3)."""
    weights, bias = centroid_weights()
    nodes = [
        helper.make_node("Transpose", [source], ["time_major"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["time_major", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "b"], [output]),
    ]
    return nodes, [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")]


def centroid_graph() -> onnx.ModelProto:
    """mfcc (batch, 20, frames) -> per-frame linear -> frame_logits (batch, frames, 3); receptive field 1."""
    nodes, initializers = _linear_per_frame("mfcc", "frame_logits")
    return _model(nodes, FRAME_LOGITS, initializers, "centroid")


def causal_graph() -> onnx.ModelProto:
    """A causal dilated depthwise convolution (left padding only), tanh, then the centroid layer: frame t
    depends on frames t - CAUSAL_RECEPTIVE_FIELD + 1 .. t."""
    rng = np.random.default_rng(5)
    kernel = (0.6 + 0.4 * rng.standard_normal((N_MFCC, 1, CAUSAL_KERNEL))).astype(np.float32)
    pad = (CAUSAL_KERNEL - 1) * CAUSAL_DILATION
    nodes = [
        helper.make_node("Pad", ["mfcc", "pads"], ["padded"]),
        helper.make_node("Conv", ["padded", "K"], ["mixed"], group=N_MFCC, dilations=[CAUSAL_DILATION],
                         kernel_shape=[CAUSAL_KERNEL]),
        helper.make_node("Div", ["mixed", "scale"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["squashed"]),
        helper.make_node("Mul", ["squashed", "scale"], ["features"]),
    ]
    linear, initializers = _linear_per_frame("features", "frame_logits")
    initializers += [numpy_helper.from_array(np.array([0, 0, pad, 0, 0, 0], dtype=np.int64), "pads"),
                     numpy_helper.from_array(kernel, "K"),
                     numpy_helper.from_array(np.full((1, N_MFCC, 1), 200.0, dtype=np.float32), "scale")]
    return _model(nodes + linear, FRAME_LOGITS, initializers, "causal")


def pooled_graph() -> onnx.ModelProto:
    """The centroid model as exports were before frame logits: ... -> ReduceMean over frames -> Softmax ->
    probs (batch, 3)."""
    nodes, initializers = _linear_per_frame("mfcc", "logits")
    nodes += [helper.make_node("ReduceMean", ["logits"], ["mean"], axes=[1], keepdims=0),  # opset 17: an attribute
              helper.make_node("Softmax", ["mean"], ["probs"], axis=-1)]
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(LABELS)])
    return _model(nodes, probs, initializers, "pooled")


def make_card(onnx_bytes: bytes, **overrides: object) -> dict:
    card = {
        "name": "centroid-test",
        "architecture": "nearest-centroid (test only)",
        "labels": LABELS,
        "features": dict(FEATURE_CONTRACT),
        "input": "mfcc",
        "input_shape": ["batch", N_MFCC, "frames"],
        "output": "frame_logits",
        "output_shape": ["batch", "frames", len(LABELS)],
        "receptive_field_frames": 1,
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
