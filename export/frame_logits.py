"""Convert a model exported before frame logits to the runtime's contract, by ONNX graph surgery.

Older exports ended ``... -> ReduceMean over frames -> Softmax -> probs``.
The tensor before the ReduceMean is the network's causal frame logits; this
makes it the graph's only output, ``frame_logits`` (batch, frames, classes),
adding a Transpose when the graph held it as (batch, classes, frames), and
drops the pooling and the softmax. The converted model is checked against the
original on random MFCC windows of several lengths: the softmax of its mean
frame logits must equal the old ``probs`` within ``MAX_POOLED_DIFFERENCE``.

``python -m export.frame_logits MODEL.onnx ...`` rewrites each model and its
card (.json and .md: sha256, contract, the check's figure) in place. Models
exported from checkpoints by ``swishnet export`` have frame logits already.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.contract import contract_entries, fix_markdown
from service.features import N_MFCC
from service.inference import INPUT_NAME, OUTPUT_NAME

OLD_OUTPUT = "probs"
MAX_POOLED_DIFFERENCE = 1e-5
CHECK_FRAMES = (1, 8, 48, 98, 198, 998)  # 10 ms to 10 s
CHECK_BATCH = 3


class ConversionError(ValueError):
    """A graph that does not end the way old exports did."""


def _producer(graph: onnx.GraphProto, tensor: str) -> onnx.NodeProto:
    found = [node for node in graph.node if tensor in node.output]
    if len(found) != 1:
        raise ConversionError(f"no single node produces {tensor!r}")
    return found[0]


def _reduced_axes(graph: onnx.GraphProto, mean: onnx.NodeProto) -> list[int]:
    for attribute in mean.attribute:
        if attribute.name == "axes":
            return list(helper.get_attribute_value(attribute))
    if len(mean.input) < 2:
        raise ConversionError("the ReduceMean has no axes")
    for initializer in graph.initializer:
        if initializer.name == mean.input[1]:
            return numpy_helper.to_array(initializer).astype(int).tolist()
    constant = _producer(graph, mean.input[1])
    return numpy_helper.to_array(helper.get_attribute_value(constant.attribute[0])).astype(int).tolist()


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers and Constant nodes nothing reads any more."""
    while True:
        used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead = [node for node in graph.node if node.op_type == "Constant" and not set(node.output) & used]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    for initializer in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(initializer)


def to_frame_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an old-contract model whose output is the frame logits before its time pooling."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    if [out.name for out in graph.output] != [OLD_OUTPUT]:
        raise ConversionError(f"expected one output {OLD_OUTPUT!r}, found {[out.name for out in graph.output]}")
    softmax = _producer(graph, OLD_OUTPUT)
    mean = _producer(graph, softmax.input[0])
    if softmax.op_type != "Softmax" or mean.op_type != "ReduceMean":
        raise ConversionError(f"expected ReduceMean -> Softmax -> {OLD_OUTPUT}, found {mean.op_type} -> "
                              f"{softmax.op_type}")
    keepdims = next((helper.get_attribute_value(a) for a in mean.attribute if a.name == "keepdims"), 1)
    axes = _reduced_axes(graph, mean)
    if keepdims or axes not in ([1], [2], [-2], [-1]):
        raise ConversionError(f"expected a ReduceMean over the frames of (batch, frames, classes) or (batch, "
                              f"classes, frames) without keepdims; it reduces axes {axes}, keepdims {keepdims}")
    logits = mean.input[0]
    graph.node.remove(softmax)
    graph.node.remove(mean)
    if axes in ([2], [-1]):  # (batch, classes, frames): put frames first, as the contract says
        graph.node.append(helper.make_node("Transpose", [logits], [OUTPUT_NAME], perm=[0, 2, 1]))
    else:
        for node in graph.node:
            node.output[:] = [OUTPUT_NAME if name == logits else name for name in node.output]
            node.input[:] = [OUTPUT_NAME if name == logits else name for name in node.input]
    batch, _, frames = (dim.dim_param or dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim)
    classes = graph.output[0].type.tensor_type.shape.dim[1].dim_value or "classes"
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, [batch, frames, classes]))
    _drop_unused(graph)
    onnx.checker.check_model(converted)
    return converted


def check_windows(seed: int = 0) -> list[np.ndarray]:
    """Random MFCC-like windows (batch, N_MFCC, frames) for CHECK_FRAMES, on the scale of real MFCCs."""
    rng = np.random.default_rng(seed)
    mean = np.r_[-350.0, np.zeros(N_MFCC - 1)][:, None]
    std = np.r_[80.0, np.full(N_MFCC - 1, 20.0)][:, None]
    return [(mean + std * rng.standard_normal((CHECK_BATCH, N_MFCC, frames))).astype(np.float32)
            for frames in CHECK_FRAMES]


def pooled_difference(old: bytes, new: bytes) -> float:
    """Largest |softmax(mean frame logits) of ``new`` - probs of ``old``| over check_windows()."""
    import onnxruntime

    from service.inference import pooled_probs

    sessions = [onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]) for data in (old, new)]
    worst = 0.0
    for window in check_windows():
        (probs,) = sessions[0].run([OLD_OUTPUT], {INPUT_NAME: window})
        (logits,) = sessions[1].run([OUTPUT_NAME], {INPUT_NAME: window})
        worst = max(worst, float(np.max(np.abs(pooled_probs(logits) - probs))))
    return worst


def convert_file(path: Path) -> dict:
    """Convert ``path`` and its card in place (after the check); returns the card."""
    path = Path(path)
    old = path.read_bytes()
    new = to_frame_logits(onnx.load_from_string(old)).SerializeToString()
    difference = pooled_difference(old, new)
    if difference > MAX_POOLED_DIFFERENCE:
        raise ConversionError(f"{path}: the converted model's pooled output differs from the original by "
                              f"{difference:.2e} (limit {MAX_POOLED_DIFFERENCE:g}); left unchanged")
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    old_sha256 = card["onnx_sha256"]
    card.update(contract_entries(len(card["labels"]), card["receptive_field_frames"]))
    card["onnx_sha256"] = hashlib.sha256(new).hexdigest()
    card["frame_logits_conversion"] = {
        "from_onnx_sha256": hashlib.sha256(old).hexdigest(),
        "max_abs_diff_pooled_probs": float(f"{difference:.3g}"),
        "method": "export.frame_logits: the time-pooling ReduceMean and the Softmax removed by graph surgery; "
                  f"softmax(mean of frame_logits) checked against the old probs on {CHECK_BATCH} random MFCC "
                  f"windows each of {', '.join(map(str, CHECK_FRAMES))} frames",
    }
    path.write_bytes(new)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    markdown = path.with_suffix(".md")
    if markdown.is_file():
        markdown.write_text(fix_markdown(markdown.read_text(), card, old_sha256))
    return card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.frame_logits", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL.onnx", help="models to convert in place")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.models:
        try:
            card = convert_file(path)
        except (ConversionError, OSError, KeyError) as error:
            print(f"{path}: not converted: {error}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps({"onnx": str(path), "sha256": card["onnx_sha256"],
                          "max_abs_diff_pooled_probs": card["frame_logits_conversion"]["max_abs_diff_pooled_probs"]}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
