"""Evaluate stage: the MLP's test and validation metrics, baselines on the same features, plots, model card.

Every Git-tracked output is a pure function of the pipeline's data and params (no timings, no dates), so a
re-run writes the same bytes. Timings go to reports/timing/evaluate.json, which Git and DVC ignore.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.errors import BundleError, DataError, exits_cleanly
from stages.files import write_json, write_text
from stages.metrics import (confusion_counts, headline_metrics, label_metrics, per_class_metrics, rounded,
                            row_normalised)
from stages.params import EvaluateParams, load_params
from stages.processed import SPLITS, ProcessedSplit, processed_path, read_processed
from stages.report import (model_card, per_class_f1_csv, predictions_csv, write_confusion_png,
                           write_loss_png)
from stages.schema import GENRES, LABEL, TRACK_ID

MODEL = Path("models/model.pt")
PREPROCESSOR = Path("models/preprocessor.json")
ANOVA_REPORT = Path("reports/anova.json")
SPLIT_REPORT = Path("reports/split.json")
SPLIT_DIR = Path("data/split")
TRAINING_SUMMARY = Path("dvclive/metrics.json")
LOSS_CURVES = {split: Path(f"dvclive/plots/metrics/{split}/loss.tsv") for split in ("train", "val")}

METRICS = Path("reports/metrics.json")
PREDICTIONS = Path("reports/predictions.csv")
PER_CLASS_F1 = Path("reports/plots/per_class_f1.csv")
LOSS_PNG = Path("reports/figures/loss.png")
CONFUSION_PNG = Path("reports/figures/confusion_matrix.png")
MODEL_CARD = Path("reports/model_card.md")
TIMING = Path("reports/timing/evaluate.json")


def make_baseline(name: str, params: EvaluateParams):
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


def baseline_rows(rows: int, params: EvaluateParams) -> np.ndarray:
    """Indices of the training rows the baselines fit on: all of them, or a seeded sample in row order."""
    if params.max_train_rows is None or rows <= params.max_train_rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(params.seed).choice(rows, size=params.max_train_rows, replace=False))


def fit_baselines(train: ProcessedSplit, test: ProcessedSplit,
                  params: EvaluateParams) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Each baseline fitted on `train` and scored on `test`: ({name: {accuracy, f1_macro}}, {name: seconds})."""
    from threadpoolctl import threadpool_limits

    rows = baseline_rows(len(train.labels), params)
    features, labels = train.features[rows], train.labels[rows]
    scores, seconds = {}, {}
    for name in params.baselines:
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


def evaluation_metrics(test: ProcessedSplit, test_proba: np.ndarray, val: ProcessedSplit, val_proba: np.ndarray,
                       baselines: dict[str, dict[str, float]],
                       class_names: tuple[str, ...] = GENRES) -> dict[str, Any]:
    """The content of reports/metrics.json, every float rounded."""
    metrics = rounded({
        **headline_metrics(test.labels, test_proba),
        "per_class": per_class_metrics(test.labels, test_proba.argmax(axis=1), class_names),
        "val": headline_metrics(val.labels, val_proba),
        "baselines": baselines,
    })
    if baselines:
        metrics["beats_baselines"] = all(metrics["accuracy"] > scores["accuracy"] for scores in baselines.values())
    return metrics


def prediction_table(split: ProcessedSplit, proba: np.ndarray, class_names: tuple[str, ...] = GENRES) -> pd.DataFrame:
    """One row per song, in split order: track_id, actual, predicted, then one probability column per class."""
    names = np.asarray(class_names)
    table = pd.DataFrame({"track_id": split.track_ids, "actual": names[split.labels],
                          "predicted": names[proba.argmax(axis=1)]})
    for i, name in enumerate(class_names):
        table[name] = proba[:, i]
    return table


def multi_genre_tracks(songs: pd.DataFrame) -> int:
    """How many tracks carry more than one genre label."""
    return int((songs.groupby(TRACK_ID)[LABEL].nunique() > 1).sum())


def _read_json(path: Path, stage: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro {stage}` first") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); run `dvc repro {stage}` again") from None


def _read_tsv(path: Path, column: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro train` first") from None
    missing = [name for name in ("step", column) if name not in frame.columns]
    if missing:
        raise DataError(f"{path}: expected columns 'step' and {column!r}, missing {', '.join(missing)}")
    return frame[["step", column]]


def _read_splits() -> dict[str, ProcessedSplit]:
    splits = {}
    for name in SPLITS:
        path = processed_path(name)
        try:
            splits[name] = read_processed(path)
        except FileNotFoundError:
            raise DataError(f"{path}: not found; run `dvc repro preprocess` first") from None
        except ValueError as error:
            raise DataError(str(error)) from None
    for name, split in splits.items():
        if split.feature_names != splits["train"].feature_names:
            raise DataError(f"{processed_path(name)}: feature columns differ from {processed_path('train')}'s; "
                            "run `dvc repro preprocess` again")
        if len(split.labels) == 0:
            raise DataError(f"{processed_path(name)}: no rows")
    return splits


def _read_labels() -> pd.DataFrame:
    """Every song's track id and genre, from the three raw splits."""
    frames = []
    for name in SPLITS:
        path = SPLIT_DIR / f"{name}.parquet"
        if not path.is_file():
            raise DataError(f"{path}: not found; run `dvc repro split` first")
        frames.append(pd.read_parquet(path, columns=[TRACK_ID, LABEL]))
    return pd.concat(frames, ignore_index=True)


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    params = load_params()
    splits = _read_splits()
    split_report = _read_json(SPLIT_REPORT, "split")
    anova = _read_json(ANOVA_REPORT, "select")
    preprocessor = _read_json(PREPROCESSOR, "preprocess")
    training = _read_json(TRAINING_SUMMARY, "train")
    curves = {name: _read_tsv(path, "loss") for name, path in LOSS_CURVES.items()}
    songs = _read_labels()

    from stages.model import load_bundle, predict_proba

    bundle = load_bundle(MODEL, feature_names=splits["test"].feature_names, class_names=GENRES)
    if bundle.data_sha256 != split_report.get("raw_sha256"):
        raise BundleError(f"{MODEL} was trained on data with sha256 {bundle.data_sha256}, but {SPLIT_REPORT} "
                          f"describes {split_report.get('raw_sha256')}; run `dvc repro` to retrain")
    predict_started = time.perf_counter()
    test_proba = predict_proba(bundle.model, splits["test"].features)
    val_proba = predict_proba(bundle.model, splits["val"].features)
    predict_seconds = time.perf_counter() - predict_started

    baselines, fit_seconds = fit_baselines(splits["train"], splits["test"], params.evaluate)
    metrics = evaluation_metrics(splits["test"], test_proba, splits["val"], val_proba, baselines)
    predictions = prediction_table(splits["test"], test_proba)
    counts = confusion_counts(splits["test"].labels, test_proba.argmax(axis=1), len(GENRES))
    best_epoch = training.get("best_epoch")

    write_json(METRICS, metrics)
    write_text(PREDICTIONS, predictions_csv(predictions))
    write_text(PER_CLASS_F1, per_class_f1_csv(metrics["per_class"]))
    write_loss_png(LOSS_PNG, curves["train"], curves["val"], best_epoch)
    write_confusion_png(CONFUSION_PNG, row_normalised(counts), GENRES)
    write_text(MODEL_CARD, model_card(
        metrics=metrics, data_sha256=bundle.data_sha256, split=split_report, anova=anova, preprocessor=preprocessor,
        feature_count=len(bundle.feature_names), architecture=dict(bundle.architecture), params=bundle.params,
        training=training, multi_genre_tracks=multi_genre_tracks(songs)))
    write_json(TIMING, {"predict_s": round(predict_seconds, 3),
                        "baseline_fit_s": {name: round(s, 3) for name, s in fit_seconds.items()},
                        "total_s": round(time.perf_counter() - started, 3)})

    against = ", ".join(f"{name} {scores['accuracy']:.4f}" for name, scores in baselines.items())
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['f1_macro']:.4f}"
          + (f"; baselines: {against}" if against else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
