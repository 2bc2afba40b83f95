"""A stage's process, at its two ends: when it started, for the timing reports (reports/timing/, outside Git and
DVC: the seconds before main() runs are Python's start-up and the imports, torch's, pandas', matplotlib's), and
how it exits, without the interpreter's last walk over every object the imports left."""

from __future__ import annotations

import gc
import os
import sys
from typing import Callable, NoReturn


def seconds_since_start() -> float | None:
    """Seconds since this process started, to the kernel's clock tick (10 ms); None where /proc cannot tell."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return round(now - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def exit_with(main: Callable[[], int]) -> NoReturn:
    """Run a stage's main() and exit with its code, every object alive by then frozen out of the garbage collector
    (gc.freeze): the interpreter's shutdown then does not walk them all again. After `import torch` that walk took
    about half a second of every stage's exit on a loaded 2-core machine (0.13 s frozen). Exit handlers, the
    standard streams' flush and the modules' teardown still run; what is not finalised is an object kept alive
    only by a reference cycle, so a file left open in one would lose what its buffer still held: every stage
    writes its outputs through files it closes (spotify_genre/atomic.py)."""
    code = main()
    gc.freeze()
    sys.exit(code)
