"""The scale-out path of docs/tuning.md: two "machines" (two folders, each with its own copy of the processed
splits) run `tune` at once on one study in a real PostgreSQL server on 127.0.0.1, with a password that never
reaches their output."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="Optuna comes with the tune extra: "
                             "pip install -c requirements/constraints.txt -e '.[pipeline,dev,tune]'")

from optuna.trial import TrialState  # noqa: E402  (after the skip: optuna may be absent)

from tests.conftest import ROOT, tool_env  # noqa: E402
from tests.test_tune import write_study  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

PASSWORD = "s3cret-tuner-pw"


def _server_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _as_server_user(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; where the tests are root, its own `postgres` user runs it."""
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> str:
    """A PostgreSQL server of its own on 127.0.0.1, a `tuner` role with a password and an `optuna` database;
    stopped at the end. The URL carries no password: PGPASSWORD does, as docs/tuning.md advises."""
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server programs are absent (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is absent (the dev extra installs it)")
    # Outside pytest's own temporary folders, which only their owner may enter.
    folder = Path(tempfile.mkdtemp(prefix="spotify-genre-postgres-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    port = _free_port()
    subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                                    "--auth-local=trust", "--auth-host=scram-sha-256"]),
                   check=True, capture_output=True)
    subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w",
                                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        setup = (f"CREATE ROLE tuner LOGIN PASSWORD '{PASSWORD}'; CREATE DATABASE optuna OWNER tuner;")
        for statement in setup.split("; "):
            subprocess.run(_as_server_user([str(binaries / "psql"), "-h", str(folder), "-p", str(port), "-U",
                                            "postgres", "-d", "postgres", "-c", statement]),
                           check=True, capture_output=True)
        yield f"postgresql://tuner@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _machine(synthetic_pipeline: Path, folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    shutil.copy(synthetic_pipeline / "params.yaml", folder / "params.yaml")
    shutil.copytree(synthetic_pipeline / "data" / "processed", folder / "data" / "processed")
    write_study(folder, trials=6)
    return folder


@contextlib.contextmanager
def trials_held(url: str, processes: list[subprocess.Popen]):
    """Optuna's tables created, and its trials table locked in a transaction of the test's own until every one of
    `processes` waits for it: each `tune` then starts its first trial at the same moment, however long its start-up
    took on a loaded machine."""
    import psycopg

    optuna.storages.RDBStorage(url)  # creates the tables
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
        holder.execute("LOCK TABLE trials IN ACCESS EXCLUSIVE MODE")
        yield
        deadline = time.monotonic() + 120
        try:
            while watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'optuna' AND "
                                  "wait_event_type = 'Lock'").fetchone()[0] < len(processes):
                for process in processes:
                    if process.poll() is not None:
                        pytest.fail(f"a tune ended before the study's first trial: {process.communicate()}")
                assert time.monotonic() < deadline, "the tunes never reached the study's trials"
                time.sleep(0.1)
        except BaseException:
            for process in processes:
                process.kill()
                process.communicate()
            raise
    # Leaving the block commits the holder's transaction, which frees the table.


def test_two_machines_share_one_study_through_postgresql(postgres, synthetic_pipeline, tmp_path):
    machines = [_machine(synthetic_pipeline, tmp_path / name) for name in ("a", "b")]
    env = tool_env(PYTHONPATH=str(ROOT), PGPASSWORD=PASSWORD)
    url = postgres.replace("tuner@", f"tuner:{PASSWORD}@")
    processes = []
    with trials_held(url, processes):
        processes += [subprocess.Popen([sys.executable, "-m", "experiments.tune", "--storage", postgres,
                                        "--seed", str(seed)], cwd=folder, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
                      for folder, seed in zip(machines, (100, 200))]
    outputs = [process.communicate(timeout=300) for process in processes]

    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert PASSWORD not in out + err
    study = optuna.load_study(study_name="small", storage=url)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 6, "the two machines finish one study of 6 trials between them"
    assert len({tuple(sorted(trial.params.items())) for trial in done}) == 6, "no params drawn twice"
    ran = [out.count(": complete in") for out, _ in outputs]
    assert sum(ran) == 6 and all(ran), "both machines ran trials"
    for folder in machines:
        assert "6 finished of 6 planned" in (folder / "reports" / "tuning.md").read_text()


def test_a_wrong_password_is_one_line_that_never_shows_it(postgres, synthetic_pipeline, tmp_path, monkeypatch):
    from experiments import tune

    folder = _machine(synthetic_pipeline, tmp_path / "wrong")
    monkeypatch.chdir(folder)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = postgres.replace("tuner@", "tuner:not-the-pw-xyz@")

    code = tune.main(["--storage", url])

    assert code == 7
    captured = subprocess.run([sys.executable, "-m", "experiments.tune", "--storage", url], cwd=folder,
                              env=tool_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert captured.returncode == 7 and captured.stdout == ""
    assert captured.stderr.startswith(f"error: --storage {postgres.replace('tuner@', 'tuner:***@')}: cannot be "
                                      "opened (")
    assert captured.stderr.count("\n") == 1 and "not-the-pw-xyz" not in captured.stderr
