"""`python -m experiments.tune`: an Optuna study on the synthetic pipeline's processed splits, with real SQLite
storages, real worker processes, a real SIGKILL, and the best trials run through the real `dvc exp run`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="Optuna comes with the tune extra: "
                             "pip install -c requirements/constraints.txt -e '.[pipeline,dev,tune]'")

from optuna.trial import TrialState  # noqa: E402  (after the skip: optuna may be absent)

from experiments import tune  # noqa: E402
from experiments.space import dvc_overrides, load_settings, search_space  # noqa: E402
from experiments.study import LOCK_WAIT_S  # noqa: E402
from experiments.study_report import is_surplus  # noqa: E402
from tests.conftest import BIN, ROOT, copy_project, run, tool_env, write_params  # noqa: E402

# The heartbeat and its retry callback, which these tests exercise, are marked experimental in Optuna.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SMALL_SPACE = {
    "lr": {"low": 0.01, "high": 0.2, "log": True},
    "momentum": {"low": 0.8, "high": 0.95},
    "batch_size": {"choices": [64, 128]},
    "train.weight_decay": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
    "train.dropout": {"low": 0.0, "high": 0.3},
    "train.hidden_sizes": {"choices": [[16], [32, 16]]},
    "train.embedding.frequencies": {"low": 2, "high": 4, "step": 2},
    "train.embedding.sigma": {"low": 0.05, "high": 0.5, "log": True},
    "train.max_epochs": {"low": 2, "high": 3},
}
SMALL_STUDY = {"study": "small", "trials": 4, "seed": 0, "storage": "sqlite:///tuning/optuna.db",
               "heartbeat_seconds": 1, "pruner": {"kind": "none", "startup_trials": 0, "warmup_epochs": 0},
               "space": SMALL_SPACE}


def write_study(folder: Path, **changes) -> dict:
    settings = {**SMALL_STUDY, **changes}
    (folder / "tuning.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return settings


def study_folder(synthetic_pipeline: Path, folder: Path) -> Path:
    """params.yaml and data/processed/ of the synthetic pipeline, and nothing else: what a study reads."""
    (folder / "data").mkdir(parents=True)
    shutil.copy(synthetic_pipeline / "params.yaml", folder / "params.yaml")
    shutil.copytree(synthetic_pipeline / "data" / "processed", folder / "data" / "processed")
    write_study(folder)
    return folder


@pytest.fixture
def workdir(synthetic_pipeline: Path, tmp_path: Path, monkeypatch) -> Path:
    """A study_folder, the current directory for the test."""
    folder = study_folder(synthetic_pipeline, tmp_path / "tune")
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture(scope="module")
def one_trial(synthetic_pipeline: Path, tmp_path_factory) -> Path:
    """A study_folder whose study `small` has run its first trial: what the tests of a refused second run start
    from."""
    folder = study_folder(synthetic_pipeline, tmp_path_factory.mktemp("one-trial") / "tune")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert tune.main(["--trials", "1"]) == 0
    assert len(finished(study_of(folder))) == 1
    return folder


@pytest.fixture
def after_one_trial(one_trial: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of one_trial, the current directory for the test."""
    folder = shutil.copytree(one_trial, tmp_path / "tune")
    monkeypatch.chdir(folder)
    return folder


def study_of(folder: Path, name: str = "small") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'tuning' / 'optuna.db'}")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def tune_here(args: list[str], capsys) -> tuple[int, str, str]:
    code = tune.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def child_env() -> dict[str, str]:
    return tool_env(PYTHONPATH=str(ROOT))


@pytest.mark.slow
def test_a_study_writes_its_table_and_figures_and_scores_on_validation_only(workdir, capsys):
    test_split = workdir / "data" / "processed" / "test.parquet"
    test_split.unlink()  # a study never reads it

    code, out, err = tune_here([], capsys)

    assert code == 0, err
    study = study_of(workdir)
    trials = finished(study)
    assert len(trials) == 4 and all(trial.state == TrialState.COMPLETE for trial in trials)
    assert len(re.findall(r"^trial \d: complete in", out, flags=re.MULTILINE)) == 4
    table = pd.read_csv(workdir / "reports" / "tuning.csv")
    assert list(table["trial"]) == sorted(range(4), key=lambda n: study.trials[n].value)
    best = study.best_trial
    assert table.iloc[0]["val_loss"] == best.value == best.user_attrs["val_loss"]
    assert set(SMALL_SPACE) <= set(table.columns)
    assert table["train.hidden_sizes"].isin(["[16]", "[32, 16]"]).all()
    report = (workdir / "reports" / "tuning.md").read_text()
    assert f"## Best trial: {best.number}" in report and "4 finished of 4 planned" in report
    for figure in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (workdir / "reports" / "tuning" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert study.user_attrs["objective"] == "val_loss"


@pytest.mark.slow
def test_one_worker_and_one_seed_give_the_same_trials(workdir, capsys):
    assert tune_here([], capsys)[0] == 0
    assert tune_here(["--storage", "sqlite:///tuning/again.db"], capsys)[0] == 0
    again = optuna.load_study(study_name="small", storage=f"sqlite:///{workdir / 'tuning' / 'again.db'}")

    first = [(trial.params, trial.value) for trial in study_of(workdir).trials]
    assert first == [(trial.params, trial.value) for trial in again.trials]
    assert tune_here(["--storage", "sqlite:///tuning/other.db", "--seed", "1"], capsys)[0] == 0
    other = optuna.load_study(study_name="small", storage=f"sqlite:///{workdir / 'tuning' / 'other.db'}")
    assert [trial.params for trial in other.trials] != [params for params, _ in first]


@pytest.mark.slow
def test_a_restarted_study_does_only_what_is_left(workdir, capsys):
    assert tune_here(["--trials", "2"], capsys)[0] == 0
    code, out, _ = tune_here(["--trials", "3"], capsys)

    assert code == 0 and "2 of 3 planned trials finished" in out
    assert re.findall(r"^trial (\d+):", out, flags=re.MULTILINE) == ["2"]
    assert len(finished(study_of(workdir))) == 3


@pytest.mark.slow
def test_pruning_stops_trials_in_a_hopeless_region(workdir, capsys):
    """An lr of 1e-6 learns nothing in 10 epochs; the median pruner stops such trials once the others have shown
    what a loss at each epoch can be."""
    space = {"lr": {"choices": [1.0e-6, 0.05]}, "train.dropout": {"low": 0.0, "high": 0.2},
             "train.max_epochs": {"choices": [10]}}
    write_study(workdir, trials=10, space=space,
                pruner={"kind": "median", "startup_trials": 2, "warmup_epochs": 2})
    write_params(workdir, {"train.patience": 100})

    assert tune_here([], capsys)[0] == 0

    trials = finished(study_of(workdir))
    hopeless = [trial for trial in trials[2:] if trial.params["lr"] == 1.0e-6]
    assert len(trials) == 10 and hopeless
    assert all(trial.state == TrialState.PRUNED and trial.user_attrs["epochs"] == 2 for trial in hopeless), \
        "each hopeless trial after the first two is stopped at the first epoch the pruner may"
    pruned = [trial for trial in trials if trial.state == TrialState.PRUNED]
    assert all(2 <= trial.user_attrs["epochs"] < 10 for trial in pruned)
    saved = sum(10 - trial.user_attrs["epochs"] for trial in pruned)
    report = (workdir / "reports" / "tuning.md").read_text()
    assert f"at most {saved} epochs saved" in report


@pytest.mark.slow
def test_two_workers_finish_one_study_with_no_trial_lost_or_run_twice(workdir):
    write_study(workdir, trials=6)
    database = (workdir / "tuning" / "optuna.db").resolve()
    process = subprocess.Popen([sys.executable, "-m", "experiments.tune", "--workers", "2"], cwd=workdir,
                               env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        opened = process.stdout.readline()  # the study is open; its workers are starting
        # Both workers start their first trials at the same moment, however long the start-up of either took on a
        # loaded machine: the database is locked until each has it open and waits for it.
        with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as holder:
            holder.execute("BEGIN EXCLUSIVE")
            _wait_for(lambda: sum(_has_open(worker, database) for worker in _workers(process.pid)) == 2, process,
                      timeout=LOCK_WAIT_S - 10)
            holder.execute("COMMIT")
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err

    study = study_of(workdir)
    # Both workers may ask for the last planned trial at once: the later one is recorded as not run, never run.
    surplus = [trial for trial in study.trials if is_surplus(trial)]
    trials = [trial for trial in study.trials if not is_surplus(trial)]
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 6
    assert all(trial.number >= 6 and not trial.params for trial in surplus)
    ran = re.findall(r"^\[worker (\d)\] trial (\d+): complete", opened + out, flags=re.MULTILINE)
    assert sorted(int(number) for _, number in ran) == list(range(6)), "each trial run exactly once"
    assert {worker for worker, _ in ran} == {"1", "2"}, "both workers ran trials"
    assert len({json.dumps(trial.params, sort_keys=True) for trial in trials}) == 6, "no params drawn twice"


def test_a_trial_asked_for_after_the_last_planned_one_is_recorded_not_run_and_left_out(after_one_trial):
    """What the race between two workers leaves, made certain: the study's other planned trials are held by a
    worker, so the trial asked for next is the surplus one."""
    from experiments import study as studies
    from experiments.study_report import summarise, trial_table

    settings = load_settings(after_one_trial / "tuning.yaml")
    raw = yaml.safe_load((after_one_trial / "params.yaml").read_text())
    space = search_space(settings, raw)
    study = study_of(after_one_trial)
    held = [study.ask() for _ in range(settings.trials - 1)]  # running, as in another worker

    trial = studies._run_one(study, studies.Objective(raw, space, settings.trials))

    assert is_surplus(trial) and trial.number == settings.trials and not trial.params
    assert trial.user_attrs == {"note": "not run: the study already had its planned trials"}
    assert trial.number not in set(trial_table(study, space)["trial"])
    for running in held:
        study.tell(running, 1.0)
    summary = summarise(study, settings.trials)
    assert (summary.finished, summary.surplus, summary.failed) == (settings.trials, 1, 0)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the study ended first, exit {process.returncode}\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the study")
        time.sleep(0.2)


def _workers(pid: int) -> list[int]:
    """The spawned worker processes of `pid` (not multiprocessing's resource tracker)."""
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` holds a file descriptor on `path`."""
    try:
        return any(Path(f"/proc/{pid}/fd/{fd}").resolve() == path for fd in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:  # gone, or a descriptor closed while looked at
        return False


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # a zombie has stopped; reaping it is its new parent's business


@pytest.mark.slow
def test_a_study_killed_mid_trial_continues_and_completes_its_planned_trials(workdir):
    """SIGKILL to `tune --workers 2` mid-trial: its workers stop too, and the next `tune` fails the trials they
    left running once their heartbeat lapses, runs them again with the same params, and completes the study."""
    write_study(workdir, space={**SMALL_SPACE, "train.max_epochs": {"choices": [60]}})
    write_params(workdir, {"train.patience": 100})
    command = [sys.executable, "-m", "experiments.tune"]
    process = subprocess.Popen([*command, "--workers", "2"], cwd=workdir, env=child_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)

    def mid_trial() -> bool:
        """A trial complete and another part-way; read without Optuna, which would create the tables itself."""
        try:
            with sqlite3.connect(f"file:{workdir / 'tuning' / 'optuna.db'}?mode=ro", uri=True) as database:
                states = [state for (state,) in database.execute("SELECT state FROM trials")]
                reported = database.execute("SELECT COUNT(*) FROM trial_intermediate_values JOIN trials USING "
                                            "(trial_id) WHERE trials.state = 'RUNNING'").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet, or being written
            return False
        return "COMPLETE" in states and reported > 0

    try:
        _wait_for(mid_trial, process)
        workers = _workers(process.pid)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "the workers outlived their killed parent"
        time.sleep(0.2)
    killed = [t for t in study_of(workdir).trials if t.state == TrialState.RUNNING]
    assert killed

    result = run(command, workdir, env=child_env())

    trials = study_of(workdir).trials
    assert len(finished(study_of(workdir))) == 4
    for trial in killed:
        assert trials[trial.number].state == TrialState.FAIL, "a killed trial is failed once its heartbeat lapses"
        retried = [t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
                   == trial.number]
        assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
        # Killed while its params were being drawn, a trial had only some: the retry keeps those, draws the rest.
        assert {name: retried[0].params.get(name) for name in trial.params} == trial.params, \
            "run again with the params it had drawn"
        assert f"trial {retried[0].number}: complete" in result.stdout


@pytest.mark.e2e
def test_the_best_trials_become_dvc_experiments_with_test_metrics(synthetic_pipeline, tmp_path):
    project = copy_project(synthetic_pipeline, tmp_path / "project")
    write_study(project)
    tool = [sys.executable, "-m", "experiments.tune"]
    run(tool, project)
    study = study_of(project)
    best = study.best_trial

    applied = run([*tool, "--apply"], project)

    assert f"trial {best.number} (val loss" in applied.stdout
    name = f"small-trial-{best.number}"
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    revs = {rev.get("name"): rev["data"] for commit in shown for exp in commit.get("experiments") or []
            for rev in exp["revs"]}
    assert name in revs
    params = revs[name]["params"]["params.yaml"]["data"]
    values = search_space(load_settings(project / "tuning.yaml"), yaml.safe_load((project / "params.yaml").read_text()),
                          ).decode(best.params)
    for dotted, value in values.items():
        node = params
        for key in dotted.split("."):
            node = node[key]
        assert node == value, dotted
    live = revs[name]["metrics"]["dvclive/metrics.json"]["data"]
    assert live["best_val_loss"] == best.value, "the experiment reproduces the trial to the last bit"
    assert "accuracy" in revs[name]["metrics"]["reports/metrics.json"]["data"]

    queued = run([*tool, "--queue", "3"], project)
    assert f"trial {best.number}: already the experiment {name}" in queued.stdout
    assert queued.stdout.count("dvc exp run --queue") == 2
    status = run(["dvc", "queue", "status"], project).stdout
    ranked = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.value, t.number))
    assert ranked[0].number == best.number
    for trial in ranked[1:3]:
        assert re.search(rf"small-trial-{trial.number}\s.*Queued", status)
    run(["dvc", "queue", "remove", "--queued"], project)


def test_dvc_overrides_keep_floats_floats_for_every_yaml_loader():
    overrides = dvc_overrides({"lr": 1e-05, "momentum": 0.9, "batch_size": 256, "train.hidden_sizes": [256, 128],
                               "train.embedding.sigma": 0.123456789012345})
    assert overrides == ["lr=1.0e-05", "momentum=0.9", "batch_size=256", "train.hidden_sizes=[256,128]",
                         "train.embedding.sigma=0.123456789012345"]
    assert yaml.safe_load("lr: 1.0e-05")["lr"] == 1e-05


BAD_SPACES = {
    "unknown key": ({"train.dropuot": {"low": 0.0, "high": 0.2}}, "space.train.dropuot: not a key of params.yaml"),
    "earlier stage": ({"split.seed": {"choices": [1, 2]}}, "space.split.seed: not tuned in-process"),
    "a section": ({"train.embedding": {"choices": [1]}}, "space.train.embedding: a section of params.yaml"),
    "empty range": ({"lr": {"low": 0.3, "high": 0.01}}, "space.lr: low 0.3 is above high 0.01: an empty range"),
    "empty choices": ({"batch_size": {"choices": []}}, "space.batch_size: choices:"),
    "refused value": ({"train.dropout": {"low": 0.0, "high": 1.5}},
                      "space.train.dropout: high 1.5: params.yaml would refuse it"),
    "range of a list": ({"train.hidden_sizes": {"low": 1, "high": 2}},
                        "space.train.hidden_sizes: params.yaml holds [128, 64] there, not a number"),
    "float bounds for an int": ({"batch_size": {"low": 32.5, "high": 64}},
                                "space.batch_size: an integer parameter needs whole-number low, high and step"),
    "log of zero": ({"train.dropout": {"low": 0.0, "high": 0.2, "log": True}}, "a log range needs low above 0"),
    "typo in a spec": ({"lr": {"low": 0.01, "hihg": 0.2}}, "space.lr: high: missing key"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_a_bad_search_space_is_one_line_and_leaves_the_study_untouched(case, after_one_trial, capsys):
    workdir = after_one_trial
    space, message = BAD_SPACES[case]
    write_study(workdir, space=space)

    code, out, err = tune_here(["--trials", "2"], capsys)

    assert code == 2
    assert err.startswith("error: tuning.yaml: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert len(study_of(workdir).trials) == 1


@pytest.mark.slow
def test_a_changed_space_or_missing_data_leave_the_study_untouched(after_one_trial, capsys):
    workdir = after_one_trial
    write_study(workdir, space={**SMALL_SPACE, "lr": {"low": 0.02, "high": 0.2}})
    code, _, err = tune_here(["--trials", "2"], capsys)
    assert code == 7 and "study 'small' in sqlite:///tuning/optuna.db was run with another search space" in err

    write_study(workdir)
    shutil.rmtree(workdir / "data" / "processed")
    code, _, err = tune_here(["--trials", "2"], capsys)
    assert code == 3 and "data/processed/train.parquet: not found; run `dvc repro preprocess` first" in err
    assert err.count("\n") == 1 and len(study_of(workdir).trials) == 1


def test_storages_that_cannot_be_opened_never_show_their_password(workdir, capsys):
    (workdir / "garbage.db").write_bytes(b"not a database at all" * 100)
    cases = {
        "sqlite:///garbage.db": "--storage sqlite:///garbage.db: cannot be opened (",
        "postgresql://tuner:s3cret-pw@127.0.0.1:1/optuna": "--storage postgresql://tuner:***@127.0.0.1:1/optuna: "
                                                           "cannot be opened (",
        "not a url": "--storage not a url: not a database URL",
    }
    for url, message in cases.items():
        code, out, err = tune_here(["--storage", url], capsys)
        assert code == 7 and message in err, err
        assert err.count("\n") == 1 and "s3cret" not in out + err and "Traceback" not in err
    assert (workdir / "garbage.db").read_bytes() == b"not a database at all" * 100


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "argument --workers: expected 1 or more, got 0"),
    (["--trials", "many"], "argument --trials: expected a whole number, got 'many'"),
    (["--apply", "--queue", "2"], "argument --queue: not allowed with argument --apply"),
])
def test_usage_errors(args, message, workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tune.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_apply_needs_a_complete_trial_and_a_project(workdir, capsys):
    code, _, err = tune_here(["--apply"], capsys)
    assert code == 2 and "no dvc.yaml here" in err
    (workdir / "dvc.yaml").write_text("stages: {}\n")
    code, _, err = tune_here(["--apply"], capsys)
    assert code == 7 and "no study named 'small'" in err


@pytest.mark.slow
def test_the_console_script_says_where_tuning_is(tmp_path):
    """The installed command never runs the clone's code: `spotify-genre tune` names the clone's command."""
    outside = run([str(BIN / "spotify-genre"), "tune", "--trials", "1"], tmp_path, check=False)
    assert outside.returncode == 2
    assert outside.stdout == ""
    assert outside.stderr.count("\n") == 1 and "python -m experiments.tune" in outside.stderr
    helped = run([str(BIN / "spotify-genre"), "--help"], tmp_path)
    assert "experiments.tune" in helped.stdout


def test_without_optuna_it_names_the_extra_to_install(workdir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails as if it were not installed
    code, out, err = tune_here([], capsys)
    assert code == 2 and out == ""
    assert err == "error: python -m experiments.tune needs Optuna: pip install -e '.[tune]' (or `make install`)\n"


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_queued_again(tmp_path):
    """A worker killed between starting a trial and its first heartbeat leaves a running trial no heartbeat will
    ever mark stale: once the grace period is over it is failed and queued again with the same params."""
    from experiments.study import fail_silent_trials, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", 1)
    study = optuna.create_study(storage=storage, study_name="silent")
    silent = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})  # running, never a heartbeat
    fail_silent_trials(study, storage, grace_seconds=3600)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING], "within the grace period: left alone"

    fail_silent_trials(study, storage, grace_seconds=0)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == {"x": silent.params["x"]}
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[1]) == 0
