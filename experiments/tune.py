"""`python -m experiments.tune` (or `make tune`): an Optuna study over the MLP on data/processed/, run by one or more
workers on one storage; `--apply` and `--queue K` turn its best trials into DVC experiments.

The search space and the study's settings are in tuning.yaml; docs/tuning.md has the whole story.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from experiments.space import TUNING_FILE, TuningSettings, dvc_overrides, load_settings, search_space
from pipeline.params import PARAMS_FILE, load_params, read_yaml
from pipeline.tools import dvc_executable
from spotify_genre.errors import ParamsError, PipelineError, exits_cleanly
from spotify_genre.validation import whole_number
from spotify_genre.workers import MAX_WORKERS, die_with_parent
from spotify_genre.validation import validated

EXIT_CODES = """exit codes:
  0  the study has its planned trials (or the experiments ran / were queued)
  1  a worker or `dvc exp run` failed
  2  wrong usage, or tuning.yaml or params.yaml refused
  3  no data/processed/ yet (`dvc repro preprocess`), or unreadable
  7  the storage cannot be opened, or holds a study run on another space, params or data
  130  interrupted (the trial running is marked failed; run again to continue)
  143  terminated (SIGTERM), as when interrupted"""


def _description() -> str:
    """The docstring's first paragraph, without the command's name: whole sentences for --help."""
    text = " ".join(__doc__.split("\n\n")[0].split(": ", 1)[1].split())
    return textwrap.fill(text[0].upper() + text[1:], 79, break_on_hyphens=False)


def parser() -> argparse.ArgumentParser:
    tune = argparse.ArgumentParser(
        prog="python -m experiments.tune", description=_description(),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    tune.add_argument("--trials", type=whole_number(1), metavar="N",
                      help="the study's planned total of finished trials (default: tuning.yaml's); a restarted "
                           "run does only what is left")
    tune.add_argument("--workers", type=whole_number(1, MAX_WORKERS), metavar="N", default=1,
                      help="worker processes on this machine, sharing the study (default 1)")
    tune.add_argument("--storage", metavar="URL",
                      help="the study's database (default: tuning.yaml's, a SQLite file under tuning/); a "
                           "postgresql:// or mysql:// URL shares one study between machines")
    tune.add_argument("--study", metavar="NAME", help="the study's name (default: tuning.yaml's)")
    tune.add_argument("--seed", type=whole_number(0), metavar="N", help="the sampler's seed (default: tuning.yaml's)")
    tune.add_argument("--space", type=Path, default=TUNING_FILE, metavar="FILE",
                      help=f"the settings and search space (default {TUNING_FILE})")
    action = tune.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true",
                        help="run the best complete trial as a DVC experiment (`dvc exp run -S ...`), with test "
                             "metrics, in the current repository")
    action.add_argument("--queue", type=whole_number(1), metavar="K",
                        help="queue the K best complete trials as DVC experiments (`dvc exp run --queue`)")
    action.add_argument("--report", action="store_true",
                        help="only rewrite reports/tuning.md, .csv and the figures from the storage")
    return tune


@dataclass(frozen=True)
class Run:
    """What every worker needs, picklable for a spawned process."""

    space_file: Path
    storage: str
    study: str
    trials: int
    seed: int
    worker: int = 0


def _settings(args: argparse.Namespace) -> TuningSettings:
    """tuning.yaml's settings with the command line's --trials, --storage, --study and --seed, checked again."""
    settings = load_settings(args.space)
    overrides = {key: getattr(args, key) for key in ("trials", "storage", "study", "seed")
                 if getattr(args, key) is not None}
    return validated(TuningSettings, {**settings.model_dump(), **overrides}, f"{args.space} with the options given",
                     ParamsError)


def _log(line: str) -> None:
    print(line, flush=True)


def _worker(run: Run) -> None:
    """A spawned worker: its own storage connection and copy of the splits, the shared study."""
    from experiments import study as studies

    _quiet_optuna()
    # Worker i samples with seed + i: workers with one seed would draw the same random first trials.
    settings = load_settings(run.space_file).model_copy(update={"storage": run.storage, "study": run.study,
                                                                "trials": run.trials, "seed": run.seed + run.worker})
    raw = read_yaml(PARAMS_FILE, "params.yaml")
    space = search_space(settings, raw, str(run.space_file))
    storage = studies.open_storage(settings.storage, settings.heartbeat_seconds)
    study = studies.load_study(storage, settings, settings.study, studies.shown_url(settings.storage))
    objective = studies.Objective(raw, space, settings.trials)
    studies.work(study, storage, objective, settings.trials, settings.heartbeat_seconds,
                 lambda line: _log(f"[worker {run.worker}] {line}"))


def _spawned_worker(run: Run, parent: int) -> None:
    # A worker whose `tune` is gone (killed, even with SIGKILL) stops too, rather than run on unseen; its trial's
    # heartbeat then lapses and the next `tune` runs it again.
    die_with_parent(parent)
    sys.exit(exits_cleanly(_worker)(run))


def _tune(args: argparse.Namespace, settings, space, raw: dict) -> int:
    from experiments import study as studies
    from experiments import study_report

    objective = studies.Objective(raw, space, settings.trials)  # reads data/processed/ before any storage
    shown = studies.shown_url(settings.storage)
    storage = studies.open_storage(settings.storage, settings.heartbeat_seconds)
    identity = studies.study_identity(settings, raw, space, studies.data_fingerprint())
    study = studies.open_study(storage, settings, identity, settings.study, shown)
    finished, running = studies.counts(study)
    _log(f"study {settings.study!r} in {shown}: {finished} of {settings.trials} planned trials finished"
         + (f", {running} running" if running else "") + f"; {args.workers} worker(s)")
    if args.workers == 1:
        studies.work(study, storage, objective, settings.trials, settings.heartbeat_seconds, _log)
    else:
        failed = _run_workers(args, settings)
        if failed:
            raise PipelineError(f"worker {', '.join(map(str, failed))} failed (its error is above); run "
                                "`python -m experiments.tune` again to continue the study")
    summary = study_report.write_reports(study, space, settings.trials, shown)
    _log(f"{summary.finished} trials finished ({summary.complete} complete, {summary.pruned} pruned) in "
         f"{summary.wall_seconds:.0f} s; wrote {study_report.WRITTEN}")
    if summary.complete:
        best = study.best_trial
        _log(f"best: trial {best.number}, val loss {best.value:.4f}; `python -m experiments.tune --apply` runs it as a "
             "DVC experiment")
    return 0


def _run_workers(args: argparse.Namespace, settings) -> list[int]:
    context = multiprocessing.get_context("spawn")
    workers = []
    for index in range(1, args.workers + 1):
        run = Run(args.space, settings.storage, settings.study, settings.trials, settings.seed, index)
        process = context.Process(target=_spawned_worker, args=(run, os.getpid()), name=f"tune-worker-{index}")
        process.start()
        workers.append(process)
    try:
        for process in workers:
            process.join()
    except KeyboardInterrupt:
        for process in workers:
            process.join()
        raise
    return [index for index, process in enumerate(workers, start=1) if process.exitcode != 0]


def _experiments(args: argparse.Namespace, settings, space) -> int:
    from optuna.trial import TrialState

    from experiments import study as studies

    if not Path("dvc.yaml").is_file():
        raise ParamsError("no dvc.yaml here: run --apply or --queue from the root of the project")
    shown = studies.shown_url(settings.storage)
    study = studies.load_study(studies.open_storage(settings.storage, settings.heartbeat_seconds), settings,
                               settings.study, shown)
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                      key=lambda trial: (trial.value, trial.number))
    if not complete:
        raise PipelineError(f"study {settings.study!r} in {shown} has no complete trial yet")
    chosen = complete[:args.queue] if args.queue else complete[:1]
    dvc = dvc_executable()
    existing = set(subprocess.run([dvc, "exp", "ls", "--all-commits", "--name-only"], capture_output=True,
                                  text=True).stdout.split())
    for trial in chosen:
        name = f"{settings.study}-trial-{trial.number}"
        if name in existing:
            _log(f"trial {trial.number}: already the experiment {name} (`dvc exp apply {name}` puts it in the "
                 "workspace)")
            continue
        overrides = [arg for override in dvc_overrides(space.decode(trial.params)) for arg in ("-S", override)]
        command = [dvc, "exp", "run", *(["--queue"] if args.queue else []), "--name", name, *overrides]
        _log(f"trial {trial.number} (val loss {trial.value:.4f}): dvc exp run {' '.join(command[3:])}")
        code = subprocess.run(command).returncode
        if code != 0:
            raise PipelineError(f"dvc exp run for trial {trial.number} exited {code} (its output is above)")
    if args.queue:
        _log("run the queue with `dvc exp run --run-all --jobs 2`, then compare with `dvc exp show`")
    else:
        _log("compare it with the workspace's run with `dvc exp show` or `dvc metrics diff`")
    return 0


def _quiet_optuna() -> None:
    """Each trial gets one line of ours instead of Optuna's log; the heartbeat and the matplotlib figures are
    marked experimental, which they are, and said once in docs/tuning.md rather than on every trial."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ModuleNotFoundError:
        raise ParamsError("python -m experiments.tune needs Optuna: pip install -e '.[tune]' (or `make install`)") \
            from None


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _require_optuna()
    _quiet_optuna()
    settings = _settings(args)
    raw = read_yaml(PARAMS_FILE, "params.yaml")
    load_params()  # params.yaml as a whole, as every stage checks it
    space = search_space(settings, raw, str(args.space))
    if args.apply or args.queue:
        return _experiments(args, settings, space)
    if args.report:
        from experiments import study as studies
        from experiments import study_report

        shown = studies.shown_url(settings.storage)
        study = studies.load_study(studies.open_storage(settings.storage, settings.heartbeat_seconds), settings,
                                   settings.study, shown)
        study_report.write_reports(study, space, settings.trials, shown)
        _log(f"wrote {study_report.WRITTEN}")
        return 0
    return _tune(args, settings, space, raw)


if __name__ == "__main__":
    sys.exit(main())
