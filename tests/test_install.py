"""`pip install .` into an empty venv gives a working `spotify-genre predict` and none of the pipeline's tools.

Marked `install`: creating the venv copies torch (70–110 s on a 2-core machine), so `make test` leaves it out and
`make test-install` (which .ci/run runs after `make test`) runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run, tool_env

pytestmark = pytest.mark.install

PIPELINE_ONLY = ("dvc", "dvc-s3", "dvclive", "kaggle", "matplotlib", "scikit-learn", "pyyaml", "requests", "tqdm",
                 "gto")
SERVE_ONLY = ("fastapi", "starlette", "uvicorn")
EXAMPLE = ROOT / "docs" / "example_songs.csv"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the project installed from a copy of the checkout, as a user would: no extras."""
    where = tmp_path_factory.mktemp("install")
    source = where / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".dvc", "data", "models", "dvclive", "reports", "*.egg-info", "__pycache__", "build"))
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, "-c", str(ROOT / "requirements" / "constraints.txt"), str(source)], where, timeout=1200)
    return venv


def test_no_extras_install_only_what_predict_needs(installed):
    listed = json.loads(run([str(installed / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            installed).stdout)
    names = {package["name"].lower() for package in listed}
    assert "spotify-genre" in names and "torch" in names and "pydantic" in names
    pulled = sorted(names & set(PIPELINE_ONLY + SERVE_ONLY))
    assert not pulled, f"pip install . pulled pipeline or serve packages: {pulled}"


def test_serve_without_its_extra_says_so_in_one_line(installed, tmp_path):
    env = {key: value for key, value in tool_env().items() if key != "PYTHONPATH"}
    result = run([str(installed / "bin" / "spotify-genre"), "serve"], tmp_path, env=env, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "pip install -e '.[serve]' from a clone" in result.stderr


def test_installed_predict_gives_the_same_bytes_as_the_checkout(installed, synthetic_pipeline, tmp_path):
    """The bundle and preprocessor of the pytest session's synthetic pipeline, predicted with outside the checkout, so
    that nothing but the installed package can be imported."""
    trained = synthetic_pipeline
    args = ["predict", str(EXAMPLE), "--model", str(trained / "models" / "model.pt"),
            "--preprocessor", str(trained / "models" / "preprocessor.json"), "--top-k", "2"]
    env = {key: value for key, value in tool_env().items() if key != "PYTHONPATH"}
    env["PATH"] = f"{installed / 'bin'}:/usr/bin:/bin"
    from_install = run([str(installed / "bin" / "spotify-genre"), *args], tmp_path, env=env)
    from_checkout = run([sys.executable, "-m", "spotify_genre.predict.cli", *args], ROOT)
    assert from_install.stdout.count("\n") == len(EXAMPLE.read_text().splitlines())  # a header, a row per song
    assert from_install.stdout == from_checkout.stdout
    where = run([str(installed / "bin" / "python"), "-c", "import spotify_genre; print(spotify_genre.__file__)"],
                tmp_path, env=env).stdout
    assert str(installed) in where
    for clone in ("stages", "pipeline", "experiments", "bench"):
        absent = run([str(installed / "bin" / "python"), "-c", f"import {clone}"], tmp_path, env=env, check=False)
        assert absent.returncode != 0 and f"No module named '{clone}'" in absent.stderr
