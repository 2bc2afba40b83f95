"""When this process started, for the stages' timing reports (reports/timing/, outside Git and DVC): the seconds a
stage spends before its main() runs are Python's start-up and its imports (torch's, pandas', matplotlib's)."""

from __future__ import annotations

import os


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
