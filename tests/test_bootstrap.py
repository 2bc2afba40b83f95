"""The bootstrap of pipeline/bootstrap.py against a plain loop over resamples, pairing, and stable bytes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.bootstrap import bootstrap, percentile_interval, resample_rows, resampled_scores
from pipeline.metrics import accuracy, confusion_counts, macro_f1

# A small case: 4 classes, class 3 never predicted by `WEAK` and rare in the labels, so a resample can miss it.
N_CLASSES, ROWS, RESAMPLES, SEED = 4, 57, 301, 7
_rng = np.random.default_rng(123)
LABELS = _rng.choice(N_CLASSES, size=ROWS, p=[0.4, 0.3, 0.25, 0.05])
STRONG = np.where(_rng.random(ROWS) < 0.7, LABELS, _rng.integers(0, N_CLASSES, ROWS))
WEAK = np.where(_rng.random(ROWS) < 0.5, LABELS, _rng.integers(0, N_CLASSES - 1, ROWS)) % (N_CLASSES - 1)


def _loop_scores(labels: np.ndarray, predicted: np.ndarray, resamples: int, seed: int) -> dict[str, list[float]]:
    """One resample at a time: draw its rows, count its confusion matrix, score it with pipeline/metrics.py."""
    generator = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {"accuracy": [], "f1_macro": []}
    for _ in range(resamples):
        rows = generator.integers(0, len(labels), size=len(labels))
        confusion = confusion_counts(labels[rows], predicted[rows], N_CLASSES)
        scores["accuracy"].append(accuracy(confusion))
        scores["f1_macro"].append(macro_f1(confusion))
    return scores


def _quantile_by_hand(values: list[float], q: float) -> float:
    """The linear-interpolation quantile (numpy's default, Hyndman and Fan's 7th) from the sorted values."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


@pytest.mark.parametrize("max_cells", [1, ROWS * 10, ROWS * RESAMPLES * 2])
def test_the_chunks_are_the_rows_of_one_index_matrix_drawn_at_once_or_row_by_row(max_cells):
    chunks = list(resample_rows(ROWS, RESAMPLES, SEED, max_cells))
    assert len(chunks) == math.ceil(RESAMPLES / max(1, max_cells // ROWS))
    matrix = np.concatenate(chunks)
    assert matrix.shape == (RESAMPLES, ROWS) and matrix.min() >= 0 and matrix.max() < ROWS
    assert np.array_equal(matrix, np.random.default_rng(SEED).integers(0, ROWS, size=(RESAMPLES, ROWS)))
    generator = np.random.default_rng(SEED)
    assert np.array_equal(matrix, [generator.integers(0, ROWS, size=ROWS) for _ in range(RESAMPLES)])


@pytest.mark.parametrize("max_cells", [ROWS * 3, 1 << 20])
def test_every_resample_scores_exactly_as_stages_metrics_on_the_same_rows(max_cells):
    vectorised = resampled_scores(LABELS, [STRONG, WEAK], N_CLASSES, RESAMPLES, SEED, max_cells)
    for predicted, scores in zip([STRONG, WEAK], vectorised):
        looped = _loop_scores(LABELS, predicted, RESAMPLES, SEED)
        for score in ("accuracy", "f1_macro"):
            assert scores[score].dtype == np.float64 and scores[score].shape == (RESAMPLES,)
            assert scores[score].tolist() == looped[score], score  # to the last bit
    # The case exercises a class absent from some resamples and one model that never predicts it.
    assert not (WEAK == N_CLASSES - 1).any() and (LABELS == N_CLASSES - 1).sum() <= 5


def test_the_intervals_and_paired_differences_equal_the_loop():
    figures = bootstrap(LABELS, STRONG, {"weak": WEAK}, N_CLASSES, resamples=RESAMPLES, confidence=0.9, seed=SEED)
    strong, weak = _loop_scores(LABELS, STRONG, RESAMPLES, SEED), _loop_scores(LABELS, WEAK, RESAMPLES, SEED)
    for score, metric in (("accuracy", accuracy), ("f1_macro", macro_f1)):
        expected = {"low": _quantile_by_hand(strong[score], 0.05), "high": _quantile_by_hand(strong[score], 0.95)}
        assert figures["intervals"][score] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        differences = [a - b for a, b in zip(strong[score], weak[score])]
        observed = (metric(confusion_counts(LABELS, STRONG, N_CLASSES))
                    - metric(confusion_counts(LABELS, WEAK, N_CLASSES)))
        assert figures["differences"]["weak"][score] == pytest.approx({
            "estimate": observed, "low": _quantile_by_hand(differences, 0.05),
            "high": _quantile_by_hand(differences, 0.95)}, rel=1e-12, abs=1e-15)


def test_identical_predictions_differ_by_exactly_zero_on_every_resample():
    figures = bootstrap(LABELS, STRONG, {"copy": STRONG.copy(), "weak": WEAK}, N_CLASSES, resamples=RESAMPLES,
                        confidence=0.95, seed=SEED)
    for score in ("accuracy", "f1_macro"):
        assert figures["differences"]["copy"][score] == {"estimate": 0.0, "low": 0.0, "high": 0.0}
        assert figures["differences"]["weak"][score]["low"] < figures["differences"]["weak"][score]["high"]


def test_the_difference_is_paired_one_row_apart_means_never_below_zero():
    """The baseline is the model with one right answer made wrong: on the same rows it can only be behind, by
    (times that row was drawn) / rows. Scored on rows of their own, it would be ahead on many resamples."""
    labels = np.arange(400) % N_CLASSES
    model = np.where(np.arange(400) % 3 == 0, (labels + 1) % N_CLASSES, labels)
    baseline = model.copy()
    baseline[1] = (labels[1] + 1) % N_CLASSES
    figures = bootstrap(labels, model, {"baseline": baseline}, N_CLASSES, resamples=1000, confidence=0.95, seed=0)
    accuracy_difference = figures["differences"]["baseline"]["accuracy"]
    assert accuracy_difference["estimate"] == pytest.approx(1 / 400)
    assert 0.0 <= accuracy_difference["low"] <= accuracy_difference["high"] <= 6 / 400
    unpaired = np.subtract(*(scores["accuracy"] for scores in (
        resampled_scores(labels, [model], N_CLASSES, 1000, 0)[0], resampled_scores(labels, [baseline], N_CLASSES,
                                                                                    1000, 1)[0])))
    assert (unpaired < 0).mean() > 0.3


def test_the_interval_contains_the_estimate_and_narrows_with_more_rows():
    rng = np.random.default_rng(5)
    widths = []
    for rows in (500, 5000):
        labels = rng.integers(0, 6, rows)
        model = np.where(rng.random(rows) < 0.65, labels, rng.integers(0, 6, rows))
        baseline = np.where(rng.random(rows) < 0.6, labels, rng.integers(0, 6, rows))
        figures = bootstrap(labels, model, {"baseline": baseline}, 6, resamples=500, confidence=0.95, seed=0)
        observed = {"accuracy": accuracy(confusion_counts(labels, model, 6)),
                    "f1_macro": macro_f1(confusion_counts(labels, model, 6))}
        for score, interval in figures["intervals"].items():
            assert interval["low"] < observed[score] < interval["high"]
        for difference in figures["differences"]["baseline"].values():
            assert difference["low"] < difference["estimate"] < difference["high"]
        widths.append(figures["intervals"]["accuracy"]["high"] - figures["intervals"]["accuracy"]["low"])
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10) as wide


def test_same_inputs_same_bytes_whatever_the_chunk_size():
    def figures(max_cells: int) -> str:
        return json.dumps(bootstrap(LABELS, STRONG, {"weak": WEAK}, N_CLASSES, resamples=RESAMPLES, confidence=0.95,
                                    seed=SEED, max_cells=max_cells))

    assert figures(1 << 20) == figures(1 << 20) == figures(ROWS * 2) == figures(1)
    assert figures(1 << 20) != json.dumps(bootstrap(LABELS, STRONG, {"weak": WEAK}, N_CLASSES, resamples=RESAMPLES,
                                                    confidence=0.95, seed=SEED + 1))


def test_percentile_interval_is_the_central_share():
    values = np.arange(101, dtype=np.float64)
    assert percentile_interval(values, 0.9) == pytest.approx({"low": 5.0, "high": 95.0}, abs=1e-12)
    assert percentile_interval(values, 0.5) == {"low": 25.0, "high": 75.0}
