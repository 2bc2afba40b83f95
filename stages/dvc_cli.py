"""The `dvc` command that the pipeline's own tools run: the one beside this Python (the project's .venv, which
`make install` fills), else the first on PATH, so they work whether or not the virtual environment is activated."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from spotify_genre.errors import PipelineError


def dvc_executable() -> str:
    beside = Path(sys.executable).with_name("dvc")
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if found is None:
        raise PipelineError("dvc not found: install the pipeline extra (`make install`)")
    return found
