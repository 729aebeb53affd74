"""Classification metrics on label indices (LABELS order), as plain JSON-ready values."""

from __future__ import annotations

import numpy as np

from models.labels import LABELS

SPEECH = LABELS.index("speech")


def confusion(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    n = len(LABELS)
    return np.bincount(np.asarray(labels) * n + np.asarray(predictions), minlength=n * n).reshape(n, n)


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean per-class recall over the classes present (robust to class imbalance)."""
    matrix = confusion(labels, predictions)
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def _percent(numerator: float, denominator: float) -> float | None:
    return round(100.0 * numerator / denominator, 2) if denominator else None


def per_class(matrix: np.ndarray) -> dict:
    """Precision, recall and F1 (percent) and support per class."""
    result = {}
    for index, label in enumerate(LABELS):
        hits, predicted, support = matrix[index, index], matrix[:, index].sum(), matrix[index].sum()
        precision, recall = _percent(hits, predicted), _percent(hits, support)
        f1 = round(2 * precision * recall / (precision + recall), 2) if precision and recall else 0.0
        result[label] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
    return result


def classification_report(labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """Accuracy, speech-vs-non-speech accuracy, per-class scores, confusion, and accuracy per group."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    matrix = confusion(labels, predictions)
    report = {
        "windows": int(labels.size),
        "accuracy": _percent(np.sum(labels == predictions), labels.size),
        "balanced_accuracy": round(100.0 * balanced_accuracy(labels, predictions), 2) if labels.size else None,
        "speech_vs_nonspeech_accuracy": _percent(np.sum((labels == SPEECH) == (predictions == SPEECH)), labels.size),
        "per_class": per_class(matrix),
        "confusion": {"rows_true_columns_predicted": list(LABELS), "counts": matrix.tolist()},
    }
    if groups is not None:
        groups = np.asarray(groups)
        report["accuracy_per_package"] = {
            str(group): _percent(np.sum((labels == predictions)[groups == group]), np.sum(groups == group))
            for group in sorted(set(groups.tolist()))
        }
    return report
