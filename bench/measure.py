"""Timing and memory of child processes, and the summary statistics every reported figure is made of."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pipeline.tools import VENV_BIN, child_env

CHILD = Path(__file__).with_name("child.py")


class BenchError(Exception):
    """A measured command failed, or the harness cannot run: one line for the user, no traceback."""


def summary(values: Sequence[float], digits: int = 4) -> dict:
    """Median with its spread (min, max, quartiles) and the runs themselves."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("no values to summarise")
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]

    def r(value: float) -> float:
        return float(f"{value:.{digits}g}")

    return {"median": r(statistics.median(ordered)), "min": r(ordered[0]), "max": r(ordered[-1]),
            "q1": r(q1), "q3": r(q3), "n": len(ordered), "runs": [r(value) for value in values]}


@dataclass
class Run:
    """One finished command: its wall time, peak resident memory, and what it printed, line by line."""

    args: list[str]
    seconds: float
    max_rss_bytes: int
    returncode: int
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line), stdout and stderr

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def check(self) -> Run:
        if self.returncode != 0:
            tail = "\n".join(line for _, line in self.lines[-25:])
            raise BenchError(f"`{' '.join(self.args)}` exited {self.returncode}:\n{tail}")
        return self


def run(args: Sequence[str], cwd: Path, *, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 1800) -> Run:
    """Run a command to completion, timestamping each output line (stdout and stderr) as it arrives.

    The command runs under bench/child.py, which times it and reads its own peak resident memory (ru_maxrss)
    when it ends: the largest resident set of the command's process, or of any process it waited for.
    """
    args = [str(arg) for arg in args]
    with tempfile.TemporaryDirectory(prefix="bench-child-") as folder:
        report = Path(folder) / "result"
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-S", str(CHILD), str(report), *args], cwd=cwd,
                                   env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, bufsize=1, errors="replace",
                                   start_new_session=True)
        timer = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        lines: list[tuple[float, str]] = []
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append((time.perf_counter() - started, line.rstrip("\n")))
            process.wait()
        finally:
            timer.cancel()
        if not report.exists():
            raise BenchError(f"`{' '.join(args)}` was stopped after {timeout:g} s, or its timer failed "
                             f"(exit {process.returncode}):\n" + "\n".join(line for _, line in lines[-10:]))
        seconds, max_rss = report.read_text().split()
    result = Run(args, float(seconds), int(max_rss), process.returncode, lines)
    return result.check() if check else result


def python(*args: str) -> list[str]:
    """A command line that runs this venv's Python."""
    return [sys.executable, *args]


def tool(name: str) -> str:
    """A console script of this venv (dvc), by full path."""
    path = VENV_BIN / name
    return str(path) if path.exists() else name
