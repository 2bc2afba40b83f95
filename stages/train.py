"""Train stage: the MLP (optionally with periodic embeddings of its continuous inputs) with SGD and momentum
(or AdamW), an LR schedule with optional warm-up, and early stopping, tracked by DVCLive.

Inputs: data/processed/{train,val}.parquet and models/preprocessor.json. Outputs: models/model.pt (the weights of
the best epoch), dvclive/metrics.json and dvclive/plots (per-epoch curves; no timings, so they are the same on
every run), and reports/timing/train.json (time and throughput, outside Git and DVC).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from stages.errors import DataError, PipelineError, exits_cleanly
from stages.files import write_json
from stages.model import build_mlp, resolve_device, save_bundle
from stages.numerics import in_effect
from stages.params import TrainParams, load_params
from stages.processed import ProcessedSplit, processed_path, read_processed
from stages.schema import GENRES

PREPROCESSOR_PATH = Path("models/preprocessor.json")
MODEL_PATH = Path("models/model.pt")
LIVE_DIR = Path("dvclive")
TIMING_PATH = Path("reports/timing/train.json")
_EVAL_BATCH = 8192


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch. The train figures are averages over the epoch's batches, in training mode (the loss with
    train.label_smoothing applied); the validation loss never smooths its labels."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    train_f1_macro: float
    val_loss: float
    val_accuracy: float
    val_f1_macro: float


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    history: list[EpochMetrics]
    best_epoch: int
    epoch_seconds: list[float]  # wall time of each epoch, validation included
    train_seconds: float  # time spent in the training passes alone

    @property
    def best(self) -> EpochMetrics:
        return self.history[self.best_epoch - 1]

    @property
    def stopped_epoch(self) -> int:
        return self.history[-1].epoch


def macro_f1(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions (as scikit-learn)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    counts = np.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes)
    confusion = counts.reshape(n_classes, n_classes)
    return _macro_f1_from_confusion(confusion)


def _macro_f1_from_confusion(confusion: np.ndarray) -> float:
    true_positives = np.diag(confusion).astype(np.float64)
    actual = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = (actual + predicted) > 0
    if not present.any():
        return 0.0
    denominator = (actual + predicted)[present]
    return float(np.mean(2.0 * true_positives[present] / denominator))


def batch_bounds(rows: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch; a last batch of one row joins the one before (BatchNorm needs two)."""
    starts = list(range(0, rows, batch_size))
    if len(starts) > 1 and rows - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [rows]))


def lr_factor(epoch: int, config: TrainParams) -> float:
    """The multiple of the base learning rate for a 0-based epoch, under schedule cosine, step or none.

    A linear warm-up over the first `warmup_epochs` epochs, then the schedule over the epochs left."""
    warmup = config.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    done = epoch - warmup
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done / (config.max_epochs - warmup)))
    if config.schedule == "step":
        return config.gamma ** (done // config.step_size)
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainParams):
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.gamma, patience=config.plateau_patience,
            threshold=config.min_delta, threshold_mode="abs")
    if config.schedule == "none" and not config.warmup_epochs:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, config))


def make_optimizer(model: nn.Module, lr: float, momentum: float, config: TrainParams) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=config.weight_decay)


def continuous_columns(features: np.ndarray) -> list[int]:
    """The columns with a training value other than 0 and 1: those the embedding is for (indicators pass)."""
    return [i for i in range(features.shape[1]) if not np.isin(features[:, i], (0.0, 1.0)).all()]


def embedding_config(features: np.ndarray, config: TrainParams) -> dict | None:
    """The architecture's `embedding` entry: None where train.embedding.kind is none or no column is continuous."""
    columns = continuous_columns(features) if config.embedding.kind == "periodic" else []
    if not columns:
        return None
    return {"columns": columns, "frequencies": config.embedding.frequencies, "dim": config.embedding.dim,
            "sigma": config.embedding.sigma}


def _evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor,
              n_classes: int) -> tuple[float, float, float]:
    """Loss, accuracy and macro-F1 in eval mode."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=features.device)
    predictions = []
    with torch.no_grad():
        for start in range(0, len(features), _EVAL_BATCH):
            logits = model(features[start:start + _EVAL_BATCH])
            target = labels[start:start + _EVAL_BATCH]
            loss += nn.functional.cross_entropy(logits, target, reduction="sum").double()
            predictions.append(logits.argmax(dim=1))
    return _summarise(loss.item() / len(labels), torch.cat(predictions), labels, n_classes)


def _summarise(loss: float, predictions: torch.Tensor, labels: torch.Tensor,
               n_classes: int) -> tuple[float, float, float]:
    confusion = torch.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes).cpu().numpy()
    accuracy = float(np.trace(confusion) / confusion.sum())
    return loss, accuracy, _macro_f1_from_confusion(confusion)


def fit(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], *,
        lr: float, momentum: float, batch_size: int, config: TrainParams, n_classes: int,
        on_epoch: Callable[[EpochMetrics, bool], None] | None = None) -> FitResult:
    """Train on tensors already on the model's device; stop early on validation loss; return the best weights.

    Deterministic given the global torch seed (dropout) and `config.seed` (the order of the rows).
    """
    train_x, train_y = train
    val_x, val_y = val
    optimizer = make_optimizer(model, lr, momentum, config)
    scheduler = make_scheduler(optimizer, config)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    order = torch.Generator().manual_seed(config.seed)
    bounds = batch_bounds(len(train_y), batch_size)
    batch_rows = torch.tensor([stop - start for start, stop in bounds], dtype=torch.float64, device=train_x.device)

    history: list[EpochMetrics] = []
    best_state: dict[str, torch.Tensor] = {}
    best_loss, best_epoch, waited = math.inf, 0, 0
    epoch_seconds: list[float] = []
    train_seconds = 0.0
    for epoch in range(1, config.max_epochs + 1):
        started = time.perf_counter()
        lr_now = optimizer.param_groups[0]["lr"]
        model.train()
        permutation = torch.randperm(len(train_y), generator=order).to(train_x.device)
        shuffled_x, shuffled_y = train_x[permutation], train_y[permutation]
        losses, predictions = [], []
        for start, stop in bounds:
            logits = model(shuffled_x[start:stop])
            loss = loss_fn(logits, shuffled_y[start:stop])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            predictions.append(logits.detach().argmax(dim=1))
        mean_loss = (torch.stack(losses).double() @ batch_rows).item() / len(train_y)
        train_metrics = _summarise(mean_loss, torch.cat(predictions), shuffled_y, n_classes)
        train_seconds += time.perf_counter() - started
        val_metrics = _evaluate(model, val_x, val_y, n_classes)
        metrics = EpochMetrics(epoch, lr_now, *train_metrics, *val_metrics)
        if not (math.isfinite(metrics.train_loss) and math.isfinite(metrics.val_loss)):
            raise PipelineError(f"training diverged at epoch {epoch} (train loss {metrics.train_loss}, "
                                f"val loss {metrics.val_loss}): lower lr (now {lr}) or momentum")
        history.append(metrics)

        improved = metrics.val_loss < best_loss - config.min_delta
        if improved:
            best_loss, best_epoch, waited = metrics.val_loss, epoch, 0
            best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        else:
            waited += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metrics.val_loss)
        elif scheduler is not None:
            scheduler.step()
        epoch_seconds.append(time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(metrics, improved)
        if waited >= config.patience:
            break
    return FitResult(best_state, history, best_epoch, epoch_seconds, train_seconds)


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
                  stage_seconds: float) -> dict:
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
        "numerics": in_effect(),
    }


def _read_split(name: str) -> ProcessedSplit:
    path = processed_path(name)
    if not os.path.isfile(path):
        raise DataError(f"{path}: not found (run `dvc repro preprocess` first)")
    try:
        split = read_processed(path)
    except ValueError as error:
        raise DataError(str(error)) from None
    if len(split.labels) == 0:
        raise DataError(f"{path}: no rows")
    bad_rows, bad_columns = np.nonzero(~np.isfinite(split.features))
    if len(bad_rows):
        raise DataError(f"{path}: row {bad_rows[0] + 1}, column {split.feature_names[bad_columns[0]]!r}: "
                        "not a finite number (the preprocessed data should have none)")
    return split


def _read_preprocessor() -> tuple[dict, str]:
    """The preprocessor's reference for the bundle, and the raw data's sha256 that it records."""
    try:
        content = PREPROCESSOR_PATH.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{PREPROCESSOR_PATH}: not found (run `dvc repro preprocess` first)") from None
    try:
        data_sha256 = json.loads(content)["data_sha256"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{PREPROCESSOR_PATH}: expected a JSON object with a data_sha256 string") from None
    if not isinstance(data_sha256, str):
        raise DataError(f"{PREPROCESSOR_PATH}: data_sha256 should be a string")
    reference = {"path": PREPROCESSOR_PATH.as_posix(), "sha256": hashlib.sha256(content).hexdigest()}
    return reference, data_sha256


def seed_everything(seed: int, threads: int, device: torch.device) -> None:
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace, set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN to catch reads of uninitialised memory, about 15%
    # of this loop's CPU time; no operation here reads memory it did not write.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.set_num_threads(threads)


def _on_device(split: ProcessedSplit, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(split.features, device=device), torch.tensor(split.labels, device=device)


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
    argparse.ArgumentParser(prog="python -m stages.train", description=__doc__.splitlines()[0]).parse_args(argv)
    params = load_params()
    config = params.train
    device = resolve_device(config.device)
    seed_everything(config.seed, config.threads, device)

    train, val = _read_split("train"), _read_split("val")
    if train.feature_names != val.feature_names:
        raise DataError(f"{processed_path('val')}: its feature columns differ from {processed_path('train')}'s")
    if len(train.labels) < 2:
        raise DataError(f"{processed_path('train')}: at least 2 rows are needed to train, found {len(train.labels)}")
    preprocessor, data_sha256 = _read_preprocessor()

    architecture = {"n_features": len(train.feature_names), "n_classes": len(GENRES),
                    "hidden_sizes": list(config.hidden_sizes), "dropout": float(config.dropout),
                    "embedding": embedding_config(train.features, config)}
    model = build_mlp(**architecture).to(device)
    progress = _Progress(config.max_epochs)
    try:
        result = fit(model, _on_device(train, device), _on_device(val, device), lr=params.lr, momentum=params.momentum,
                     batch_size=params.batch_size, config=config, n_classes=len(GENRES), on_epoch=progress)
    finally:
        progress.close()

    model.load_state_dict(result.best_state)
    save_bundle(MODEL_PATH, model, architecture=architecture, feature_names=train.feature_names,
                class_names=GENRES, preprocessor=preprocessor,
                params={"lr": params.lr, "momentum": params.momentum, "batch_size": params.batch_size,
                        "train": config.model_dump()},
                data_sha256=data_sha256)
    write_tracking(result)

    timing = timing_report(result, device, config.threads, len(train.labels), len(val.labels),
                           time.perf_counter() - stage_started)
    write_json(TIMING_PATH, timing)
    best = result.best
    print(f"trained {timing['epochs']} epochs on {device} in {timing['fit_seconds']:.2f} s "
          f"({timing['seconds_per_epoch']:.3f} s/epoch, {timing['train_samples_per_s']:,.0f} samples/s); "
          f"best epoch {result.best_epoch}: val loss {best.val_loss:.4f}, val accuracy {best.val_accuracy:.4f}, "
          f"val macro-F1 {best.val_f1_macro:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
