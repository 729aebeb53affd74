"""Checkpoint to a single self-contained ONNX file with the runtime's contract.

The contract (the runtime relies on it exactly; export.contract writes it
into the card): one input ``mfcc``, float32 (batch, 20, frames) of raw
service.features MFCCs transposed to channels first; one output
``frame_logits``, float32 (batch, frames, 3), the causal logits of every frame
(SwishNet.frame_logits) in the card's label order, whose frame t depends on
input frames t - receptive_field + 1 .. t. The time pooling and softmax are
left to the runtime, which pools each window's non-silent frames. Batch and
frames are dynamic. The MFCC normalisation is inside the graph (a buffer of
the model).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from models.swishnet import SwishNet
from service.inference import INPUT_NAME, OUTPUT_NAME

OPSET = 18


class FrameLogitModel(nn.Module):
    """SwishNet's frame logits, the exported graph's output."""

    def __init__(self, model: SwishNet):
        super().__init__()
        self.model = model

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.model.frame_logits(mfcc)


def export_onnx(model: SwishNet, path: Path, opset: int = OPSET) -> Path:
    """Write ``model`` to ``path`` as one .onnx file (weights inside, no external data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for chatty in ("onnxscript", "onnx_ir"):  # per-pass INFO lines would drown the command's own log
        logging.getLogger(chatty).setLevel(logging.WARNING)
    wrapper = FrameLogitModel(model.eval()).eval()
    example = torch.zeros(2, model.config.n_mfcc, 100)  # batch 2: a batch of 1 would be specialised
    dims = {INPUT_NAME: {0: torch.export.Dim("batch"), 2: torch.export.Dim("frames", min=1)}}
    torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      opset_version=opset, dynamo=True, external_data=False, dynamic_shapes=dims, verbose=False)
    _strip_trace_metadata(path)
    return path


def _strip_trace_metadata(path: Path) -> None:
    """Drop the exporter's per-node stack traces: they hold local paths, would make the
    sha256 depend on where the export ran, and are most of the file's bytes."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path), save_as_external_data=False)
