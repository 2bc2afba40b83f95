"""Evaluate stage: the MLP's test and validation metrics with bootstrap intervals, the paired difference to each
baseline, the same by how new a song is (spotify_genre/preprocessing/novelty.py), plots, model card.

The MLP's probabilities come from the train stage (data/mlp/predictions.parquet, checked to be those of
models/model.pt as it is), so this stage never loads torch.

Every Git-tracked output is a pure function of the pipeline's data and params (no timings, no dates; the
bootstrap's seed is a param), so a re-run writes the same bytes. Timings go to reports/timing/evaluate.json, which
Git and DVC ignore.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.artifacts import (ANOVA_REPORT, BASELINE_PREDICTIONS, BASELINES, LOSS_CURVES, MODEL, PREPROCESSOR,
                                SPLIT_REPORT, SPLITS, TRAINING_SUMMARY, BaselineReport, ProcessedSplit,
                                processed_path, read_baseline_predictions, read_baselines, read_curve,
                                read_processed_splits, read_report, read_split)
from pipeline.bootstrap import bootstrap, observed_scores
from pipeline.metrics import confusion_counts, headline_metrics, per_class_metrics, rounded, row_normalised
from pipeline.mlp_predictions import (MLP_PREDICTIONS, PREDICTED_SPLITS, ModelRecord, file_sha256,
                                     read_mlp_predictions)
from pipeline.params import BootstrapParams, load_params
from pipeline.report import (interval_text, model_card, novelty_csv, per_class_f1_csv, share_text, write_confusion_png,
                             write_loss_png, write_novelty_png)
from pipeline.timing import exit_with, seconds_since_start
from spotify_genre.atomic import write_json, write_text
from spotify_genre.errors import BundleError, DataError, PreprocessorMismatch, exits_cleanly
from spotify_genre.predict.table import prediction_table, predictions_csv
from spotify_genre.preprocessing import load_preprocessor
from spotify_genre.preprocessing.novelty import ALBUM_ID, ARTIST, SLICES, KnownIds
from spotify_genre.songs import GENRES, LABEL, TRACK_ID

METRICS = Path("reports/metrics.json")
PREDICTIONS = Path("reports/predictions.csv")
PER_CLASS_F1 = Path("reports/plots/per_class_f1.csv")
NOVELTY_PLOT = Path("reports/plots/novelty.csv")
NOVELTY_PNG = Path("reports/figures/novelty.png")
LOSS_PNG = Path("reports/figures/loss.png")
CONFUSION_PNG = Path("reports/figures/confusion_matrix.png")
MODEL_CARD = Path("reports/model_card.md")
TIMING = Path("reports/timing/evaluate.json")

AGAIN = "run `dvc repro baselines` again"
# A tolerance for scores baselines.json writes rounded (to 6 decimals): the file and the predictions must agree.
ROUNDING = 1e-6


def checked_predictions(predictions: dict[str, np.ndarray], test: ProcessedSplit, report: BaselineReport,
                        n_classes: int = len(GENRES)) -> dict[str, np.ndarray]:
    """Each baseline of baselines.json's predicted class per test row (read_baseline_predictions checked the rows),
    checked to score on the test split what baselines.json says it does."""
    for name, scores in report.models.items():
        if name not in predictions:
            raise DataError(f"{BASELINE_PREDICTIONS}: no column for the baseline {name!r} of {BASELINES}; {AGAIN}")
        for score, value in observed_scores(test.labels, predictions[name], n_classes).items():
            if abs(value - getattr(scores.test, score)) > ROUNDING:
                raise DataError(f"{BASELINE_PREDICTIONS}: column {name!r} scores test {score} {value:.6f}, but "
                                f"{BASELINES} says {getattr(scores.test, score):.6f}; {AGAIN}")
    return {name: predictions[name] for name in report.models}


def novelty_metrics(labels: np.ndarray, predicted: np.ndarray, codes: np.ndarray,
                    baseline_predictions: dict[str, np.ndarray], settings: BootstrapParams,
                    n_classes: int = len(GENRES)) -> dict[str, dict[str, Any]]:
    """Per novelty slice (`codes`: each row's index into SLICES), its song count and share, the model's accuracy and
    macro-F1 with bootstrap intervals, and each baseline's beside the paired difference model − baseline, every
    model resampled on the slice's same rows."""
    slices = {}
    for code, name in enumerate(SLICES):
        rows = codes == code
        entry: dict[str, Any] = {"songs": int(rows.sum()), "share": float(rows.mean())}
        if rows.any():
            figures = bootstrap(labels[rows], predicted[rows], {model: values[rows] for model, values in
                                                                  baseline_predictions.items()},
                                n_classes, resamples=settings.resamples, confidence=settings.confidence,
                                seed=settings.seed)
            entry.update(observed_scores(labels[rows], predicted[rows], n_classes), intervals=figures["intervals"])
            if baseline_predictions:
                entry["baselines"] = {
                    model: {**observed_scores(labels[rows], values[rows], n_classes),
                            "intervals": figures["baseline_intervals"][model],
                            "difference": figures["differences"][model]}
                    for model, values in baseline_predictions.items()}
        slices[name] = entry
    return slices


def evaluation_metrics(test: ProcessedSplit, test_proba: np.ndarray, val: ProcessedSplit, val_proba: np.ndarray,
                       report: BaselineReport, baseline_predictions: dict[str, np.ndarray],
                       settings: BootstrapParams, novelty: dict[str, np.ndarray] | None = None,
                       class_names: tuple[str, ...] = GENRES) -> dict[str, Any]:
    """The content of reports/metrics.json, every float rounded. `novelty` holds each split's rows' slices
    (test and val), the test split's scored for the baselines too."""
    figures = bootstrap(test.labels, test_proba.argmax(axis=1), baseline_predictions, len(class_names),
                        resamples=settings.resamples, confidence=settings.confidence, seed=settings.seed)
    baselines = {
        name: {"accuracy": scores.test.accuracy, "f1_macro": scores.test.f1_macro,
               "val_accuracy": scores.val.accuracy, "val_f1_macro": scores.val.f1_macro,
               "difference": figures["differences"][name]}
        for name, scores in report.models.items()
    }
    metrics = {
        **headline_metrics(test.labels, test_proba),
        "intervals": figures["intervals"],
        "per_class": per_class_metrics(test.labels, test_proba.argmax(axis=1), class_names),
        "val": headline_metrics(val.labels, val_proba),
        "baselines": baselines,
        "strongest_baseline": report.strongest,
        "bootstrap": settings.model_dump(),
    }
    if novelty is not None:
        metrics["novelty"] = {
            "test": novelty_metrics(test.labels, test_proba.argmax(axis=1), novelty["test"], baseline_predictions,
                                    settings, len(class_names)),
            "val": novelty_metrics(val.labels, val_proba.argmax(axis=1), novelty["val"], {}, settings,
                                   len(class_names)),
        }
    return rounded(metrics)


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """What the stage prints: the MLP's scores with their intervals, then a line per baseline."""
    intervals, settings = metrics["intervals"], metrics["bootstrap"]
    lines = [f"evaluate: test accuracy {metrics['accuracy']:.4f} {interval_text(intervals['accuracy'])}, "
             f"macro-F1 {metrics['f1_macro']:.4f} {interval_text(intervals['f1_macro'])} "
             f"({share_text(settings['confidence'])} bootstrap intervals, {settings['resamples']:,} resamples)"]
    for name, scores in metrics["baselines"].items():
        accuracy, f1 = scores["difference"]["accuracy"], scores["difference"]["f1_macro"]
        strongest = " (strongest)" if name == metrics["strongest_baseline"] else ""
        lines.append(f"  MLP - {name}{strongest}: accuracy {accuracy['estimate']:+.4f} "
                     f"{interval_text(accuracy, signed=True)}, macro-F1 {f1['estimate']:+.4f} "
                     f"{interval_text(f1, signed=True)}")
    return lines


def checked_record(record: ModelRecord, feature_names: tuple[str, ...], preprocessor_sha256: str,
                   raw_sha256: str | None) -> None:
    """The train stage's predictions are those of models/model.pt as it is, for these features and genres, made
    with this preprocessor file, from the raw data the split stage read."""
    if not MODEL.is_file():
        raise BundleError(f"{MODEL}: model bundle not found (run `dvc repro train` to make it)")
    if file_sha256(MODEL) != record.model_sha256:
        raise BundleError(f"{MODEL}: not the model {MLP_PREDICTIONS} holds the predictions of; "
                          "run `dvc repro train` again")
    if record.preprocessor_sha256 != preprocessor_sha256:
        raise PreprocessorMismatch(
            f"{MODEL}: the model was trained with the preprocessor of sha256 {record.preprocessor_sha256[:12]}… "
            f"({record.preprocessor_path}), not {PREPROCESSOR} ({preprocessor_sha256[:12]}…); "
            "retrain with `dvc repro`")
    if record.feature_names != list(feature_names):
        raise BundleError(f"{MODEL}: the model's features are not those of {processed_path('test')} "
                          "(retrain with `dvc repro`)")
    if record.class_names != list(GENRES):
        raise BundleError(f"{MODEL}: the model's classes are {', '.join(record.class_names)}, not "
                          f"{', '.join(GENRES)} (retrain with `dvc repro`)")
    if record.data_sha256 != raw_sha256:
        raise BundleError(f"{MODEL} was trained on data with sha256 {record.data_sha256}, but {SPLIT_REPORT} "
                          f"describes {raw_sha256}; run `dvc repro` to retrain")


def novelty_codes(known: KnownIds | None, split: ProcessedSplit, name: str) -> np.ndarray:
    """Each row's novelty slice (index into SLICES) of a processed split, from the split's raw ids."""
    if known is None:
        raise DataError(f"{PREPROCESSOR}: holds no training albums and artists (written by an older version); "
                        "run `dvc repro preprocess` again")
    songs = read_split(name, (TRACK_ID, ALBUM_ID, ARTIST))
    if not np.array_equal(songs[TRACK_ID].to_numpy(dtype=str), split.track_ids):
        raise DataError(f"{processed_path(name)}: its rows are not those of the split stage's {name} split; "
                        "run `dvc repro preprocess` again")
    return known.codes(songs)


def multi_genre_tracks(songs: pd.DataFrame) -> int:
    """How many tracks carry more than one genre label."""
    return int((songs.groupby(TRACK_ID)[LABEL].nunique() > 1).sum())


def _read_labels() -> pd.DataFrame:
    """Every song's track id and genre, from the three raw splits."""
    return pd.concat([read_split(name, (TRACK_ID, LABEL)) for name in SPLITS], ignore_index=True)


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    started, startup_seconds = time.perf_counter(), seconds_since_start()
    params = load_params()
    splits = read_processed_splits()
    split_report = read_report(SPLIT_REPORT, "split")
    anova = read_report(ANOVA_REPORT, "select")
    preprocessor = load_preprocessor(PREPROCESSOR)
    training = read_report(TRAINING_SUMMARY, "train")
    baselines = read_baselines()
    baseline_predictions = checked_predictions(read_baseline_predictions(splits["test"].track_ids), splits["test"],
                                               baselines)
    curves = {name: read_curve(path, "loss") for name, path in LOSS_CURVES.items()}
    songs = _read_labels()

    predict_started = time.perf_counter()
    record, probabilities = read_mlp_predictions({name: splits[name].track_ids for name in PREDICTED_SPLITS})
    checked_record(record, splits["test"].feature_names, preprocessor.sha256, split_report.get("raw_sha256"))
    test_proba, val_proba = probabilities["test"], probabilities["val"]
    predict_seconds = time.perf_counter() - predict_started

    metrics_started = time.perf_counter()
    novelty = {name: novelty_codes(preprocessor.known, splits[name], name) for name in ("test", "val")}
    metrics = evaluation_metrics(splits["test"], test_proba, splits["val"], val_proba, baselines,
                                 baseline_predictions, params.evaluate.bootstrap, novelty)
    metrics_seconds = time.perf_counter() - metrics_started
    test = splits["test"]
    predictions = prediction_table(pd.Series(test.track_ids, name=TRACK_ID), test_proba, GENRES,
                                   actual=np.asarray(GENRES)[test.labels])
    counts = confusion_counts(splits["test"].labels, test_proba.argmax(axis=1), len(GENRES))
    best_epoch = training.get("best_epoch")

    write_json(METRICS, metrics)
    write_text(PREDICTIONS, predictions_csv(predictions))
    write_text(PER_CLASS_F1, per_class_f1_csv(metrics["per_class"]))
    write_text(NOVELTY_PLOT, novelty_csv(metrics["novelty"]["test"]))
    figures_started = time.perf_counter()
    write_novelty_png(NOVELTY_PNG, metrics["novelty"]["test"])
    write_loss_png(LOSS_PNG, curves["train"], curves["val"], best_epoch)
    write_confusion_png(CONFUSION_PNG, row_normalised(counts), GENRES)
    figures_seconds = time.perf_counter() - figures_started
    write_text(MODEL_CARD, model_card(
        metrics=metrics, data_sha256=record.data_sha256, split=split_report, anova=anova,
        preprocessor=preprocessor.to_dict(),
        feature_count=len(record.feature_names), architecture=dict(record.architecture), params=record.params,
        training=training, multi_genre_tracks=multi_genre_tracks(songs)))
    write_json(TIMING, {"startup_s": startup_seconds, "predictions_s": round(predict_seconds, 3),
                        "metrics_s": round(metrics_seconds, 3), "figures_s": round(figures_seconds, 3),
                        "total_s": round(time.perf_counter() - started, 3)})

    print("\n".join(summary_lines(metrics)))
    return 0


if __name__ == "__main__":
    exit_with(main)
