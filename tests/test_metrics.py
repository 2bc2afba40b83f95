"""pipeline.metrics: the one accuracy and macro-F1 (from a confusion matrix) that the training curves, the baselines
and reports/metrics.json share, checked by hand and against scikit-learn over every class."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from pipeline.metrics import accuracy, confusion_counts, label_metrics, macro_f1

N_CLASSES = 6
ABSENT = 4  # in every case below, no label and no prediction is this class


def test_macro_f1_and_accuracy_of_a_small_confusion_matrix_by_hand():
    confusion = np.array([[3, 1, 0, 0],
                          [1, 2, 0, 0],
                          [1, 1, 1, 0],
                          [0, 0, 0, 0]])  # class 3: neither present nor predicted
    # F1 of a class = 2·TP / (row total + column total): 6/9, 4/7, 2/4, and 0 for class 3.
    assert macro_f1(confusion) == pytest.approx((6 / 9 + 4 / 7 + 2 / 4 + 0) / 4, rel=1e-15)
    assert accuracy(confusion) == pytest.approx(6 / 10, rel=1e-15)
    assert type(macro_f1(confusion)) is float and type(accuracy(confusion)) is float


def test_a_class_predicted_but_never_present_scores_zero_and_counts():
    confusion = np.array([[2, 1], [0, 0]])  # class 1: predicted once, no song of it
    assert macro_f1(confusion) == pytest.approx((4 / 5 + 0) / 2, rel=1e-15)
    assert accuracy(confusion) == pytest.approx(2 / 3, rel=1e-15)


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and predictions (half of them right) over six classes, ABSENT never among either."""
    rng = np.random.default_rng(seed)
    present = np.array([c for c in range(N_CLASSES) if c != ABSENT])
    labels = rng.choice(present, 500)
    predictions = np.where(rng.random(500) < 0.5, labels, rng.choice(present, 500))
    if seed == 1:
        predictions[predictions == 2] = 3  # and a class present but never predicted
    if seed == 2:
        labels[labels == 5] = 0  # and a class predicted but never present
    if seed == 3:
        predictions = labels.copy()  # all right
    if seed == 4:
        predictions = np.zeros_like(labels)  # one class for every song
    return labels, predictions


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_and_accuracy_equal_scikit_learn_over_every_class(seed):
    labels, predictions = _case(seed)
    assert ABSENT not in labels and ABSENT not in predictions
    confusion = confusion_counts(labels, predictions, N_CLASSES)
    every_class = np.arange(N_CLASSES)
    expected = f1_score(labels, predictions, labels=every_class, average="macro", zero_division=0)
    assert macro_f1(confusion) == pytest.approx(expected, abs=1e-12)
    assert accuracy(confusion) == pytest.approx(accuracy_score(labels, predictions), abs=1e-12)
    assert label_metrics(labels, predictions, N_CLASSES) == {"accuracy": accuracy(confusion),
                                                             "f1_macro": macro_f1(confusion)}
    # The absent class counts as 0: the mean over the classes scikit-learn sees by default is another number.
    seen = f1_score(labels, predictions, average="macro", zero_division=0)
    assert macro_f1(confusion) == pytest.approx(seen * (N_CLASSES - 1) / N_CLASSES, abs=1e-12)
    assert macro_f1(confusion) < seen


@pytest.mark.parametrize("seed", range(5))
def test_confusion_counts_rows_are_actual_columns_predicted(seed):
    labels, predictions = _case(seed)
    counts = confusion_counts(labels, predictions, N_CLASSES)
    assert counts.dtype == np.int64 and counts.shape == (N_CLASSES, N_CLASSES)
    assert (counts == confusion_matrix(labels, predictions, labels=np.arange(N_CLASSES))).all()
    assert (counts.sum(axis=1) == np.bincount(labels, minlength=N_CLASSES)).all()
    assert (counts.sum(axis=0) == np.bincount(predictions, minlength=N_CLASSES)).all()
