"""The command-line tools the project's own code runs, and how: the `dvc` beside this Python (the project's .venv,
which `make install` fills), else the first on PATH, so they work whether or not the virtual environment is
activated; and the environment every child process gets (the tests', bench's)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from spotify_genre.errors import PipelineError

VENV_BIN = Path(sys.executable).parent


def dvc_executable() -> str:
    beside = VENV_BIN / "dvc"
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if found is None:
        raise PipelineError("dvc not found: install the pipeline extra (`make install`)")
    return found


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this venv's tools first, unbuffered output, a fixed hash seed, no
    analytics, no Git prompt, and no real Kaggle or AWS credentials."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KAGGLE_", "AWS_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONHASHSEED"] = "0"
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.update(extra)
    return env
