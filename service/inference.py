"""ONNX inference: the stateless classifier that every stream shares.

A model is an ONNX file with its JSON model card beside it (same name, ``.json``).
The card must carry the feature contract this runtime computes, the labels,
the network's receptive field and the file's sha256; all are checked at load
time, so a model trained on other features, or a card that belongs to another
export, is refused.

The ONNX contract (written by ``export/``, also in each card): input ``mfcc``,
float32 (batch, N_MFCC, frames) of raw service.features MFCCs; output
``frame_logits``, float32 (batch, frames, classes), the causal class logits of
every frame in the card's label order. Frame ``t``'s logits depend on input
frames ``t - receptive_field_frames + 1 .. t`` only, so a stream scores its
new frames with that many frames of left context, each frame once. A window's
probabilities are the softmax of the mean of its frames' logits
(``pooled_probs``): what the network's time pooling computed in training.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from service.events import SILENCE
from service.features import FEATURE_CONTRACT, FRAMES_PER_SECOND, N_MFCC
from service.stream import softmax

DEFAULT_MODEL = "swishnet-slim.onnx"
INPUT_NAME = "mfcc"
OUTPUT_NAME = "frame_logits"
REQUIRED_CARD_KEYS = ("labels", "features", "receptive_field_frames", "onnx_sha256")
MAX_RECEPTIVE_FIELD_FRAMES = 10 * FRAMES_PER_SECOND  # a sanity bound: SwishNet-slim sees 38 frames

_LOAD_ERRORS = (
    ort_errors.InvalidProtobuf,
    ort_errors.InvalidGraph,
    ort_errors.Fail,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
    ort_errors.InvalidArgument,
)


class ModelError(RuntimeError):
    """A model that cannot be used; the message says why and what to do."""


def default_model_path() -> Path:
    """The bundled default model, or ModelError when none is installed."""
    path = Path(str(files("models") / DEFAULT_MODEL))
    if not path.is_file():
        raise ModelError(
            f"no bundled model is installed ({path} is missing); "
            "pass the path of a model (--model PATH on the command line)"
        )
    return path


def card_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def load_card(model_path: Path) -> dict:
    """Read the model card beside ``model_path`` and check its required keys."""
    path = card_path(model_path)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model card {path} is missing: every model needs its JSON card beside it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"cannot read model card {path}: {error}") from None
    if not isinstance(card, dict):
        raise ModelError(f"model card {path} must hold a JSON object")
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise ModelError(f"model card {path} lacks required keys: {', '.join(missing)}")
    check_labels(card["labels"], path)
    check_features(card["features"], path)
    check_receptive_field(card["receptive_field_frames"], path)
    return card


def check_receptive_field(frames: object, path: Path) -> None:
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_RECEPTIVE_FIELD_FRAMES:
        raise ModelError(f"model card {path}: 'receptive_field_frames' must be an integer from 1 to "
                         f"{MAX_RECEPTIVE_FIELD_FRAMES} (input frames one output frame sees), got {frames!r}")


def check_labels(labels: object, path: Path) -> None:
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ModelError(f"model card {path}: 'labels' must be a non-empty list of distinct names, got {labels!r}")
    if SILENCE in labels:
        raise ModelError(f"model card {path}: the label {SILENCE!r} is reserved for the runtime's energy gate")


def check_features(features: object, path: Path) -> None:
    """Refuse a card whose feature settings differ from service.features."""
    if not isinstance(features, dict):
        raise ModelError(f"model card {path}: 'features' must be an object, got {features!r}")
    problems = [
        f"{key} (card {features[key]!r}, runtime {value!r})"
        if key in features
        else f"{key} (missing from card, runtime {value!r})"
        for key, value in FEATURE_CONTRACT.items()
        if features.get(key, object()) != value
    ]
    problems += [
        f"{key} (card {features[key]!r}, unknown to the runtime)" for key in features if key not in FEATURE_CONTRACT
    ]
    if problems:
        raise ModelError(
            f"model {path.stem} was trained on other features than this runtime computes; "
            f"mismatched keys: {'; '.join(problems)}"
        )


def check_sha256(model_path: Path, model_bytes: bytes, expected: object) -> None:
    actual = hashlib.sha256(model_bytes).hexdigest()
    if actual != expected:
        raise ModelError(
            f"model file {model_path} does not match its card: sha256 {actual} != card's {expected!r}; "
            "the card belongs to another export (re-export the model, or fix the card)"
        )


def session_options(intra_op_num_threads: int) -> ort.SessionOptions:
    """One thread per call by default: a server runs many streams, one thread each."""
    if intra_op_num_threads < 1:
        raise ValueError(f"intra_op_num_threads must be at least 1, got {intra_op_num_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def open_session(model_path: Path, model_bytes: bytes, intra_op_num_threads: int) -> ort.InferenceSession:
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=session_options(intra_op_num_threads), providers=["CPUExecutionProvider"]
        )
    except _LOAD_ERRORS as error:
        raise ModelError(f"cannot load {model_path}: not a valid ONNX model ({str(error).strip()[:200]})") from None
    inputs = {node.name: node for node in session.get_inputs()}
    outputs = {node.name for node in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        hint = (f"; a model exported before frame logits (output 'probs') can be converted with "
                f"'python -m export.frame_logits {model_path}'" if "probs" in outputs else "")
        raise ModelError(
            f"model {model_path} must have an input {INPUT_NAME!r} and an output {OUTPUT_NAME!r}; "
            f"it has inputs {sorted(inputs)} and outputs {sorted(outputs)}{hint}"
        )
    shape = inputs[INPUT_NAME].shape
    if len(shape) != 3 or (isinstance(shape[1], int) and shape[1] != N_MFCC):
        raise ModelError(f"model {model_path}: input {INPUT_NAME!r} must be (batch, {N_MFCC}, frames), got {shape}")
    output_shape = next(node.shape for node in session.get_outputs() if node.name == OUTPUT_NAME)
    if len(output_shape) != 3:
        raise ModelError(f"model {model_path}: output {OUTPUT_NAME!r} must be (batch, frames, classes), got "
                         f"{output_shape}")
    return session


class Classifier:
    """A SwishNet ONNX model with its card: stateless and thread-safe.

    ``frame_logits`` may be called from many threads at once; one instance
    serves every stream of a process (through service.batching in the server).
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, intra_op_num_threads: int = 1) -> None:
        self.path = default_model_path() if model_path is None else Path(model_path)
        if not self.path.is_file():
            raise ModelError(f"no such model file: {self.path}")
        self.card: dict = load_card(self.path)
        self.labels: tuple[str, ...] = tuple(self.card["labels"])
        self.receptive_field_frames: int = self.card["receptive_field_frames"]
        model_bytes = self.path.read_bytes()
        check_sha256(self.path, model_bytes, self.card["onnx_sha256"])
        self._session = open_session(self.path, model_bytes, intra_op_num_threads)
        self._check_output_width()

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.stem))

    def _check_output_width(self) -> None:
        logits = self.frame_logits(np.zeros((1, FRAMES_PER_SECOND, N_MFCC), dtype=np.float32))
        if logits.shape != (1, FRAMES_PER_SECOND, len(self.labels)):
            raise ModelError(
                f"model {self.path} outputs {logits.shape[1:]} logits for {FRAMES_PER_SECOND} frames but its card "
                f"lists {len(self.labels)} labels {list(self.labels)}"
            )

    def frame_logits(self, frames: np.ndarray) -> np.ndarray:
        """Causal logits of every frame: (batch, frames, N_MFCC) -> (batch, frames, n_labels) float32."""
        return session_frame_logits(self._session, frames)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities of whole MFCC windows, each scored without left context: (batch, n_labels)."""
        return pooled_probs(self.frame_logits(windows))


def session_frame_logits(session: ort.InferenceSession, frames: np.ndarray) -> np.ndarray:
    """Run a session from ``open_session`` on MFCC frames (batch, frames, N_MFCC); frame logits out."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[2] != N_MFCC or frames.shape[1] == 0:
        raise ValueError(f"expected MFCC windows of shape (batch, frames>0, {N_MFCC}), got {frames.shape}")
    channels_first = np.ascontiguousarray(frames.transpose(0, 2, 1))
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: channels_first})
    return logits


def predict_windows(session: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    """Probabilities of MFCC windows (batch, frames, N_MFCC) scored by a session from ``open_session``."""
    return pooled_probs(session_frame_logits(session, windows))


def pooled_probs(frame_logits: np.ndarray) -> np.ndarray:
    """What the network's time pooling computes: softmax of the mean frame logits, (batch, frames, C) -> (batch, C)."""
    return softmax(frame_logits.mean(axis=1, dtype=np.float64))
