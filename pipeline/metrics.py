"""Classification metrics as plain floats and dicts, over a fixed class list, all from the confusion matrix.

Defined once, here: the training loop's per-epoch curves (DVCLive), the baselines and reports/metrics.json all
use them, so a macro-F1 means the same everywhere: the mean F1 over every class, a class neither present nor
predicted counting as 0 (scikit-learn's `labels=all classes, zero_division=0`; tests/test_metrics.py holds them to
it). numpy only: importing scikit-learn would cost the evaluate stage more time than computing every metric.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

DECIMALS = 6


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (int64), rows = actual class, columns = predicted class."""
    cells = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(confusion: np.ndarray) -> float:
    return float(np.trace(confusion) / confusion.sum())


def _per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of each class (0 where undefined), and its support."""
    true_positives = np.diag(confusion).astype(np.float64)
    actual, predicted = confusion.sum(axis=1), confusion.sum(axis=0)

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        return np.divide(numerator, denominator, out=np.zeros(len(confusion)), where=denominator > 0)

    return (ratio(true_positives, predicted), ratio(true_positives, actual),
            ratio(2.0 * true_positives, actual + predicted), actual)


def macro_f1(confusion: np.ndarray) -> float:
    """The unweighted mean over all classes of 2·TP / (actual + predicted); 0 for a class with neither."""
    return float(_per_class(confusion)[2].mean())


def log_loss(labels: np.ndarray, proba: np.ndarray) -> float:
    """Mean cross-entropy of the true classes' probabilities, each clipped to [eps, 1 - eps] of its dtype."""
    eps = np.finfo(proba.dtype).eps
    true = np.clip(proba[np.arange(len(labels)), labels], eps, 1.0 - eps)
    return float(-np.log(true).mean())


def headline_metrics(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, macro/weighted F1, macro precision/recall (prediction = argmax) and log loss of `proba`.

    Every class in `proba`'s columns counts, even one absent from `labels`; a class never predicted has
    precision 0.
    """
    confusion = confusion_counts(labels, proba.argmax(axis=1), proba.shape[1])
    precision, recall, f1, support = _per_class(confusion)
    return {
        "accuracy": accuracy(confusion),
        "f1_macro": macro_f1(confusion),
        "f1_weighted": float(np.average(f1, weights=support)) if support.sum() else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "log_loss": log_loss(labels, proba),
    }


def label_metrics(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 of hard predictions (for models without meaningful probabilities)."""
    confusion = confusion_counts(labels, predicted, n_classes)
    return {"accuracy": accuracy(confusion), "f1_macro": macro_f1(confusion)}


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray,
                      class_names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """{class name: {precision, recall, f1, support}} in class order."""
    precision, recall, f1, support = _per_class(confusion_counts(labels, predicted, len(class_names)))
    return {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total (a row with no samples stays zero)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)


def rounded(value: Any, decimals: int = DECIMALS) -> Any:
    """`value` with every float rounded, recursively through dicts and lists, so files stay byte-stable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (float, np.floating)):
        return round(float(value), decimals)
    if isinstance(value, dict):
        return {key: rounded(item, decimals) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, decimals) for item in value]
    return value
