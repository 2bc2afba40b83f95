"""Baselines stage: the MLP's peers, fitted on its processed training split and features, each early-stopped on
the validation split where it has rounds (pipeline/peers.py), and scored on validation and test.

A stage of its own, so that `dvc exp run -S lr=...` (which re-runs train and evaluate) does not refit them. The
evaluate stage puts them beside the MLP: their scores, and their test predictions for paired comparisons.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from pipeline.artifacts import (BASELINE_PREDICTIONS, BASELINES, SPLITS, ProcessedSplit, read_processed_splits,
                                write_baseline_predictions)
from pipeline.metrics import label_metrics, rounded
from pipeline.params import BaselinesParams, load_params
from pipeline.peers import fit_peer
from pipeline.timing import exit_with
from spotify_genre.atomic import write_json
from spotify_genre.errors import exits_cleanly
from spotify_genre.songs.schema import GENRES

TIMING = Path("reports/timing/baselines.json")


def baseline_rows(rows: int, params: BaselinesParams) -> np.ndarray:
    """Indices of the training rows the baselines fit on: all of them, or a seeded sample in row order."""
    if params.max_train_rows is None or rows <= params.max_train_rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(params.seed).choice(rows, size=params.max_train_rows, replace=False))


def strongest(models: dict[str, dict]) -> str | None:
    """The baseline other than the majority class with the highest validation macro-F1 (ties: first by name)."""
    peers = [name for name in models if name != "majority"]
    return min(peers, key=lambda name: (-models[name]["val"]["f1_macro"], name)) if peers else None


# The order the peers are started in when they are fitted side by side: the longest fits first, so that the
# shorter ones fill the other workers meanwhile.
LONGEST_FIRST = ("xgboost", "lightgbm", "random_forest", "hist_gradient_boosting", "majority")


def fit_baselines(splits: dict[str, ProcessedSplit],
                  params: BaselinesParams) -> tuple[dict, dict[str, np.ndarray], dict[str, float]]:
    """Each baseline fitted on the training rows (stopped early on the validation rows) and then asked for the
    validation and test rows' classes: (the report, {name: test predictions}, {name: seconds}).

    `params.jobs` peers are fitted at once, each on one thread of its own, so a peer's trees are the same whatever
    runs beside it; the first error gives up the boosted fits still running at their next round.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from threadpoolctl import threadpool_limits

    train, val, test = (splits[name] for name in SPLITS)
    rows = baseline_rows(len(train.labels), params)
    failed = threading.Event()

    def fit(name: str) -> tuple[dict[str, np.ndarray], int | None, float]:
        started = time.perf_counter()
        # One OpenMP thread (a limit each thread sets for itself): HistGradientBoosting's threads synchronise at
        # every tree node, and on a CPU shared with any other work two threads ran 5-10x slower than one (23k
        # rows: 2.3 s on one thread).
        with threadpool_limits(1, user_api="openmp"):
            fitted = fit_peer(name, params, train.features[rows], train.labels[rows], val.features, val.labels,
                              None if train.subgenres is None else train.subgenres[rows], val.subgenres,
                              cancelled=failed.is_set)
            predicted = {"val": fitted.predict(val.features), "test": fitted.predict(test.features)}
        return predicted, fitted.iterations, time.perf_counter() - started

    pool = ThreadPoolExecutor(max_workers=params.jobs, thread_name_prefix="baseline")
    started = {name: pool.submit(fit, name) for name in sorted(params.models, key=LONGEST_FIRST.index)}
    try:
        finished, _ = wait(started.values(), return_when=FIRST_EXCEPTION)
        for future in finished:
            future.result()  # raises the first failure, without waiting for the fits still running
        done = {name: started[name].result() for name in params.models}
    except BaseException:
        failed.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    models, predictions, seconds = {}, {}, {}
    for name, (predicted, iterations, elapsed) in done.items():
        models[name] = rounded({"val": label_metrics(val.labels, predicted["val"], len(GENRES)),
                                "test": label_metrics(test.labels, predicted["test"], len(GENRES)),
                                "iterations": iterations})
        predictions[name] = predicted["test"]
        seconds[name] = elapsed
    return {"models": models, "strongest": strongest(models)}, predictions, seconds


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    params = load_params()
    splits = read_processed_splits(SPLITS)
    report, predictions, seconds = fit_baselines(splits, params.baselines)
    write_baseline_predictions(BASELINE_PREDICTIONS, splits["test"].track_ids, predictions)
    write_json(BASELINES, report)
    write_json(TIMING, {name: round(value, 3) for name, value in seconds.items()})
    print("baselines: validation macro-F1 "
          + ", ".join(f"{name} {scores['val']['f1_macro']:.4f}" for name, scores in report["models"].items())
          + f"; strongest: {report['strongest']}")
    return 0


if __name__ == "__main__":
    exit_with(main)
