"""How a measured figure reads in reports/bench.md: a median with its range, a rate, a size, and whether a target
was met; shared by the report and the sections that write their own lines."""

from __future__ import annotations


def number(value: float, unit: str = "") -> str:
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text}{unit}"


def fig(stats: dict, unit: str = " s", scale: float = 1.0) -> str:
    """The median, and the range in brackets where there was more than one run."""
    median = number(stats["median"] * scale, unit)
    if stats["n"] < 2:
        return median
    return f"{median} ({number(stats['min'] * scale)}–{number(stats['max'] * scale)})"


def rate(stats: dict, unit: str = "/s") -> str:
    def r(value: float) -> str:
        return f"{value:,.0f}"

    if stats["n"] < 2:
        return f"{r(stats['median'])}{unit}"
    return f"{r(stats['median'])}{unit} ({r(stats['min'])}–{r(stats['max'])})"


def mib(stats: dict) -> str:
    return f"{stats['max']:,.0f} MiB" if stats["max"] < 1024 else f"{stats['max'] / 1024:.2f} GiB"


def at_most(measured: float, target: float, unit: str = " s") -> str:
    if measured <= target:
        return "met"
    return f"**missed** by {number(measured - target, unit)} ({measured / target:.1f}× the target)"
