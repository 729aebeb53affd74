"""PyTorch against onnxruntime: the exported graph must give the checkpoint's frame logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.swishnet import SwishNet
from service.cli import CommandError
from service.inference import INPUT_NAME, OUTPUT_NAME

PARITY_ATOL = 1e-4  # on logits, whose scale is a few units
BATCH_SIZES = (1, 3)
FRAME_COUNTS = (1, 8, 48, 98, 198, 998)  # 8 frames is 0.1 s of audio, 998 is 10 s


class ParityError(CommandError):
    """The exported model disagrees with the checkpoint."""


def max_difference(model: SwishNet, onnx_path: Path, seed: int = 0) -> float:
    """Largest absolute difference in frame logits over BATCH_SIZES x FRAME_COUNTS random MFCC inputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    mean, std = model.feature_mean.numpy()[:, None], model.feature_std.numpy()[:, None]
    worst = 0.0
    for batch in BATCH_SIZES:
        for frames in FRAME_COUNTS:
            mfcc = (mean + std * rng.standard_normal((batch, mean.shape[0], frames))).astype(np.float32)
            with torch.no_grad():
                expected = model.frame_logits(torch.from_numpy(mfcc)).numpy()
            actual = session.run([OUTPUT_NAME], {INPUT_NAME: mfcc})[0]
            worst = max(worst, float(np.max(np.abs(actual - expected))))
    return worst


def check_parity(model: SwishNet, onnx_path: Path, atol: float = PARITY_ATOL) -> float:
    """The largest difference; raises ParityError above ``atol``."""
    worst = max_difference(model, onnx_path)
    if worst > atol:
        raise ParityError(f"{onnx_path} differs from the checkpoint by {worst:.2e} (limit {atol:g}); not shipping it")
    return worst
