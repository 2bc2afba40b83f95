"""Evaluate stage: the MLP's test and validation metrics beside the baselines' scores, plots, model card.

Every Git-tracked output is a pure function of the pipeline's data and params (no timings, no dates), so a
re-run writes the same bytes. Timings go to reports/timing/evaluate.json, which Git and DVC ignore.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spotify_genre.atomic import write_json, write_text
from spotify_genre.errors import BundleError, exits_cleanly
from spotify_genre.predictions import prediction_table, predictions_csv
from spotify_genre.preprocessor import load_preprocessor
from spotify_genre.schema import GENRES, LABEL, TRACK_ID
from stages.artifacts import (ANOVA_REPORT, BASELINES, LOSS_CURVES, MODEL, PREPROCESSOR, SPLIT_REPORT, SPLITS,
                              TRAINING_SUMMARY, ProcessedSplit, read_curve, read_processed_splits, read_report,
                              read_split)
from stages.metrics import confusion_counts, headline_metrics, per_class_metrics, rounded, row_normalised
from stages.params import load_params
from stages.report import model_card, per_class_f1_csv, write_confusion_png, write_loss_png

METRICS = Path("reports/metrics.json")
PREDICTIONS = Path("reports/predictions.csv")
PER_CLASS_F1 = Path("reports/plots/per_class_f1.csv")
LOSS_PNG = Path("reports/figures/loss.png")
CONFUSION_PNG = Path("reports/figures/confusion_matrix.png")
MODEL_CARD = Path("reports/model_card.md")
TIMING = Path("reports/timing/evaluate.json")


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


def multi_genre_tracks(songs: pd.DataFrame) -> int:
    """How many tracks carry more than one genre label."""
    return int((songs.groupby(TRACK_ID)[LABEL].nunique() > 1).sum())


def _read_labels() -> pd.DataFrame:
    """Every song's track id and genre, from the three raw splits."""
    return pd.concat([read_split(name, (TRACK_ID, LABEL)) for name in SPLITS], ignore_index=True)


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    load_params()
    splits = read_processed_splits()
    split_report = read_report(SPLIT_REPORT, "split")
    anova = read_report(ANOVA_REPORT, "select")
    preprocessor = load_preprocessor(PREPROCESSOR)
    training = read_report(TRAINING_SUMMARY, "train")
    baselines = read_report(BASELINES, "baselines")
    curves = {name: read_curve(path, "loss") for name, path in LOSS_CURVES.items()}
    songs = _read_labels()

    from spotify_genre.bundle import load_bundle
    from spotify_genre.model import predict_proba

    bundle = load_bundle(MODEL, feature_names=splits["test"].feature_names, class_names=GENRES,
                         preprocessor_sha256=preprocessor.sha256, preprocessor_path=PREPROCESSOR)
    if bundle.data_sha256 != split_report.get("raw_sha256"):
        raise BundleError(f"{MODEL} was trained on data with sha256 {bundle.data_sha256}, but {SPLIT_REPORT} "
                          f"describes {split_report.get('raw_sha256')}; run `dvc repro` to retrain")
    predict_started = time.perf_counter()
    test_proba = predict_proba(bundle.model, splits["test"].features)
    val_proba = predict_proba(bundle.model, splits["val"].features)
    predict_seconds = time.perf_counter() - predict_started

    metrics = evaluation_metrics(splits["test"], test_proba, splits["val"], val_proba, baselines)
    test = splits["test"]
    predictions = prediction_table(pd.Series(test.track_ids, name=TRACK_ID), test_proba, GENRES,
                                   actual=np.asarray(GENRES)[test.labels])
    counts = confusion_counts(splits["test"].labels, test_proba.argmax(axis=1), len(GENRES))
    best_epoch = training.get("best_epoch")

    write_json(METRICS, metrics)
    write_text(PREDICTIONS, predictions_csv(predictions))
    write_text(PER_CLASS_F1, per_class_f1_csv(metrics["per_class"]))
    write_loss_png(LOSS_PNG, curves["train"], curves["val"], best_epoch)
    write_confusion_png(CONFUSION_PNG, row_normalised(counts), GENRES)
    write_text(MODEL_CARD, model_card(
        metrics=metrics, data_sha256=bundle.data_sha256, split=split_report, anova=anova,
        preprocessor=preprocessor.to_dict(),
        feature_count=len(bundle.feature_names), architecture=dict(bundle.architecture), params=bundle.params,
        training=training, multi_genre_tracks=multi_genre_tracks(songs)))
    write_json(TIMING, {"predict_s": round(predict_seconds, 3), "total_s": round(time.perf_counter() - started, 3)})

    against = ", ".join(f"{name} {scores['accuracy']:.4f}" for name, scores in baselines.items())
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['f1_macro']:.4f}"
          + (f"; baselines: {against}" if against else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
