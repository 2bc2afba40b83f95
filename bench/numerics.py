"""Section `numerics`: what the numerics pin (spotify_genre/numerics.py) costs the train stage's loop.

Each run is a fresh process, since every library reads its setting once, at load: one with the pin, one with
SPOTIFY_GENRE_NUMERICS=native (every library on its fastest path for this CPU), alternating, so both see the same
load. Both train the train stage's own model (embedding included) on the prepared training split with the
default params, through `pipeline.mlp_fitting.fit`, for the same epochs after one warm-up epoch.

    python -m bench.numerics PROJECT EPOCHS   # one measurement, as JSON on stdout (what the section runs)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.context import Context
from bench.measure import BenchError, summary
from bench.project import ROOT

EPOCHS = 5
QUICK_EPOCHS = 2
MODES = ("portable", "native")


def samples_per_s(project: Path, epochs: int) -> dict:
    """The train stage's loop, in this process, under whatever numerics it started with."""
    import torch

    from bench.training import configure_torch, load_split, stage_loop_seconds
    from pipeline.mlp_fitting import embedding_config
    from pipeline.params import load_params
    from spotify_genre.model import build_mlp
    from spotify_genre.numerics import in_effect
    from spotify_genre.songs.schema import GENRES

    params = load_params(project / "params.yaml")
    config = params.train
    configure_torch(config.seed, config.threads)
    cpu = torch.device("cpu")
    train, val = load_split(project, "train", cpu), load_split(project, "val", cpu)
    model = build_mlp(n_features=train[0].shape[1], n_classes=len(GENRES), hidden_sizes=config.hidden_sizes,
                      dropout=config.dropout, embedding=embedding_config(train[0].numpy(), config),
                      members=config.members)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    stage_loop_seconds(model, initial, train, val, params, 1)  # warm-up
    seconds = stage_loop_seconds(model, initial, train, val, params, epochs)
    return {"samples_per_s": len(train[1]) * epochs / seconds, "numerics": in_effect(),
            "rows": len(train[1]), "features": int(train[0].shape[1])}


def _child(project: Path, epochs: int, mode: str) -> dict:
    from spotify_genre.numerics import MODE_VARIABLE, unpinned_environment

    env = unpinned_environment() if mode == "native" else dict(os.environ, **{MODE_VARIABLE: mode})
    result = subprocess.run([sys.executable, "-m", "bench.numerics", str(project), str(epochs)], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"numerics ({mode}) exited {result.returncode}: {result.stderr.strip()[-300:]}")
    return json.loads(result.stdout)


def measure(ctx: Context) -> dict:
    project = ctx.prepared("preprocess")
    epochs = QUICK_EPOCHS if ctx.quick else EPOCHS
    ctx.log(f"numerics: the train loop pinned and native, {epochs} epochs a run, x{ctx.runs}, alternating")
    measured: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(ctx.runs):
        for mode in MODES:
            measured[mode].append(_child(project, epochs, mode))
    rates = {mode: [run["samples_per_s"] for run in runs] for mode, runs in measured.items()}
    first = measured["portable"][0]
    return {
        "rows": first["rows"],
        "features": first["features"],
        "epochs_per_run": epochs,
        "numerics": {mode: runs[0]["numerics"] for mode, runs in measured.items()},
        "pinned_samples_per_s": summary(rates["portable"]),
        "native_samples_per_s": summary(rates["native"]),
        "slowdown": summary([n / p for n, p in zip(rates["native"], rates["portable"])]),
    }


if __name__ == "__main__":
    print(json.dumps(samples_per_s(Path(sys.argv[1]), int(sys.argv[2]))))
