"""Baselines stage: reference models fitted on the same processed training split and features as the MLP.

A stage of its own, so that `dvc exp run -S lr=...` (which re-runs train and evaluate) does not refit them.
The evaluate stage puts their scores beside the MLP's in reports/metrics.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from spotify_genre.atomic import write_json
from spotify_genre.errors import exits_cleanly
from spotify_genre.schema import GENRES
from stages.artifacts import BASELINES, ProcessedSplit, read_processed_splits
from stages.metrics import label_metrics, rounded
from stages.params import BaselinesParams, load_params

TIMING = Path("reports/timing/baselines.json")


def make_baseline(name: str, params: BaselinesParams):
    """An unfitted scikit-learn classifier, seeded so that fitting is deterministic."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    if name == "majority":
        return DummyClassifier(strategy="most_frequent")
    if name == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(random_state=params.seed)
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=params.rf_trees, n_jobs=params.threads, random_state=params.seed)
    raise ValueError(f"unknown baseline {name!r}")


def baseline_rows(rows: int, params: BaselinesParams) -> np.ndarray:
    """Indices of the training rows the baselines fit on: all of them, or a seeded sample in row order."""
    if params.max_train_rows is None or rows <= params.max_train_rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(params.seed).choice(rows, size=params.max_train_rows, replace=False))


def fit_baselines(train: ProcessedSplit, test: ProcessedSplit,
                  params: BaselinesParams) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each baseline fitted on `train` and scored on `test`: ({name: {accuracy, f1_macro}}, {name: seconds})."""
    from threadpoolctl import threadpool_limits

    rows = baseline_rows(len(train.labels), params)
    features, labels = train.features[rows], train.labels[rows]
    scores, seconds = {}, {}
    for name in params.models:
        started = time.perf_counter()
        model = make_baseline(name, params)
        # One OpenMP thread: HistGradientBoosting's threads synchronise at every tree node, and on a CPU
        # shared with any other work two threads ran 5-10x slower than one (23k rows: 2.3 s on one thread).
        with threadpool_limits(1, user_api="openmp"):
            model.fit(features, labels)
            predicted = model.predict(test.features)
        scores[name] = label_metrics(test.labels, predicted, len(GENRES))
        seconds[name] = time.perf_counter() - started
    return scores, seconds


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    params = load_params()
    splits = read_processed_splits(("train", "test"))
    train, test = splits["train"], splits["test"]
    scores, seconds = fit_baselines(train, test, params.baselines)
    write_json(BASELINES, rounded(scores))
    write_json(TIMING, {name: round(value, 3) for name, value in seconds.items()})
    print("baselines: test accuracy " + ", ".join(f"{name} {s['accuracy']:.4f}" for name, s in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
