"""Shared fixtures: the repository's paths, the real dataset when present, and throwaway DVC projects."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import stages  # noqa: F401  (the numerics pin, before any test module imports numpy or torch)

import pytest
import yaml

from bench.project import PROJECT_FILES
from pipeline.params import with_values as with_overrides
from pipeline.tools import child_env
from spotify_genre import numerics

# The pinned variables as they were before the pin, {name: value or None}, handed down to pytest-xdist's workers.
# pytest imports spotify_genre.numerics, and so pins, while it reads the filterwarnings setting, before any
# conftest; a worker is started by a parent that has already pinned, so it would take the pinned values for its own
# "before", and its "unpinned" children (the negative controls, the fresh processes that must pin themselves) would
# run pinned. A worker takes its parent's record instead.
ENV_BEFORE_PIN = "SPOTIFY_GENRE_TESTS_ENV_BEFORE_PIN"
if ENV_BEFORE_PIN in os.environ:
    numerics._BEFORE_PIN.update(json.loads(os.environ[ENV_BEFORE_PIN]))
else:
    _before = numerics.unpinned_environment()
    os.environ[ENV_BEFORE_PIN] = json.dumps({name: _before.get(name) for name in numerics.PINNED})

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REAL_ZIP_CANDIDATES = (
    ROOT / "data" / "external" / "30000-spotify-songs.zip",
    ROOT.parent / "shared" / "data" / "spotify_songs.zip",
)
REAL_CSV_SHA256 = "9902920cfe4940f0914ebb6716801a42f7f19ac88fbd6693eaae7e2822b16845"


# The files that take longest, first (by their worker time in a `make test` of 2026-12-07): `make test` runs the
# suite on two workers a file at a time, in this order (pytest-xdist's --dist loadfile --no-loadscope-reorder), and a
# long file handed out last would leave one worker running it alone at the end. The first two are one that builds
# the shared synthetic pipeline and one that does not need it, so neither worker starts by waiting for it.
LONGEST_FILES = ("test_experiments.py", "test_portability.py", "test_tune.py", "test_reliability.py",
                 "test_realdata.py", "test_faults.py", "test_remote.py", "test_download.py", "test_predict.py",
                 "test_catalogue.py", "test_tune_postgres.py", "test_registry.py", "test_preprocess.py",
                 "test_serve.py", "test_plots_browser.py")


def pytest_configure(config):
    """A suite started in the background of a shell without job control (`make test &` in a script) inherits
    SIGINT ignored, and so would every process its tests start, which then could not show what Ctrl-C does: the
    tests' children get the default disposition instead."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """The `install` tests run only when asked for by name (`-m install`, as `make test-install` does): they take
    minutes, and an `-m "not e2e"` of one's own would otherwise pull them in. The rest run longest file first (a
    stable sort: each file's tests keep their order)."""
    items.sort(key=lambda item: LONGEST_FILES.index(item.path.name) if item.path.name in LONGEST_FILES
               else len(LONGEST_FILES))
    if "install" in (config.option.markexpr or ""):
        return
    chosen = [item for item in items if item.get_closest_marker("install") is None]
    if len(chosen) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = chosen


def real_zip() -> Path | None:
    return next((path for path in REAL_ZIP_CANDIDATES if path.is_file()), None)


needs_real_data = pytest.mark.skipif(
    real_zip() is None, reason="the real dataset is absent (expected at ../shared/data/spotify_songs.zip)"
)


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: this venv's tools first, no real Kaggle credentials."""
    return child_env(**extra)


def user_env(**extra: str) -> dict[str, str]:
    """tool_env as a user's shell would have it: without the numerics pin this test process set, so a child proves
    that it pins itself."""
    from spotify_genre.numerics import MODE_VARIABLE, unpinned_environment

    env = unpinned_environment(tool_env())
    del env[MODE_VARIABLE]
    env.update(extra)
    return env


# What spotify_genre.numerics.in_effect() reports once numpy and torch have run under the pin.
PINNED_STATE = {"mode": "portable", "numpy": "AVX2 or less", "aten": "AVX2", "mkl_cbwr": "COMPATIBLE"}


def run(args: list[str] | str, cwd: Path, *, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capture its output, and on an unexpected exit code fail with that output."""
    result = subprocess.run(args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True,
                            timeout=timeout, shell=isinstance(args, str), **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{args} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write_params(repo: Path, overrides: dict[str, object]) -> None:
    params = with_overrides(yaml.safe_load((repo / "params.yaml").read_text()), overrides)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# Small and quick: a synthetic dataset and a short training run.
SYNTHETIC_OVERRIDES = {
    "data.source": "synthetic",
    "data.synthetic_rows": 3000,
    "train.max_epochs": 8,
    "baselines.models": ["majority", "hist_gradient_boosting"],
}


def make_project(dest: Path, overrides: dict[str, object] | None = None) -> Path:
    """A fresh Git + DVC repository holding the pipeline, with params overridden, committed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    write_params(dest, overrides or {})
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "config", "user.email", "tests@example.invalid"], dest)
    run(["git", "config", "user.name", "tests"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "pipeline"], dest)
    return dest


def copy_project(source: Path, dest: Path) -> Path:
    """A copy of a project with its Git history, DVC cache and workspace: as independent as a clone, but nothing
    has to run again."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def session_folder(config: pytest.Config, tmp_path_factory) -> Path:
    """The temporary folder of the whole test run: pytest's own, or under pytest-xdist the one its workers share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


@pytest.fixture(scope="session")
def synthetic_pipeline(request, tmp_path_factory) -> Path:
    """The synthetic pipeline run once per test run (`dvc repro`), every result committed: under pytest-xdist the
    first worker to need it builds it, under a lock, and the others wait for it and use the same one.

    A test that only reads it uses it as it is (and writes nothing into it); a test that changes anything works on a
    copy_project() of it."""
    folder = session_folder(request.config, tmp_path_factory) / "synthetic-pipeline"
    folder.mkdir(exist_ok=True)
    project, built = folder / "project", folder / "built"
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            if project.exists():  # a worker that failed half-way
                shutil.rmtree(project)
            make_project(project, SYNTHETIC_OVERRIDES)
            run(["dvc", "repro"], project)
            run(["git", "add", "-A"], project)
            run(["git", "commit", "-q", "-m", "results"], project)
            built.touch()
    return project


def replace_preprocessor_arrays(path: Path, arrays: dict) -> None:
    """Write `arrays` as the .npz beside the preprocessor JSON at `path`, and record its sha256 in every section
    of the JSON that names the .npz, so only the arrays themselves can be what a load refuses."""
    import hashlib
    import io
    import json

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.with_suffix(".npz").write_bytes(buffer.getvalue())
    data = json.loads(path.read_text())
    for section in ("text", "ids", "known"):
        if section in data:
            data[section]["arrays_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    path.write_text(json.dumps(data))
