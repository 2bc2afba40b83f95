"""A study's results for people to compare: reports/tuning.md (a summary and every trial, best first),
reports/tuning.csv (the same table) and Optuna's own figures in reports/tuning/."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from experiments.space import SearchSpace, dvc_overrides
from pipeline.report import markdown_table, save_png
from spotify_genre.atomic import write_text

REPORT = Path("reports/tuning.md")
TABLE = Path("reports/tuning.csv")
FIGURES = Path("reports/tuning")
SCORES = ("val_loss", "val_accuracy", "val_f1_macro")
WRITTEN = f"{REPORT}, {TABLE} and {FIGURES}/"


def is_surplus(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and trial.user_attrs.get("note", "").startswith("not run")


def _seconds(trial: FrozenTrial) -> float:
    return trial.duration.total_seconds() if trial.duration else math.nan


def trial_table(study: optuna.Study, space: SearchSpace) -> pd.DataFrame:
    """One row per trial run (surplus trials, never run, left out), complete trials best first."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if is_surplus(trial):
            continue
        attrs = trial.user_attrs
        values = space.decode(trial.params)
        row = {"trial": trial.number, "state": trial.state.name.lower()}
        row.update({name: values.get(name) for name in space.names})
        row.update({score: attrs.get(score, math.nan) for score in SCORES})
        row.update(epochs=attrs.get("epochs", 0), best_epoch=attrs.get("best_epoch", 0),
                   seconds=round(_seconds(trial), 2), note=attrs.get("note", ""))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["trial", "state", *space.names, *SCORES, "epochs", "best_epoch", "seconds",
                                        "note"])
    order = table["state"].map({"complete": 0, "pruned": 1}).fillna(2)
    return table.assign(_order=order).sort_values(["_order", "val_loss", "trial"]).drop(columns="_order")


@dataclass(frozen=True)
class StudySummary:
    planned: int
    complete: int
    pruned: int
    failed: int  # a worker gone or an error; each run again
    surplus: int
    wall_seconds: float  # first trial's start to the last one's end
    epochs_run: int
    pruned_epochs: int
    pruned_max_epochs: int  # what the pruned trials' max_epochs allowed

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def trials_per_minute(self) -> float:
        return self.finished / (self.wall_seconds / 60) if self.wall_seconds else math.nan


def summarise(study: optuna.Study, planned: int) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    states = [trial.state for trial in trials]
    pruned = [trial for trial in trials if trial.state == TrialState.PRUNED]
    starts = [trial.datetime_start for trial in trials if trial.datetime_start and trial.datetime_complete]
    ends = [trial.datetime_complete for trial in trials if trial.datetime_start and trial.datetime_complete]
    surplus = sum(is_surplus(trial) for trial in trials)
    return StudySummary(
        planned=planned, complete=states.count(TrialState.COMPLETE), pruned=len(pruned),
        failed=states.count(TrialState.FAIL) - surplus, surplus=surplus,
        wall_seconds=(max(ends) - min(starts)).total_seconds() if starts else 0.0,
        epochs_run=sum(trial.user_attrs.get("epochs", 0) for trial in trials),
        pruned_epochs=sum(trial.user_attrs.get("epochs", 0) for trial in pruned),
        pruned_max_epochs=sum(trial.user_attrs.get("max_epochs", 0) for trial in pruned))


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}" if abs(value) < 0.01 else f"{value:.4f}".rstrip("0")
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def markdown(study: optuna.Study, space: SearchSpace, summary: StudySummary, table: pd.DataFrame,
             storage: str) -> str:
    saved = summary.pruned_max_epochs - summary.pruned_epochs
    lines = [
        f"# Tuning: study `{study.study_name}`",
        "",
        "Written by `python -m experiments.tune` (docs/tuning.md). Every trial trains the train stage's fit() on "
        "data/processed/ and is scored on the validation split (test rows are never read); the objective is the "
        "best epoch's validation loss, minimised.",
        "",
        f"- storage: `{storage}`",
        f"- trials: {summary.finished} finished of {summary.planned} planned ({summary.complete} complete, "
        f"{summary.pruned} pruned); {summary.failed} failed and run again"
        + (f"; {summary.surplus} asked for after the last planned one, not run" if summary.surplus else ""),
        f"- wall time: {summary.wall_seconds:.0f} s from the first trial's start to the last one's end, "
        f"{summary.trials_per_minute:.1f} finished trials per minute",
        f"- pruning: {summary.pruned} trials stopped after {summary.pruned_epochs} epochs in all, of the "
        f"{summary.pruned_max_epochs} their max_epochs allowed: at most {saved} epochs saved "
        f"({saved / max(summary.epochs_run + saved, 1):.0%} of what the study would have run; early stopping might "
        "have ended some of them sooner)",
    ]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        values = space.decode(best.params)
        lines += [
            "",
            f"## Best trial: {best.number}",
            "",
            f"Validation loss {best.value:.4f}, accuracy {best.user_attrs['val_accuracy']:.4f}, macro-F1 "
            f"{best.user_attrs['val_f1_macro']:.4f} (epoch {best.user_attrs['best_epoch']}). As a DVC experiment "
            "with test metrics: `python -m experiments.tune --apply`, which runs",
            "",
            "```",
            "dvc exp run " + " ".join(f"-S '{override}'" for override in dvc_overrides(values)),
            "```",
        ]
    header = ["trial", "state", *space.names, "val loss", "val accuracy", "val macro-F1", "epochs", "best epoch",
              "seconds", "note"]
    rows = [[_cell(value) for value in row] for row in table.itertuples(index=False)]
    lines += ["", "## Trials, best first", "", *markdown_table(header, rows), "",
              "Figures: [optimisation history](tuning/optimization_history.png), "
              "[parameter importances](tuning/param_importances.png), "
              "[parallel coordinates](tuning/parallel_coordinate.png)."]
    return "\n".join(lines) + "\n"


def write_figures(study: optuna.Study, folder: Path = FIGURES) -> list[Path]:
    """Optuna's optimisation history, parameter importances (fANOVA, seeded) and parallel coordinates, as PNGs;
    importances need at least two complete trials."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as figures

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots = {"optimization_history": lambda: figures.plot_optimization_history(study),
             "parallel_coordinate": lambda: figures.plot_parallel_coordinate(study)}
    if complete >= 2:
        plots["param_importances"] = lambda: figures.plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
        for name, plot in plots.items():
            axes = plot()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            save_png(folder / f"{name}.png", figure)
            pyplot.close(figure)
            written.append(folder / f"{name}.png")
    return written


def write_reports(study: optuna.Study, space: SearchSpace, planned: int, storage: str) -> StudySummary:
    summary = summarise(study, planned)
    table = trial_table(study, space)
    write_text(TABLE, table.to_csv(index=False, lineterminator="\n"))
    write_figures(study)
    write_text(REPORT, markdown(study, space, summary, table, storage))
    return summary
