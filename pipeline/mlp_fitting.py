"""Fitting the MLP: the training loop (SGD with momentum or AdamW, an LR schedule with optional warm-up, early
stopping on the validation loss; pure: tensors and params in, the best weights and the history out), and
train_model, which builds the network a run's params describe and fits it on the processed splits.

The train stage, bench and hyperparameter tuning all train through train_model() or fit().
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.artifacts import ProcessedSplit, processed_path, read_model_inputs
from pipeline.metrics import accuracy, macro_f1
from pipeline.params import Params, TrainParams
from pipeline.subgenres import fit_subgenres
from spotify_genre.errors import DataError, PipelineError
from spotify_genre.model import GenreMixture, build_mlp, log_probabilities, model_members, resolve_device, training_loss
from spotify_genre.model.blas import fixed_threads
from spotify_genre.songs.schema import GENRES

_EVAL_BATCH = 8192


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch. The train figures are averages over the epoch's batches, in training mode (the genres' loss with
    train.label_smoothing applied, without the subgenres' term); the validation loss never smooths its labels."""

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


class MomentumSGD:
    """torch.optim.SGD's update with momentum and weight decay (no dampening, no Nesterov), its CPU path operation
    for operation, so the weights come out the same to the bit. torch.optim is not used because its optimisers
    import torch._dynamo (and with it sympy) at construction and at every step: about a second of each training
    run's start-up on a 2-core CPU, for a compiler this loop never uses."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float):
        self.params = [param for param in params if param.requires_grad]
        self.param_groups = [{"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "dampening": 0.0,
                              "nesterov": False}]
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            if weight_decay != 0:
                grad = grad.add(param, alpha=weight_decay)
            if momentum != 0:
                buffer = self.momentum_buffers[i]
                if buffer is None:
                    buffer = grad.detach().clone()
                    self.momentum_buffers[i] = buffer
                else:
                    buffer.mul_(momentum).add_(grad, alpha=1.0)
                grad = buffer
            param.add_(grad, alpha=-lr)


class EpochSchedule:
    """The learning rate of each epoch set to the base rate times lr_factor(epoch), as torch's LambdaLR sets it
    (the same product), for any optimiser with param_groups."""

    def __init__(self, optimizer, config: TrainParams):
        self.optimizer, self.config, self.epoch = optimizer, config, 0
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self._apply()

    def step(self) -> None:
        self.epoch += 1
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * lr_factor(self.epoch, self.config)


def make_scheduler(optimizer, config: TrainParams):
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.gamma, patience=config.plateau_patience,
            threshold=config.min_delta, threshold_mode="abs")
    if config.schedule == "none" and not config.warmup_epochs:
        return None
    return EpochSchedule(optimizer, config)


def make_optimizer(model: nn.Module, lr: float, momentum: float, config: TrainParams):
    """AdamW, or SGD with momentum: torch's own where the plateau schedule (torch's ReduceLROnPlateau) needs it,
    else MomentumSGD."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    if config.schedule == "plateau":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=config.weight_decay)
    return MomentumSGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=config.weight_decay)


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


def combined_logits(logits: torch.Tensor) -> torch.Tensor:
    """One model's logits as they are; an ensemble's as the log of its members' mean probabilities."""
    return logits if logits.dim() == 2 else log_probabilities(logits)


def text_encoder_config(config: TrainParams) -> dict | None:
    """The architecture's `text_encoder` entry: None where train.text_encoder.kind is none."""
    return None if config.text_encoder.kind == "none" else config.text_encoder.model_dump()


def subgenre_config(train: ProcessedSplit, config: TrainParams) -> dict | None:
    """The architecture's `subgenres` entry ({names, genres} of the training rows' subgenres): None where
    train.subgenre_weight is 0."""
    if not config.subgenre_weight:
        return None
    subgenres = fit_subgenres(train.labels, _training_subgenres(train))
    return {"names": list(subgenres.names), "genres": subgenres.genres.tolist()}


def subgenre_tensor(train: ProcessedSplit, config: TrainParams, device: torch.device) -> torch.Tensor | None:
    """Each training row's subgenre (index into the architecture's `subgenres`) as fit() takes them, or None
    where train.subgenre_weight is 0."""
    if not config.subgenre_weight:
        return None
    subgenres = _training_subgenres(train)
    return torch.tensor(fit_subgenres(train.labels, subgenres).codes(train.labels, subgenres), device=device)


def _training_subgenres(train: ProcessedSplit) -> np.ndarray:
    if train.subgenres is None:
        raise DataError(f"{processed_path('train')}: no subgenre column, which train.subgenre_weight needs; "
                        "run `dvc repro preprocess` again")
    return train.subgenres


def model_architecture(train: ProcessedSplit, config: TrainParams) -> dict:
    """The bundle's `architecture`, build_mlp()'s arguments, for a model trained on `train` under `config`."""
    return {"n_features": len(train.feature_names), "n_classes": len(GENRES),
            "hidden_sizes": list(config.hidden_sizes), "dropout": float(config.dropout),
            "embedding": embedding_config(train.features, config), "members": config.members,
            "text_encoder": text_encoder_config(config), "subgenres": subgenre_config(train, config)}


def _evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor,
              n_classes: int) -> tuple[float, float, float]:
    """Loss, accuracy and macro-F1 in eval mode."""
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=features.device)
    predictions = []
    with torch.no_grad():
        for start in range(0, len(features), _EVAL_BATCH):
            logits = combined_logits(model(features[start:start + _EVAL_BATCH]))
            target = labels[start:start + _EVAL_BATCH]
            loss += nn.functional.cross_entropy(logits, target, reduction="sum").double()
            predictions.append(logits.argmax(dim=1))
    return _summarise(loss.item() / len(labels), torch.cat(predictions), labels, n_classes)


def _summarise(loss: float, predictions: torch.Tensor, labels: torch.Tensor,
               n_classes: int) -> tuple[float, float, float]:
    confusion = torch.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes).cpu().numpy()
    return loss, accuracy(confusion), macro_f1(confusion)


@fixed_threads()  # the products run in numpy's BLAS, whose thread count splits them
def fit(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], *,
        lr: float, momentum: float, batch_size: int, config: TrainParams, n_classes: int,
        on_epoch: Callable[[EpochMetrics, bool], None] | None = None,
        subgenres: torch.Tensor | None = None) -> FitResult:
    """Train on tensors already on the model's device; stop early on validation loss; return the best weights.

    Deterministic given the global torch seed (dropout) and `config.seed` (the order of the rows). A GenreMixture
    model also learns the training rows' `subgenres` (subgenre_tensor), weighted by config.subgenre_weight.
    """
    mixture = isinstance(model, GenreMixture)
    if mixture != (subgenres is not None):
        raise ValueError("a model with subgenre outputs trains with the rows' subgenres, and only such a model")
    train_x, train_y = train
    val_x, val_y = val
    optimizer = make_optimizer(model, lr, momentum, config)
    scheduler = make_scheduler(optimizer, config)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    order = torch.Generator().manual_seed(config.seed)
    members = model_members(model)
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
        shuffled_subgenres = subgenres[permutation] if mixture else None
        losses, predictions = [], []
        for start, stop in bounds:
            logits, genre_loss, loss = training_loss(
                model, shuffled_x[start:stop], shuffled_y[start:stop], loss_fn,
                shuffled_subgenres[start:stop] if mixture else None, config.subgenre_weight)
            losses.append(genre_loss.detach() / members)  # the genres' loss: the curves read the same with or without
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            predictions.append(combined_logits(logits.detach()).argmax(dim=1))
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


def seed_everything(seed: int, threads: int, device: torch.device) -> None:
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace, set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # torch.use_deterministic_algorithms(True) is this call plus a flag in torch._inductor's config, whose import
    # brings in torch's compiler stack (torch._dynamo, sympy): about a second of start-up for a compiler this loop
    # never uses. torch.are_deterministic_algorithms_enabled() reads the flag set here.
    torch._C._set_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN to catch reads of uninitialised memory, about 15%
    # of this loop's CPU time; no operation here reads memory it did not write.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.set_num_threads(threads)


def on_device(split: ProcessedSplit, device: torch.device,
              features: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's features (or the model's `features` for its rows) and labels as tensors on `device`."""
    features = split.features if features is None else features
    return torch.tensor(features, device=device), torch.tensor(split.labels, device=device)


@dataclass
class Trained:
    """A network fitted by train_model: its weights those of its last epoch (result.best_state holds the best's)."""

    model: nn.Module
    architecture: dict
    device: torch.device
    result: FitResult


def train_model(params: Params, splits: dict[str, ProcessedSplit],
                on_epoch: Callable[[EpochMetrics, bool], None] | None = None) -> Trained:
    """The network params.train describes, seeded, built and fitted on the train split, stopping early on val: the
    one way the train stage and every tuning trial fit, so a trial's score is the train stage's for its params."""
    config = params.train
    device = resolve_device(config.device)
    seed_everything(config.seed, config.threads, device)
    architecture = model_architecture(splits["train"], config)
    model = build_mlp(**architecture).to(device)
    inputs = {name: on_device(split, device, read_model_inputs(name, split, architecture["text_encoder"]))
              for name, split in splits.items()}
    result = fit(model, inputs["train"], inputs["val"], lr=params.lr, momentum=params.momentum,
                 batch_size=params.batch_size, config=config, n_classes=len(GENRES), on_epoch=on_epoch,
                 subgenres=subgenre_tensor(splits["train"], config, device))
    return Trained(model, architecture, device, result)
