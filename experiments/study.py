"""The Optuna study behind `python -m experiments.tune`: its storage, the objective (the train stage's own
train_model() on data/processed/, scored on the validation split), pruning, and the loop each worker runs until the study has its
planned number of finished trials.

The objective is the best epoch's validation loss, minimised: the quantity the train stage's early stopping
already chooses its epoch on, a proper score of the probabilities that moves smoothly, where accuracy and
macro-F1 on 4,900 rows move in steps; and the per-epoch validation loss is what the pruner compares. Accuracy
and macro-F1 of the same epoch are recorded beside it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from experiments.space import SearchSpace, TuningSettings, trial_params
from pipeline.artifacts import ProcessedSplit, processed_path, read_processed_splits
from pipeline.mlp_fitting import EpochMetrics, train_model
from pipeline.params import with_values
from spotify_genre.errors import PipelineError, bounded

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HELD = (*FINISHED, TrialState.RUNNING)  # a trial that counts towards the planned total
LOCK_WAIT_S = 60  # how long a write may wait for another worker's (SQLite's busy timeout)
DIRECTION = "minimize"
OBJECTIVE = "val_loss"


class StorageError(PipelineError):
    """The study's storage cannot be opened, or holds a study that is not comparable with this run."""

    exit_code = 7


class SurplusTrial(Exception):
    """Asked for by a worker after another had already taken the study's last planned trial."""


def _credentials(url: str) -> tuple[str, str, str] | None:
    """(what comes before the password, the password, what follows it), or None where the URL has no password.
    The credentials end at the URL's last '@', so a password that holds an '@' unescaped is masked whole."""
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if not separator or at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    return (f"{scheme}://{user}:", password, rest[at:]) if colon else None


def shown_url(url: str) -> str:
    """A storage URL safe to print: its password masked, however it is written."""
    parts = _credentials(url)
    return bounded(url if parts is None else f"{parts[0]}***{parts[2]}", 300)


def open_storage(url: str, heartbeat_seconds: int) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at `url` (SQLite, PostgreSQL, MySQL), with a heartbeat: a trial whose worker is gone
    is failed after three silent heartbeats and queued to run again with the same params."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError

    shown = shown_url(url)
    rest = url.partition("://")[2]
    if "@" in rest[:max(rest.rfind("@"), 0)]:
        raise StorageError(f"--storage {shown}: the user or password holds an '@'; write it as %40 (URL-encoded)")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"--storage {shown}: not a database URL (expected e.g. sqlite:///tuning/optuna.db or "
                           "postgresql://user@host/db)") from None
    except ValueError:  # sqlalchemy reads the port with int()
        raise StorageError(f"--storage {shown}: the port is not a number (expected e.g. "
                           "postgresql://user@host:5432/db)") from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise StorageError(f"--storage {shown}: port {parsed.port} is out of range (1 to 65535)")
    engine_kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        folder = Path(parsed.database or ".").parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"--storage {shown}: cannot be opened ({folder}: {error.strerror})") from None
        engine_kwargs = {"connect_args": {"timeout": LOCK_WAIT_S}}  # workers wait for each other's writes, not fail
    def storage() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds,
            grace_period=3 * heartbeat_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))

    try:
        try:
            return storage()
        except IntegrityError:  # another worker created the same new database's tables at the same moment
            time.sleep(1.0)
            return storage()
    except Exception as error:  # sqlalchemy's, a missing driver's ImportError, alembic's: all "cannot be opened"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if parsed.password:
            reason = reason.replace(str(parsed.password), "***")
        raise StorageError(f"--storage {shown}: cannot be opened ({reason})") from None


def data_fingerprint(folder: Path | None = None) -> str:
    """The sha256 of the processed train and val files: trials on other data are not comparable."""
    digest = hashlib.sha256()
    for name in ("train", "val"):
        path = processed_path(name) if folder is None else processed_path(name, folder)
        digest.update(path.read_bytes())
    return digest.hexdigest()


def study_identity(settings: TuningSettings, raw_params: dict, space: SearchSpace, data: str) -> dict[str, str]:
    """What makes two runs' trials comparable, as the study's user attributes: the space, params.yaml's fixed
    values, and the data."""
    fixed = with_values(raw_params, {name: None for name in space.names})
    return {"objective": OBJECTIVE, "space": json.dumps(settings.space, sort_keys=True),
            "fixed_params": json.dumps(fixed, sort_keys=True), "data_sha256": data}


def _sampler(settings: TuningSettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=settings.seed)


def _pruner(settings: TuningSettings) -> optuna.pruners.BasePruner:
    if settings.pruner.kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=settings.pruner.startup_trials,
                                       n_warmup_steps=settings.pruner.warmup_epochs)


def open_study(storage: optuna.storages.RDBStorage, settings: TuningSettings, identity: dict[str, str],
               name: str, shown: str) -> optuna.Study:
    """The named study, created with `identity` if new; refused if it exists with another identity."""
    existing = {summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    study = optuna.create_study(storage=storage, study_name=name, direction=DIRECTION, load_if_exists=True,
                                sampler=_sampler(settings), pruner=_pruner(settings))
    if name not in existing:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        return study
    recorded = study.user_attrs
    for key, value in identity.items():
        if recorded.get(key) != value:
            what = {"objective": "another objective", "space": "another search space (tuning.yaml changed)",
                    "fixed_params": "other fixed params (params.yaml changed outside the space)",
                    "data_sha256": "other data (data/processed/ changed)"}[key]
            raise StorageError(f"study {name!r} in {shown} was run with {what}: its trials would not compare with "
                               f"these; pass --study NEW for a new study, or restore what changed")
    return study


def load_study(storage: optuna.storages.RDBStorage, settings: TuningSettings, name: str, shown: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(settings),
                                 pruner=_pruner(settings))
    except KeyError:
        raise StorageError(f"{shown}: no study named {name!r} (run `python -m experiments.tune` first)") from None


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials: complete or pruned, and running (or believed so until their heartbeat lapses)."""
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    return sum(state in FINISHED for state in states), states.count(TrialState.RUNNING)


@dataclass
class TrialRecord:
    """What a trial leaves in its user attributes beside Optuna's own (params, state, value, times)."""

    epochs: int = 0
    best_epoch: int = 0
    val_loss: float = math.nan
    val_accuracy: float = math.nan
    val_f1_macro: float = math.nan
    max_epochs: int = 0
    note: str = ""

    def save(self, trial: optuna.Trial) -> None:
        for key, value in vars(self).items():
            trial.set_user_attr(key, value)


class Objective:
    """One trial: params.yaml with the trial's values, the train stage's fit(), the best epoch's validation loss.

    The splits are read once per worker; every trial seeds torch as the train stage does, so a trial's score
    depends on its params alone, not on the trials before it in the same process."""

    def __init__(self, raw_params: dict, space: SearchSpace, planned: int,
                 splits: dict[str, ProcessedSplit] | None = None):
        self.raw_params = raw_params
        self.space = space
        self.planned = planned
        self.splits = splits or read_processed_splits(("train", "val"))

    def __call__(self, trial: optuna.Trial) -> float:
        _refuse_surplus(trial, self.planned)
        values = self.space.suggest(trial)
        params = trial_params(self.raw_params, values)
        config = params.train
        record = TrialRecord(max_epochs=config.max_epochs)

        def report(metrics: EpochMetrics, improved: bool) -> None:
            record.epochs = metrics.epoch
            if improved:
                record.best_epoch, record.val_loss = metrics.epoch, metrics.val_loss
                record.val_accuracy, record.val_f1_macro = metrics.val_accuracy, metrics.val_f1_macro
            trial.report(metrics.val_loss, metrics.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val loss {metrics.val_loss:.4f} at epoch {metrics.epoch}")

        try:
            result = train_model(params, self.splits, on_epoch=report).result
        except optuna.TrialPruned:
            record.note = f"pruned after epoch {record.epochs}"
            record.save(trial)
            raise
        except PipelineError as error:  # diverged: as hopeless as a pruned trial, and stopped as early
            record.note = str(error).split(":")[0]
            record.save(trial)
            raise optuna.TrialPruned(record.note) from None
        record.save(trial)
        return result.best.val_loss


def _refuse_surplus(trial: optuna.Trial, planned: int) -> None:
    """Two workers can ask for the last trial at once; the one with the later number is not run."""
    study = trial.study
    earlier = [held for held in study.get_trials(deepcopy=False, states=HELD) if held.number < trial.number]
    if len(earlier) >= planned:
        trial.set_user_attr("note", "not run: the study already had its planned trials")
        raise SurplusTrial


def describe_trial(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> str:
    """One line: the trial's state, time, best epoch's scores and params."""
    attrs = trial.user_attrs
    seconds = trial.duration.total_seconds() if trial.duration else math.nan
    line = f"trial {trial.number}: {trial.state.name.lower()} in {seconds:.1f} s"
    if attrs.get("best_epoch"):
        line += (f", best epoch {attrs['best_epoch']} of {attrs['epochs']}: val loss {attrs['val_loss']:.4f}, "
                 f"accuracy {attrs['val_accuracy']:.4f}, macro-F1 {attrs['val_f1_macro']:.4f}")
    if attrs.get("note"):
        line += f" ({attrs['note']})"
    values = space.decode(trial.params).items()
    return line + "; " + ", ".join(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
                                   for name, value in values)


def fail_silent_trials(study: optuna.Study, storage: optuna.storages.RDBStorage, grace_seconds: float) -> None:
    """Fail, and queue again with the same params, each trial running for longer than the grace period without a
    single heartbeat: its worker died between starting it and its first heartbeat, a window that Optuna's
    fail_stale_trials (which looks only at trials with a heartbeat) never sees, so the study would wait for it
    forever."""
    from sqlalchemy import text

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    with storage.engine.connect() as connection:
        beating = {row[0] for row in connection.execute(text("SELECT trial_id FROM trial_heartbeats"))}
    study_id = storage.get_study_id_from_name(study.study_name)
    now = datetime.datetime.now()  # Optuna stamps trials with naive local times
    for trial in running:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if trial_id in beating or (now - trial.datetime_start).total_seconds() <= grace_seconds:
            continue
        try:
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except RuntimeError:  # finished meanwhile (UpdateFinishedTrialError)
            continue
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, storage.get_trial(trial_id))


def work(study: optuna.Study, storage: optuna.storages.RDBStorage, objective: Objective, planned: int,
         heartbeat_seconds: int, log: Callable[[str], None]) -> None:
    """Run trials until the study has `planned` finished ones. Where the others are running the last of them, wait:
    if their worker is gone, their heartbeat lapses and this worker runs them again."""
    while True:
        optuna.storages.fail_stale_trials(study)
        # A live trial's first heartbeat may wait for another worker's write: only a trial silent for longer than
        # that can be one whose worker is gone.
        fail_silent_trials(study, storage, grace_seconds=3 * heartbeat_seconds + LOCK_WAIT_S)
        finished, running = counts(study)
        if finished >= planned:
            return
        if finished + running >= planned:
            time.sleep(heartbeat_seconds)
            continue
        trial = _run_one(study, objective)
        if trial.state != TrialState.FAIL:
            log(describe_trial(trial, objective.space))


def _run_one(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial:
    """One trial through Optuna's optimize(), which keeps its heartbeat, and frees its running trial on any exit."""
    ran = []
    study.optimize(objective, n_trials=1, catch=(SurplusTrial,), callbacks=[lambda _study, trial: ran.append(trial)])
    return ran[0]
