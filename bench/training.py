"""Section `training`: the train stage's loop against a plain DataLoader(TensorDataset) loop, in one process.

Both train the same model (same initial weights) on the same preprocessed training split with the same
optimizer, batch size and thread count, under the global torch settings the train stage uses. The stage's loop
is `pipeline.mlp_fitting.fit` itself (its training passes, which also compute the epoch's train metrics; validation is
not counted); the plain loop is the usual tutorial loop: shuffled DataLoader batches, forward, backward, step,
and the running loss and accuracy through `.item()`. A third loop repeats the steps on one batch, with no data
handling at all: the compute bound that no loop can beat. They alternate, run by run, so all see the same load.
"""

from __future__ import annotations

import time

from bench.context import Context
from bench.measure import summary

EPOCHS = 5
QUICK_EPOCHS = 2
TARGET_RATIO = 2.0


def configure_torch(seed: int, threads: int, device_type: str = "cpu") -> None:
    """The global settings the train stage applies before it trains (seeds, deterministic kernels, threads)."""
    import torch

    from pipeline.mlp_fitting import seed_everything

    seed_everything(seed, threads, torch.device(device_type))


def load_split(project, name: str, device):
    import torch

    from pipeline.artifacts import processed_path, read_processed

    split = read_processed(project / processed_path(name))
    return torch.tensor(split.features, device=device), torch.tensor(split.labels, device=device)


def plain_loop_seconds(model, features, labels, *, lr: float, momentum: float, weight_decay: float,
                       batch_size: int, epochs: int, seed: int) -> float:
    """Wall time of `epochs` epochs of the usual DataLoader(TensorDataset) training loop."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(features, labels), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed),
                        drop_last=len(labels) % batch_size == 1)  # BatchNorm cannot train on a batch of one
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        total_loss, correct = 0.0, 0
        for batch, target in loader:
            logits = model(batch)
            loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(target)
            correct += (logits.argmax(dim=1) == target).sum().item()
    return time.perf_counter() - started


def compute_only_seconds(model, features, labels, *, lr: float, momentum: float, weight_decay: float,
                         batch_size: int, epochs: int) -> float:
    """The same number of steps on one batch, reused: no data handling at all, the bound for any loop."""
    import torch
    from torch import nn

    batch, target = features[:batch_size], labels[:batch_size]
    steps = epochs * max(len(labels) // batch_size, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) * len(labels) * epochs / (steps * len(batch))


def stage_loop_seconds(model, initial: dict, train, val, params, epochs: int) -> float:
    """Time of the training passes of `pipeline.mlp_fitting.fit` over `epochs` epochs (no early stop), from
    `initial`."""
    from pipeline.mlp_fitting import fit
    from spotify_genre.songs.schema import GENRES

    model.load_state_dict(initial)
    fixed = params.train.model_copy(update={"max_epochs": epochs, "patience": epochs})
    return fit(model, train, val, lr=params.lr, momentum=params.momentum, batch_size=params.batch_size,
               config=fixed, n_classes=len(GENRES)).train_seconds


def measure(ctx: Context) -> dict:
    import torch

    from pipeline.params import load_params
    from spotify_genre.model import build_mlp
    from spotify_genre.songs.schema import GENRES

    project = ctx.prepared("preprocess")
    params = load_params(project / "params.yaml")
    config = params.train
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    configure_torch(config.seed, config.threads)
    cpu = torch.device("cpu")
    train, val = load_split(project, "train", cpu), load_split(project, "val", cpu)
    rows = len(train[1])
    model = build_mlp(n_features=train[0].shape[1], n_classes=len(GENRES), hidden_sizes=config.hidden_sizes,
                      dropout=config.dropout)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def stage_loop(count: int) -> float:
        return stage_loop_seconds(model, initial, train, val, params, count)

    def plain_loop(count: int) -> float:
        model.load_state_dict(initial)
        return plain_loop_seconds(model, *train, lr=params.lr, momentum=params.momentum,
                                  weight_decay=config.weight_decay, batch_size=params.batch_size, epochs=count,
                                  seed=config.seed)

    def compute_only(count: int) -> float:
        model.load_state_dict(initial)
        return compute_only_seconds(model, *train, lr=params.lr, momentum=params.momentum,
                                    weight_decay=config.weight_decay, batch_size=params.batch_size, epochs=count)

    ctx.log(f"training: {rows:,} rows, {epochs} epochs per run, x{ctx.runs} (after one warm-up epoch each)")
    loops = {"stage": stage_loop, "dataloader": plain_loop, "compute_only": compute_only}
    for loop in loops.values():
        loop(1)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(ctx.runs):
        for name, loop in loops.items():
            rates[name].append(rows * epochs / loop(epochs))
    ratio = summary([s / p for s, p in zip(rates["stage"], rates["dataloader"])])
    return {
        "rows": rows,
        "features": int(train[0].shape[1]),
        "epochs_per_run": epochs,
        "batch_size": params.batch_size,
        "threads": config.threads,
        "hidden_sizes": list(config.hidden_sizes),
        "stage_loop_samples_per_s": summary(rates["stage"]),
        "dataloader_samples_per_s": summary(rates["dataloader"]),
        "compute_only_samples_per_s": summary(rates["compute_only"]),
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
    }
