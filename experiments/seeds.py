"""The MLP against its peers over several split seeds, each seed a full pipeline run (a DVC experiment that
`make seeds` queues): test accuracy and macro-F1 per seed with their means, and the paired MLP − peer intervals
of each run's evaluate stage. The README's seed table is this output.

    python -m experiments.seeds --name seeds-20261206-0400     # the experiments named seeds-20261206-0400-*
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from statistics import fmean

from pipeline.report import interval_text, markdown_table
from pipeline.tools import dvc_executable
from spotify_genre.errors import PipelineError

METRICS = "reports/metrics.json"
PEER_NAMES = {"hist_gradient_boosting": "HistGradientBoosting", "random_forest": "RandomForest",
              "lightgbm": "LightGBM", "xgboost": "XGBoost"}  # the majority class is a floor, not a peer
SCORES = ("accuracy", "f1_macro")


def _pair(scores: dict, prefix: str = "") -> str:
    return " / ".join(f"{scores[prefix + score]:.4f}" for score in SCORES)


def _mean_pair(runs: list[dict], prefix: str = "") -> str:
    return " / ".join(f"{fmean(run[prefix + score] for run in runs):.4f}" for score in SCORES)


def seed_tables(runs: dict[int, dict]) -> list[str]:
    """Markdown tables from {split seed: that run's reports/metrics.json}: the scores, then the paired intervals."""
    seeds = sorted(runs)
    metrics = [runs[seed] for seed in seeds]
    peers = [name for name in PEER_NAMES if all(name in run["baselines"] for run in metrics)]
    header = ["test accuracy / macro-F1", *(f"seed {seed}" for seed in seeds), "mean", "val mean"]
    rows = [["MLP", *(_pair(run) for run in metrics), f"**{_mean_pair(metrics)}**",
             _mean_pair([run["val"] for run in metrics])]]
    for name in peers:
        scores = [run["baselines"][name] for run in metrics]
        rows.append([PEER_NAMES[name], *(_pair(peer) for peer in scores), f"**{_mean_pair(scores)}**",
                     _mean_pair(scores, prefix="val_")])

    def difference(peer: dict) -> str:
        return "; ".join(f"{peer['difference'][score]['estimate']:+.4f} "
                         f"{interval_text(peer['difference'][score], signed=True)}" for score in SCORES)

    intervals = [[PEER_NAMES[name], *(difference(run["baselines"][name]) for run in metrics)] for name in peers]
    return [*markdown_table(header, rows), "",
            *markdown_table(["MLP − peer, paired 95% interval (accuracy; macro-F1)",
                             *(f"seed {seed}" for seed in seeds)], intervals)]


def named_runs(shown: list[dict], name: str) -> dict[int, dict]:
    """{split seed: metrics} of the experiments called `name` or `name-N`, from `dvc exp show --json`."""
    runs: dict[int, dict] = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                label = rev.get("name") or ""
                if label != name and label.rpartition("-")[0] != name:
                    continue
                data = rev.get("data") or {}
                found = ((data.get("metrics") or {}).get(METRICS) or {}).get("data")
                if not found:
                    raise PipelineError(f"experiment {label}: no {METRICS}, so it failed; see `dvc queue logs {label}`")
                seed = data["params"]["params.yaml"]["data"]["split"]["seed"]
                if seed in runs:
                    raise PipelineError(f"experiment {label}: split seed {seed} appears twice under {name!r}")
                runs[seed] = found
    if not runs:
        raise PipelineError(f"no experiment named {name!r} or {name}-N in `dvc exp show`")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.seeds", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the experiments' name, as `make seeds` queued them")
    args = parser.parse_args(argv)
    try:
        shown = subprocess.run([dvc_executable(), "exp", "show", "--json"], check=True, capture_output=True,
                               text=True).stdout
        print("\n".join(seed_tables(named_runs(json.loads(shown), args.name))))
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
