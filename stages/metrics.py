"""Classification metrics as plain floats and dicts, computed with scikit-learn over a fixed class list."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

DECIMALS = 6
HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "log_loss")


def headline_metrics(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, macro/weighted F1, macro precision/recall (prediction = argmax) and log loss of `proba`.

    Every class in `proba`'s columns counts, even one absent from `labels`; a class never predicted has
    precision 0.
    """
    classes = np.arange(proba.shape[1])
    predicted = proba.argmax(axis=1)
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "f1_macro": float(skm.f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "f1_weighted": float(skm.f1_score(labels, predicted, labels=classes, average="weighted", zero_division=0)),
        "precision_macro": float(skm.precision_score(labels, predicted, labels=classes, average="macro",
                                                     zero_division=0)),
        "recall_macro": float(skm.recall_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "log_loss": float(skm.log_loss(labels, proba, labels=classes)),
    }


def label_metrics(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 of hard predictions (for models without meaningful probabilities)."""
    return {
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "f1_macro": float(skm.f1_score(labels, predicted, labels=np.arange(n_classes), average="macro",
                                       zero_division=0)),
    }


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray,
                      class_names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """{class name: {precision, recall, f1, support}} in class order."""
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=np.arange(len(class_names)), zero_division=0)
    return {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = actual class, columns = predicted class."""
    return skm.confusion_matrix(labels, predicted, labels=np.arange(n_classes))


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
