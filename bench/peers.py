"""Section `peers`: the baselines stage, as committed, on the development split seeds: each peer's validation scores
beside those of the settings before the stage was made faster, and the stage's own time.

A faster peer must not be a weaker one (a weaker peer would flatter the MLP): each boosted tree's mean validation
accuracy and macro-F1 over the development seeds may fall at most ALLOWANCE below BEFORE. Validation only: the
development seeds are for choosing (docs/protocol.md), and test rows play no part here.
"""

from __future__ import annotations

import json
from statistics import fmean

from bench.context import Context
from bench.figures import fig
from bench.measure import summary
from bench.project import plain_project, run_stage, stage_order, upstream

SEEDS = (2, 3, 4)  # docs/protocol.md's development seeds
QUICK_SEEDS = (2,)
# Mean validation accuracy and macro-F1 over SEEDS of the settings of commit cb1e6cf (docs/baselines.md, "Re-checked
# for speed"), fitted by the same stage code on the same processed splits.
BEFORE = {"hist_gradient_boosting": (0.7414, 0.7431), "lightgbm": (0.7464, 0.7480), "xgboost": (0.7479, 0.7493)}
ALLOWANCE = 0.0015  # 0.15 points
NAMES = {"hist_gradient_boosting": "HistGradientBoosting", "lightgbm": "LightGBM", "xgboost": "XGBoost"}


def measure(ctx: Context) -> dict:
    seeds = QUICK_SEEDS if ctx.quick else SEEDS
    scores: dict[str, list[tuple[float, float]]] = {}
    stage_seconds = []
    for seed in seeds:
        project = plain_project(ctx.workdir / f"peers-seed-{seed}", ctx.dataset, {"split.seed": seed})
        ctx.log(f"peers: split seed {seed}: the stages up to preprocess, then baselines")
        for stage in stage_order():
            if stage in upstream("preprocess"):
                run_stage(project, stage)
        stage_seconds.append(run_stage(project, "baselines").seconds)
        report = json.loads((project / "reports" / "baselines.json").read_text(encoding="utf-8"))
        for name, model in report["models"].items():
            scores.setdefault(name, []).append((model["val"]["accuracy"], model["val"]["f1_macro"]))
    means = {name: [round(fmean(pair[i] for pair in pairs), 4) for i in (0, 1)] for name, pairs in scores.items()}
    return {"seeds": list(seeds),
            "val_scores": {name: [list(pair) for pair in pairs] for name, pairs in scores.items()},
            "val_means": means, "before": {name: list(pair) for name, pair in BEFORE.items()},
            "allowance": ALLOWANCE, "stage_s": summary(stage_seconds),
            "command": "python -m stages.baselines, after split, select and preprocess with split.seed set"}


def _held(results: dict, name: str) -> bool:
    means, before = results["val_means"][name], results["before"][name]
    return all(mean >= earlier - results["allowance"] - 1e-12 for mean, earlier in zip(means, before))


def peers_targets(results: dict) -> list[tuple[str, str, str, str]]:
    seeds = ", ".join(map(str, results["seeds"]))
    rows = []
    for name, before in results["before"].items():
        if name not in results["val_means"]:
            continue
        accuracy, f1 = results["val_means"][name]
        floor = [round(value - results["allowance"], 4) for value in before]
        rows.append((f"{NAMES.get(name, name)}: validation accuracy / macro-F1, mean of split seeds {seeds}",
                     f"{accuracy:.4f} / {f1:.4f}", f"≥ {floor[0]:.4f} / {floor[1]:.4f} (before − 0.15 points)",
                     "not judged: the reference is the mean of seeds " + ", ".join(map(str, SEEDS))
                     if list(results["seeds"]) != list(SEEDS) else "met" if _held(results, name) else "**missed**"))
    return rows


def peers_markdown(results: dict) -> list[str]:
    lines = [f"**Peers** (`{results['command']}`, the real dataset, split seeds "
             f"{', '.join(map(str, results['seeds']))}): validation accuracy / macro-F1 of each peer as committed, "
             "per seed and their mean, beside the mean of the settings before the stage was made faster "
             "(docs/baselines.md); and the baselines stage's time, alone, without DVC.", "",
             "| peer | " + " | ".join(f"seed {seed}" for seed in results["seeds"]) + " | mean | before |",
             "| --- |" + " --- |" * (len(results["seeds"]) + 2)]
    for name, pairs in results["val_scores"].items():
        before = results["before"].get(name)
        lines.append(f"| {NAMES.get(name, name)} | " + " | ".join(f"{a:.4f} / {f:.4f}" for a, f in pairs)
                     + f" | {results['val_means'][name][0]:.4f} / {results['val_means'][name][1]:.4f} | "
                     + (f"{before[0]:.4f} / {before[1]:.4f}" if before else "") + " |")
    lines += ["", f"The baselines stage alone: {fig(results['stage_s'])} (one run per seed)."]
    return lines
