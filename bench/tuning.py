"""Section `tuning`: `python -m experiments.tune` with tuning.yaml's default budget (50 trials) and 2 workers, on the
pipeline's processed splits, from an empty storage: wall time, finished trials per minute, and what pruning saved.

One study is already 50 trained models and about five minutes, so it runs once, whatever `--runs` says.
"""

from __future__ import annotations

import csv
import shutil

from bench.context import Context
from bench.figures import at_most, fig
from bench.measure import python, run, summary
from bench.project import ROOT

WORKERS = 2
RUNS = 1
QUICK_TRIALS = 6
TARGET_S = 600.0  # the project's goal: 50 trials in at most 10 minutes on a 2-core machine, 2 workers


def measure(ctx: Context) -> dict:
    import yaml

    project = ctx.prepared("preprocess")
    trials = QUICK_TRIALS if ctx.quick else yaml.safe_load((ROOT / "tuning.yaml").read_text())["trials"]
    walls, per_minute, outcomes = [], [], []
    for index in range(RUNS):
        storage = f"sqlite:///bench-tuning/run-{index}.db"
        shutil.rmtree(project / "bench-tuning", ignore_errors=True)
        ctx.log(f"tuning: {trials} trials, {WORKERS} workers")
        result = run(python("-m", "experiments.tune", "--trials", str(trials), "--workers", str(WORKERS),
                            "--storage", storage), project, timeout=3 * TARGET_S)
        with open(project / "reports" / "tuning.csv", newline="", encoding="utf-8") as table:
            rows = list(csv.DictReader(table))
        states = [row["state"] for row in rows]
        epochs = sum(int(row["epochs"]) for row in rows)
        walls.append(result.seconds)
        per_minute.append(60 * (states.count("complete") + states.count("pruned")) / result.seconds)
        outcomes.append({"complete": states.count("complete"), "pruned": states.count("pruned"),
                         "failed": states.count("fail"), "epochs": epochs,
                         "best_val_loss": min(float(row["val_loss"]) for row in rows if row["state"] == "complete")})
    return {"trials": trials, "workers": WORKERS, "target_s": TARGET_S, "wall_s": summary(walls),
            "trials_per_minute": summary(per_minute), "runs": outcomes,
            "command": f"python -m experiments.tune --trials {trials} --workers {WORKERS} --storage sqlite:///… "
                       "(a new storage each run)"}


def tuning_markdown(results: dict) -> list[str]:
    runs = results["runs"]
    return [f"**Tuning** (`{results['command']}`, tuning.yaml's space, the real processed splits): wall time of "
            "the whole command (start-up, every trial, the report and figures) and finished trials per minute, of one study "
            "(one run, whatever `--runs` says).", "",
            "| run | complete | pruned | failed | epochs trained | best val loss |", "| --- | --- | --- | --- | --- | --- |",
            *[f"| {i + 1} | {r['complete']} | {r['pruned']} | {r['failed']} | {r['epochs']} | {r['best_val_loss']:.4f} |"
              for i, r in enumerate(runs)]]


def tuning_targets(results: dict) -> list[tuple[str, str, str, str]]:
    """The section's row of the targets table: (measurement, measured, target, verdict)."""
    wall = results["wall_s"]
    return [(f"`python -m experiments.tune`, {results['trials']} trials, {results['workers']} workers",
             f"{fig(wall)}, {results['trials_per_minute']['median']:.1f} finished trials/min",
             f"≤ {results['target_s']:g} s", at_most(wall["median"], results["target_s"]))]
