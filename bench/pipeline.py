"""Section `pipeline`: `dvc repro` from raw data, a no-op `dvc repro` and `dvc exp run -S lr=...`, each stage timed.

Stage times inside `dvc repro` come from DVC's own output, each line timestamped as it arrives (the commands run
unbuffered): a stage's span runs from its "Running stage" line to the first line DVC writes after the stage's
command (see stage_spans), so it includes DVC's work on that stage (hashing and caching its outputs). Each
stage's command is also run alone, without DVC, in the same project, and the import of its module alone: the
differences are DVC's share and the stage's start-up. Each `dvc exp run` is also split into parts
(outside_fit_parts): DVC outside the stages, and per stage its start-up, the steps it times itself in
reports/timing/ (the fit, DVCLive, the figures, ...) and its exit with DVC's work on its outputs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from bench.context import Context
from bench.measure import BenchError, Run, python, run, summary, tool
from bench.project import (dvc_project, floor_project, read_params, run_stage, stage_command, stage_order,
                           upstream)

RUNNING = re.compile(r"^Running stage '([^']+)':")
# What DVC writes once a stage's command has ended: the lock-file update (only when the lock changes), then,
# after the last stage, its advice on Git and remotes.
CLOSING = ("Updating lock file", "To track the changes with git", "To enable auto staging", "Use `dvc push`")
UP_TO_DATE = "Data and pipelines are up to date."
LR_LINE = re.compile(r"^lr: .*$", re.MULTILINE)
TRAIN_TIMING = Path("reports/timing/train.json")
EVALUATE_TIMING = Path("reports/timing/evaluate.json")
TARGETS = {"repro_s": 45.0, "exp_run_s": 15.0, "noop_s": 1.0}
# The project's goals for what the user waits for beyond the model's own training (wall time minus the train
# stage's fit_seconds).
OVERHEAD_TARGETS = {"repro_outside_fit_s": 35.0, "exp_run_outside_fit_s": 3.0, "noop_s": 1.0}
# The project's goal for the train stage's fit (its fit_seconds) with the default params, numerics pinned.
FIT_TARGET_S = 12.0


def stage_spans(result: Run) -> dict[str, float]:
    """Seconds from each stage's "Running stage" line to the first line DVC writes after the stage's command.

    That is the lock-file update where DVC writes one, else the next stage's "Running stage" line, else DVC's
    closing advice, else the end of the run.
    """
    spans: dict[str, float] = {}
    current, started = None, 0.0
    for at, line in result.lines:
        opened = RUNNING.match(line)
        if current is not None and (opened or line.startswith(CLOSING)):
            spans[current] = at - started
            current = None
        if opened:
            current, started = opened.group(1), at
    if current is not None:
        spans[current] = result.seconds - started
    return spans


def ran_stages(result: Run) -> list[str]:
    return [match.group(1) for _, line in result.lines if (match := RUNNING.match(line))]


def _expect(result: Run, expected: list[str], what: str) -> None:
    ran = ran_stages(result)
    if sorted(ran) != sorted(expected):
        raise BenchError(f"{what}: expected DVC to run {', '.join(expected)}, it ran {', '.join(ran) or 'nothing'}")


def _train_timing(project: Path) -> dict | None:
    """What the train stage reports of its own run (epochs, fit time), where it reports it."""
    try:
        return json.loads((project / TRAIN_TIMING).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _epochs(project: Path) -> int | None:
    timing = _train_timing(project)
    return timing.get("epochs") if isinstance(timing, dict) else None


def _fit_seconds(project: Path) -> float:
    """The train stage's own training loop, as it reports it: what the overhead figures leave out."""
    timing = _train_timing(project)
    if not isinstance(timing, dict) or not isinstance(timing.get("fit_seconds"), (int, float)):
        raise BenchError(f"{project / TRAIN_TIMING}: no fit_seconds; did the train stage run?")
    return float(timing["fit_seconds"])


def _full_runs(ctx: Context, project: Path, roots: list[str],
               measured: list[str]) -> tuple[list[Run], list, list[float]]:
    ctx.log(f"pipeline: `dvc repro --force --downstream {' '.join(roots)}` x{ctx.runs}")
    full, epochs, fits = [], [], []
    for _ in range(ctx.runs):
        result = run([tool("dvc"), "repro", "--force", "--downstream", *roots], project)
        _expect(result, measured, "dvc repro --force")
        full.append(result)
        epochs.append(_epochs(project))
        fits.append(_fit_seconds(project))
    return full, epochs, fits


def _noop_runs(ctx: Context, project: Path) -> list[float]:
    ctx.log(f"pipeline: no-op `dvc repro` x{ctx.runs}")
    seconds = []
    for _ in range(ctx.runs):
        result = run([tool("dvc"), "repro"], project)
        if UP_TO_DATE not in result.output:
            raise BenchError(f"a second `dvc repro` was not a no-op:\n{result.output[-2000:]}")
        seconds.append(result.seconds)
    return seconds


def _module(stage: str) -> str:
    args = stage_command(stage)
    return args[args.index("-m") + 1] if "-m" in args else f"stages.{stage}"


def _alone_runs(ctx: Context, project: Path, measured: list[str]) -> tuple[dict, dict]:
    """Each stage's command without DVC, and the import of its module alone (Python's start-up included)."""
    ctx.log(f"pipeline: each stage's command alone, and its module's import, x{ctx.runs}")
    alone = {stage: [run_stage(project, stage) for _ in range(ctx.runs)] for stage in measured}
    imports = {stage: [run(python("-c", f"import {_module(stage)}"), project).seconds for _ in range(ctx.runs)]
               for stage in measured}
    status = run([tool("dvc"), "status"], project).output
    if "up to date" not in status:
        ctx.log(f"pipeline: warning: the stages run alone changed the workspace: {status.strip()[:300]}")
    return alone, imports


def _timing(project: Path, path: Path) -> dict:
    try:
        timing = json.loads((project / path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        timing = None
    if not isinstance(timing, dict):
        raise BenchError(f"{project / path}: no timing report; did the stage run?")
    return timing


def _number(timing: dict, key: str, path: Path) -> float:
    value = timing.get(key)
    if not isinstance(value, (int, float)):
        raise BenchError(f"{path}: no {key}; the stage's timing report and the bench disagree")
    return float(value)


def outside_fit_parts(result: Run, project: Path) -> dict[str, float]:
    """Where one run of train then evaluate under DVC spends its time, the fit and what is not the fit.

    DVC's own work between and around the stages' spans (the experiment's Git bookkeeping, re-reading dvc.yaml
    and dvc.lock, writing the lock file) is the run's time less the spans. Within a stage's span: the process's
    start-up before main() (Python and the imports), then the steps each stage times itself, the rest of main(),
    and what remains of the span: the process's exit and DVC's work on the stage's outputs (hashing, caching).
    """
    spans = stage_spans(result)
    train, evaluate = _timing(project, TRAIN_TIMING), _timing(project, EVALUATE_TIMING)
    train_n = {key: _number(train, key, TRAIN_TIMING)
               for key in ("startup_s", "stage_seconds", "fit_seconds", "predictions_s", "tracking_s")}
    evaluate_n = {key: _number(evaluate, key, EVALUATE_TIMING)
                  for key in ("startup_s", "total_s", "predictions_s", "metrics_s", "figures_s")}
    return {
        "dvc_outside_stages_s": result.seconds - sum(spans.values()),
        "train_startup_s": train_n["startup_s"],
        "train_fit_s": train_n["fit_seconds"],
        "train_predictions_s": train_n["predictions_s"],
        "train_dvclive_s": train_n["tracking_s"],
        "train_rest_of_main_s": train_n["stage_seconds"] - train_n["fit_seconds"] - train_n["predictions_s"]
        - train_n["tracking_s"],
        "train_exit_and_dvc_s": spans["train"] - train_n["startup_s"] - train_n["stage_seconds"],
        "evaluate_startup_s": evaluate_n["startup_s"],
        "evaluate_metrics_s": evaluate_n["metrics_s"],
        "evaluate_figures_s": evaluate_n["figures_s"],
        "evaluate_rest_of_main_s": evaluate_n["total_s"] - evaluate_n["metrics_s"] - evaluate_n["figures_s"],
        "evaluate_exit_and_dvc_s": spans["evaluate"] - evaluate_n["startup_s"] - evaluate_n["total_s"],
    }


def _lr_runs(ctx: Context, project: Path, lrs: list[float], *,
             experiment: bool) -> tuple[list[float], list, list[float], list[dict[str, float]]]:
    """`dvc exp run -S lr=...`, or the same lr written into params.yaml and `dvc repro`, once per value."""
    seconds, epochs, outside, parts = [], [], [], []
    params_file = project / "params.yaml"
    for lr in lrs:
        if experiment:
            result = run([tool("dvc"), "exp", "run", "-S", f"lr={lr}"], project)
        else:
            text, count = LR_LINE.subn(f"lr: {lr}", params_file.read_text(encoding="utf-8"), count=1)
            if count != 1:
                raise BenchError(f"{params_file}: no top-level `lr:` line to edit")
            params_file.write_text(text, encoding="utf-8")
            result = run([tool("dvc"), "repro"], project)
        _expect(result, ["train", "evaluate"], f"{'dvc exp run -S' if experiment else 'dvc repro after'} lr={lr}")
        seconds.append(result.seconds)
        epochs.append(_epochs(project))
        outside.append(result.seconds - _fit_seconds(project))
        parts.append(outside_fit_parts(result, project))
    return seconds, epochs, outside, parts


# The exp-run loop's floor: projects of its shape (bench.project.floor_project) whose two stages import nothing, or
# only the libraries this project's train and evaluate cannot start without.
FLOORS = {"dvc_s": ("", ""), "dvc_torch_numpy_s": ("torch", "numpy")}


def _floor_runs(ctx: Context, lrs: list[float]) -> dict[str, dict]:
    """`dvc exp run -S lr=...` in each FLOORS project, once per lr."""
    ctx.log(f"pipeline: the exp-run floor, `dvc exp run -S lr=...` x{len(lrs)} in {len(FLOORS)} projects of its shape")
    floors = {}
    for name, (train_imports, evaluate_imports) in FLOORS.items():
        project = floor_project(ctx.workdir / f"floor-{name}", train_imports, evaluate_imports)
        seconds = []
        for lr in lrs:
            result = run([tool("dvc"), "exp", "run", "-S", f"lr={lr}"], project)
            _expect(result, ["train", "evaluate"], f"floor {name}: dvc exp run -S lr={lr}")
            seconds.append(result.seconds)
        floors[name] = summary(seconds)
        if not ctx.keep:
            shutil.rmtree(project, ignore_errors=True)
    return floors


def measure(ctx: Context) -> dict:
    order = stage_order()
    first = order[0]
    measured = [stage for stage in order if stage != first]
    roots = [stage for stage in measured if upstream(stage) - {stage} <= {first}]
    project = dvc_project(ctx.workdir / "pipeline", ctx.dataset)
    ctx.log(f"pipeline: `dvc repro {first}` once (not measured), in {project}")
    run([tool("dvc"), "repro", first], project)

    full, epochs, fits = _full_runs(ctx, project, roots, measured)
    full_outside = [result.seconds - fit for result, fit in zip(full, fits)]
    noop = _noop_runs(ctx, project)
    alone, imports = _alone_runs(ctx, project, measured)
    dvc_start = [run([tool("dvc"), "--version"], project).seconds for _ in range(ctx.runs)]
    python_start = [run(python("-c", "pass"), project).seconds for _ in range(ctx.runs)]
    # A new lr for every run: a value run before would be restored from DVC's run-cache instead of trained.
    base_lr = read_params(project)["lr"]
    lrs = [round(base_lr * (1.0 - 0.01 * i), 8) for i in range(1, 2 * ctx.runs + 1)]
    ctx.log(f"pipeline: `dvc exp run -S lr=...` x{ctx.runs}, then lr edited in params.yaml and `dvc repro` "
            f"x{ctx.runs} (the same stages, no experiment)")
    exp, exp_epochs, exp_outside, exp_parts = _lr_runs(ctx, project, lrs[:ctx.runs], experiment=True)
    edited, _, _, _ = _lr_runs(ctx, project, lrs[ctx.runs:], experiment=False)
    floors = _floor_runs(ctx, lrs[:ctx.runs])

    spans = [stage_spans(result) for result in full]
    totals = [result.seconds for result in full]
    results = {
        "repro": {
            "command": f"dvc repro --force --downstream {' '.join(roots)}",
            "what": f"every stage but {first}, with data/raw present; --force so that no run-cache is used",
            "seconds": summary(totals),
            "train_epochs": epochs,
            "outside_fit_s": summary(full_outside),
            "fit_s": summary(fits),
            "dvc_outside_stages_s": summary([total - sum(span.values()) for total, span in zip(totals, spans)]),
            "stages": {
                stage: {
                    "in_repro_s": summary([span[stage] for span in spans]),
                    "alone_s": summary([r.seconds for r in alone[stage]]),
                    "import_s": summary(imports[stage]),
                    "peak_rss_mib": summary([r.max_rss_bytes / 2**20 for r in alone[stage]]),
                }
                for stage in measured
            },
        },
        "noop": {"command": "dvc repro", "seconds": summary(noop)},
        "repro_after_lr_edit": {"command": "lr edited in params.yaml, then dvc repro", "seconds": summary(edited)},
        "exp_run": {"command": "dvc exp run -S lr=<new value>", "lr_values": lrs[:ctx.runs],
                    "stages_run": ["train", "evaluate"],
                    "seconds": summary(exp), "train_epochs": exp_epochs, "outside_fit_s": summary(exp_outside),
                    "parts_s": {name: summary([part[name] for part in exp_parts]) for name in exp_parts[0]},
                    "floor": {"what": "the same `dvc exp run -S lr=...` in a project of the same two stages, each "
                                      "of which only starts Python, or only imports torch (train) and numpy "
                                      "(evaluate), and copies a file",
                              **floors}},
        "startup": {"python_s": summary(python_start), "dvc_version_s": summary(dvc_start)},
        "targets": TARGETS,
        "overhead_targets": OVERHEAD_TARGETS,
        "fit_target_s": FIT_TARGET_S,
    }
    if not ctx.keep:
        shutil.rmtree(project, ignore_errors=True)
    return results
