"""Section `cuda`: the train stage's training (`pipeline.mlp_fitting.fit`, default params, early stopping) on CPU and
GPU.

Needs neither DVC nor DVCLive: the preprocessed data comes from the stages' commands run directly. Skipped, with
the reason, where torch sees no CUDA device. Runs alternate between the devices, each from the same seed. Then
the throughput alone at larger batch sizes, on both devices.
"""

from __future__ import annotations

from bench.context import Context
from bench.measure import summary
from bench.training import configure_torch, load_split

QUICK_MAX_EPOCHS = 5
# Throughput alone, at the default batch and larger ones: where a GPU starts to pay for its per-step overhead.
SWEEP_BATCHES = (256, 2048, 16384)
SWEEP_EPOCHS = 3


def measure(ctx: Context) -> dict:
    import torch

    if not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        return {"skipped": f"no CUDA device: torch {torch.__version__} ({build}) sees no GPU"}

    from pipeline.mlp_fitting import fit
    from pipeline.params import load_params
    from spotify_genre.model import build_mlp
    from spotify_genre.songs.schema import GENRES

    project = ctx.prepared("preprocess")
    params = load_params(project / "params.yaml")
    config = params.train
    if ctx.quick:
        config = config.model_copy(update={"max_epochs": min(config.max_epochs, QUICK_MAX_EPOCHS)})

    def fit_on(device: torch.device, batch_size: int, used):
        """`fit` from the train stage's seed, on `device`: its result and the number of training rows."""
        configure_torch(config.seed, config.threads, device.type)
        train, val = load_split(project, "train", device), load_split(project, "val", device)
        model = build_mlp(n_features=train[0].shape[1], n_classes=len(GENRES), hidden_sizes=config.hidden_sizes,
                          dropout=config.dropout).to(device)
        result = fit(model, train, val, lr=params.lr, momentum=params.momentum, batch_size=batch_size,
                     config=used, n_classes=len(GENRES))
        return result, len(train[1])

    def train_once(device: torch.device, max_epochs: int | None = None) -> dict:
        used = config if max_epochs is None else config.model_copy(update={"max_epochs": max_epochs})
        result, rows = fit_on(device, params.batch_size, used)
        return {"samples_per_s": rows * result.stopped_epoch / result.train_seconds,
                "to_best_s": sum(result.epoch_seconds[:result.best_epoch]),
                "fit_s": sum(result.epoch_seconds), "epochs": result.stopped_epoch, "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best.val_accuracy, "rows": rows}

    def throughput(device: torch.device, batch_size: int) -> float:
        """Samples/s of the training passes over SWEEP_EPOCHS epochs at `batch_size`, no early stopping."""
        fixed = config.model_copy(update={"max_epochs": SWEEP_EPOCHS, "patience": SWEEP_EPOCHS})
        result, rows = fit_on(device, batch_size, fixed)
        return rows * SWEEP_EPOCHS / result.train_seconds

    devices = [torch.device("cpu"), torch.device("cuda")]
    ctx.log(f"cuda: {torch.cuda.get_device_name(0)}; one warm-up epoch per device, then x{ctx.runs} alternating")
    for device in devices:
        train_once(device, max_epochs=1)
    runs = {device.type: [] for device in devices}
    for _ in range(ctx.runs):
        for device in devices:
            runs[device.type].append(train_once(device))
    ctx.log(f"cuda: throughput at batch sizes {', '.join(map(str, SWEEP_BATCHES))}, x{ctx.runs}")
    sweep = {device.type: {str(batch): summary([throughput(device, batch) for _ in range(ctx.runs)])
                           for batch in SWEEP_BATCHES} for device in devices}
    return {
        "gpu": torch.cuda.get_device_name(0),
        "batch_sweep": {"epochs": SWEEP_EPOCHS, "samples_per_s": sweep},
        "torch": torch.__version__,
        "cpu_threads": config.threads,
        "batch_size": params.batch_size,
        "max_epochs": config.max_epochs,
        "rows": runs["cpu"][0]["rows"],
        "devices": {
            name: {
                "samples_per_s": summary([r["samples_per_s"] for r in results]),
                "to_best_epoch_s": summary([r["to_best_s"] for r in results]),
                "fit_s": summary([r["fit_s"] for r in results]),
                "epochs": [r["epochs"] for r in results],
                "best_epoch": [r["best_epoch"] for r in results],
                "best_val_accuracy": [round(r["best_val_accuracy"], 4) for r in results],
            }
            for name, results in runs.items()
        },
    }
