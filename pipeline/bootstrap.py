"""Percentile bootstrap of test accuracy and macro-F1, and the paired bootstrap of a difference between two models.

Resample r draws the test rows of row r of one index matrix, `default_rng(seed).integers(0, rows, (resamples,
rows))`; every model is scored on those same rows, so a difference between two models is paired. The matrix is
drawn chunk by chunk from the one generator (numpy's int64 draws continue the same stream however they are split,
tests/test_bootstrap.py holds it), so memory stays bounded and the figures do not depend on the chunk size.
Each resample's scores come from its confusion counts, with the definitions of pipeline/metrics.py (the mean F1
over all classes, a class never predicted counting 0): equal to macro_f1 on every resample, to the last bit.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

# Index cells per chunk: a few int64 arrays of this size (2 MiB each) are alive at a time.
MAX_CELLS = 1 << 18
SCORES = ("accuracy", "f1_macro")


def resample_rows(rows: int, resamples: int, seed: int, max_cells: int = MAX_CELLS) -> Iterator[np.ndarray]:
    """The index matrix, (resamples, rows) row indices drawn with replacement, in consecutive chunks of rows."""
    generator = np.random.default_rng(seed)
    per_chunk = max(1, max_cells // rows)
    for start in range(0, resamples, per_chunk):
        yield generator.integers(0, rows, size=(min(per_chunk, resamples - start), rows))


def confusion_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 of each of a stack of confusion matrices (..., actual class, predicted class)."""
    true_positives = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    either = confusion.sum(axis=-1) + confusion.sum(axis=-2)  # actual + predicted, per class
    f1 = np.divide(2.0 * true_positives, either, out=np.zeros(true_positives.shape), where=either > 0)
    return {"accuracy": true_positives.sum(axis=-1) / confusion.sum(axis=(-2, -1)), "f1_macro": f1.mean(axis=-1)}


def resampled_scores(labels: np.ndarray, predictions: Sequence[np.ndarray], n_classes: int, resamples: int,
                     seed: int, max_cells: int = MAX_CELLS) -> list[dict[str, np.ndarray]]:
    """Per model of `predictions` (predicted class per test row), {score: (resamples,) float64}: its accuracy and
    macro-F1 on every resample."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = [np.asarray(values, dtype=np.int64) for values in predictions]
    parts: list[dict[str, list[np.ndarray]]] = [{score: [] for score in SCORES} for _ in predicted]
    for rows in resample_rows(len(labels), resamples, seed, max_cells):
        # Each row's cell in a flat stack of confusion matrices: (resample, actual class, predicted class).
        actual_cells = (np.arange(len(rows))[:, None] * n_classes + labels[rows]) * n_classes
        for values, model_parts in zip(predicted, parts):
            counts = np.bincount((actual_cells + values[rows]).ravel(), minlength=len(rows) * n_classes * n_classes)
            for score, value in confusion_scores(counts.reshape(len(rows), n_classes, n_classes)).items():
                model_parts[score].append(value)
    return [{score: np.concatenate(chunks) for score, chunks in model_parts.items()} for model_parts in parts]


def percentile_interval(values: np.ndarray, confidence: float) -> dict[str, float]:
    """The central `confidence` share of `values`: its (1 - c)/2 and (1 + c)/2 quantiles (numpy's linear)."""
    low, high = np.quantile(values, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return {"low": float(low), "high": float(high)}


def observed_scores(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 on the whole test split (no resampling)."""
    cells = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(predicted, dtype=np.int64)
    confusion = np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    return {score: float(value) for score, value in confusion_scores(confusion).items()}


def bootstrap(labels: np.ndarray, model: np.ndarray, baselines: Mapping[str, np.ndarray], n_classes: int, *,
              resamples: int, confidence: float, seed: int, max_cells: int = MAX_CELLS) -> dict:
    """The model's percentile intervals, {score: {low, high}}, each baseline's (`baseline_intervals`), and per
    baseline the paired difference model − baseline, {name: {score: {estimate, low, high}}}, the estimate being
    the difference on the whole test split. Every model is scored on the same resamples."""
    names = list(baselines)
    model_scores, *baseline_scores = resampled_scores(labels, [model, *baselines.values()], n_classes, resamples,
                                                      seed, max_cells)
    model_observed = observed_scores(labels, model, n_classes)
    differences = {}
    for name, scores in zip(names, baseline_scores):
        observed = observed_scores(labels, baselines[name], n_classes)
        differences[name] = {
            score: {"estimate": model_observed[score] - observed[score],
                    **percentile_interval(model_scores[score] - scores[score], confidence)}
            for score in SCORES}
    return {"intervals": {score: percentile_interval(model_scores[score], confidence) for score in SCORES},
            "baseline_intervals": {name: {score: percentile_interval(scores[score], confidence) for score in SCORES}
                                   for name, scores in zip(names, baseline_scores)},
            "differences": differences}
