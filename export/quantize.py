"""int8 quantisation with onnxruntime, and the calibration windows static quantisation needs.

A network this small is dominated by per-op overhead, not arithmetic, so int8
rarely makes it faster; ``swishnet export`` ships an int8 model only if its
clean clip accuracy stays within MAX_ACCURACY_DROP points of the float model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from models.dataset import SamplingConfig, plan_windows, read_manifest, read_segment, select
from service.features import SAMPLE_RATE, mfcc, n_frames
from service.inference import INPUT_NAME

MODES = ("dynamic", "static")
MAX_ACCURACY_DROP = 0.5  # percentage points
CALIBRATION_FRAMES = n_frames(SAMPLE_RATE)  # 1 s windows
QUANTIZED_OPS = ["Conv"]  # the weights; the gates stay float


def calibration_windows(corpus: Path, n_per_class: int = 64, seed: int = 0) -> np.ndarray:
    """Clean 1 s MFCC windows (n, N_MFCC, frames) from the training split, balanced by class."""
    clips = select(read_manifest(corpus), "train")
    plan = plan_windows(clips, n_per_class, np.random.default_rng([seed, 11]), SamplingConfig())
    windows = []
    for clip, start, length in zip(plan.clip, plan.start, plan.length):
        features = mfcc(read_segment(clips[clip].path, int(start), int(length)))
        if features.shape[0] >= CALIBRATION_FRAMES:
            windows.append(features[:CALIBRATION_FRAMES].T)
    if not windows:
        raise ValueError(f"no training clip in {corpus} is long enough (1 s) to calibrate with")
    return np.stack(windows).astype(np.float32)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over an array of windows."""

    def __init__(self, windows: np.ndarray):
        self.batches = iter([{INPUT_NAME: windows[i : i + 1]} for i in range(len(windows))])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def quantize(float_path: Path, out_path: Path, mode: str, calibration: np.ndarray | None = None) -> Path:
    """Write an int8 version of ``float_path``: dynamic (weights only) or static (QDQ, calibrated)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise ValueError(f"unknown quantisation {mode!r}: expected one of {MODES}")
    if mode == "dynamic":
        quantize_dynamic(str(float_path), str(out_path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=QUANTIZED_OPS)
        return Path(out_path)
    if calibration is None:
        raise ValueError("static quantisation needs calibration windows")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))
        quantize_static(str(prepared), str(out_path), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OPS, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return Path(out_path)
