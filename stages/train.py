"""Train stage: the MLP (optionally with periodic embeddings of its continuous inputs) with SGD and momentum
(or AdamW), an LR schedule with optional warm-up, and early stopping, tracked by DVCLive.

Inputs: data/processed/{train,val,test}.parquet and models/preprocessor.json. Outputs: models/model.pt (the
weights of the best epoch), data/mlp/predictions.parquet (that model's probabilities of the val and test rows,
predicted from the bundle as saved, for the evaluate stage, which so needs no torch; the test rows are read only
then, after training), dvclive/metrics.json and dvclive/plots (per-epoch curves; no timings, so they are the
same on every run), and reports/timing/train.json (time and throughput, outside Git and DVC).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline.artifacts import (LIVE_DIR, MODEL, PREPROCESSOR, ProcessedSplit, processed_path, read_model_inputs,
                                read_processed_splits)
from pipeline.mlp_fitting import EpochMetrics, FitResult, train_model
from pipeline.mlp_predictions import (MLP_PREDICTIONS, PREDICTED_SPLITS, ModelRecord, file_sha256,
                                     write_mlp_predictions)
from pipeline.params import load_params
from pipeline.timing import exit_with, seconds_since_start
from spotify_genre.atomic import write_json
from spotify_genre.errors import DataError, exits_cleanly
from spotify_genre.model import load_bundle, predict_proba, resolve_device, save_bundle
from spotify_genre.numerics import in_effect
from spotify_genre.preprocessing import load_preprocessor
from spotify_genre.songs import GENRES

TIMING_PATH = Path("reports/timing/train.json")


def _tracked(metrics: EpochMetrics) -> dict[str, float]:
    return {
        "train/loss": metrics.train_loss, "val/loss": metrics.val_loss,
        "train/accuracy": metrics.train_accuracy, "val/accuracy": metrics.val_accuracy,
        "train/f1_macro": metrics.train_f1_macro, "val/f1_macro": metrics.val_f1_macro,
        "lr": metrics.lr,
    }


def write_tracking(result: FitResult, live_dir: Path = LIVE_DIR) -> None:
    """Log every epoch and the summary through DVCLive, then put `metrics.json` and `plots/` in place whole.

    DVCLive writes into a fresh folder outside the repository: no dvc.yaml (the project's declares the plots), no
    report, no experiment of its own, no timestamps. The files move into `live_dir` only once all are written.
    """
    from dvclive import Live

    with tempfile.TemporaryDirectory(prefix="dvclive-") as staging:
        live = Live(dir=staging, resume=False, report=None, save_dvc_exp=False, dvcyaml=None,
                    cache_images=False, monitor_system=False)
        for metrics in result.history:
            live.step = metrics.epoch
            for name, value in _tracked(metrics).items():
                live.log_metric(name, value)
        live.summary = {
            "best_epoch": result.best_epoch,
            "stopped_epoch": result.stopped_epoch,
            "best_val_loss": result.best.val_loss,
            "best_val_accuracy": result.best.val_accuracy,
            "best_val_f1_macro": result.best.val_f1_macro,
        }
        live.step = result.stopped_epoch
        live.end()
        _install(Path(staging), live_dir)


def _install(staging: Path, live_dir: Path) -> None:
    live_dir.mkdir(parents=True, exist_ok=True)
    for leftover in live_dir.glob(".plots*"):  # from a run killed while it was installing
        shutil.rmtree(leftover, ignore_errors=True)
    incoming = Path(tempfile.mkdtemp(prefix=".plots.", dir=live_dir))
    try:
        shutil.copytree(staging / "plots", incoming, dirs_exist_ok=True)
        old = live_dir / "plots"
        if old.exists():
            retired = Path(tempfile.mkdtemp(prefix=".plots-old.", dir=live_dir))
            os.replace(old, retired / "plots")
            os.replace(incoming, old)
            shutil.rmtree(retired)
        else:
            os.replace(incoming, old)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    write_json(live_dir / "metrics.json", json.loads((staging / "metrics.json").read_text(encoding="utf-8")))


def timing_report(result: FitResult, device: torch.device, threads: int, train_rows: int, val_rows: int,
                  stage_seconds: float, parts: dict[str, float | None] | None = None) -> dict:
    """Time and throughput: they change from run to run, so they stay out of DVCLive's files and of Git."""
    epochs = result.stopped_epoch
    fit_seconds = sum(result.epoch_seconds)
    return {
        "device": str(device),
        "threads": threads,
        "train_rows": train_rows,
        "val_rows": val_rows,
        "epochs": epochs,
        "best_epoch": result.best_epoch,
        "fit_seconds": round(fit_seconds, 4),
        "seconds_per_epoch": round(fit_seconds / epochs, 4),
        "seconds_to_best_epoch": round(sum(result.epoch_seconds[:result.best_epoch]), 4),
        "train_samples_per_s": round(train_rows * epochs / result.train_seconds, 1),
        "stage_seconds": round(stage_seconds, 4),
        # before main() (start-up and imports), then the steps after the fit: predicting val and test, DVCLive
        **{name: None if value is None else round(value, 4) for name, value in (parts or {}).items()},
        "numerics": in_effect(),
    }


def _preprocessor_reference() -> tuple[dict, str]:
    """The preprocessor file for the bundle to record ({path, sha256}), and the raw data's sha256 it records."""
    preprocessor = load_preprocessor(PREPROCESSOR)
    return {"path": PREPROCESSOR.as_posix(), "sha256": preprocessor.sha256}, preprocessor.data_sha256


def write_predictions(splits: dict[str, ProcessedSplit], path: Path = MLP_PREDICTIONS) -> None:
    """The saved bundle's probabilities of the val and test rows, as evaluate would compute them: loaded back from
    MODEL and predicted the one way every reader of a bundle does (spotify_genre.model.predict_proba)."""
    bundle = load_bundle(MODEL, feature_names=splits["val"].feature_names, class_names=GENRES)
    text_encoder = bundle.architecture.get("text_encoder")
    record = ModelRecord(
        model_sha256=file_sha256(MODEL), architecture=dict(bundle.architecture),
        feature_names=list(bundle.feature_names), class_names=list(bundle.class_names),
        preprocessor_path=bundle.preprocessor.path, preprocessor_sha256=bundle.preprocessor.sha256,
        params=bundle.params, data_sha256=bundle.data_sha256)
    write_mlp_predictions(path, record, {
        name: (splits[name].track_ids,
               predict_proba(bundle.model, read_model_inputs(name, splits[name], text_encoder)))
        for name in PREDICTED_SPLITS})


class _Progress:
    """A tqdm bar over epochs on a terminal, one plain line per epoch otherwise."""

    def __init__(self, max_epochs: int):
        self.max_epochs = max_epochs
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=max_epochs, unit="epoch", desc="train", dynamic_ncols=True)

    def __call__(self, metrics: EpochMetrics, improved: bool) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics.train_loss:.4f}", acc=f"{metrics.train_accuracy:.3f}",
                                 val_loss=f"{metrics.val_loss:.4f}", val_acc=f"{metrics.val_accuracy:.3f}")
        else:
            print(f"epoch {metrics.epoch:>3}/{self.max_epochs}  lr {metrics.lr:.3g}  "
                  f"train loss {metrics.train_loss:.4f} acc {metrics.train_accuracy:.4f}  "
                  f"val loss {metrics.val_loss:.4f} acc {metrics.val_accuracy:.4f} "
                  f"f1 {metrics.val_f1_macro:.4f}{'  *' if improved else ''}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    stage_started = time.perf_counter()
    startup_seconds = seconds_since_start()
    description = " ".join(__doc__.split("\n\n")[0].split())
    argparse.ArgumentParser(prog="python -m stages.train", description=description).parse_args(argv)
    params = load_params()
    config = params.train
    resolve_device(config.device)  # a device that cannot be had fails before any data is read

    splits = read_processed_splits(("train", "val"))
    train, val = splits["train"], splits["val"]
    if len(train.labels) < 2:
        raise DataError(f"{processed_path('train')}: at least 2 rows are needed to train, found {len(train.labels)}")
    preprocessor, data_sha256 = _preprocessor_reference()

    progress = _Progress(config.max_epochs)
    try:
        trained = train_model(params, splits, on_epoch=progress)
    finally:
        progress.close()
    model, result, device = trained.model, trained.result, trained.device

    model.load_state_dict(result.best_state)
    save_bundle(MODEL, model, architecture=trained.architecture, feature_names=train.feature_names,
                class_names=GENRES, preprocessor=preprocessor,
                params={"lr": params.lr, "momentum": params.momentum, "batch_size": params.batch_size,
                        "train": config.model_dump()},
                data_sha256=data_sha256)
    predictions_started = time.perf_counter()
    write_predictions(read_processed_splits(PREDICTED_SPLITS))
    tracking_started = time.perf_counter()
    write_tracking(result)
    tracked = time.perf_counter()

    timing = timing_report(result, device, config.threads, len(train.labels), len(val.labels),
                           time.perf_counter() - stage_started,
                           {"startup_s": startup_seconds, "predictions_s": tracking_started - predictions_started,
                            "tracking_s": tracked - tracking_started})
    write_json(TIMING_PATH, timing)
    best = result.best
    print(f"trained {timing['epochs']} epochs on {device} in {timing['fit_seconds']:.2f} s "
          f"({timing['seconds_per_epoch']:.3f} s/epoch, {timing['train_samples_per_s']:,.0f} samples/s); "
          f"best epoch {result.best_epoch}: val loss {best.val_loss:.4f}, val accuracy {best.val_accuracy:.4f}, "
          f"val macro-F1 {best.val_f1_macro:.4f}")
    return 0


if __name__ == "__main__":
    exit_with(main)
