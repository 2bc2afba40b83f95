"""Section `scaling`: every stage on synthetic songs of 1x, 10x and 100x the real row count: wall time, peak RSS.

Each stage runs as its own command (`python -m stages.<name>`, no DVC) in a fresh process; its peak memory is
the process's maximum resident set as the kernel reports it when the process is reaped. Training is capped at
a fixed number of epochs at every size (no early stopping), so each size does the same work per row.
"""

from __future__ import annotations

import math
import shutil

from bench.context import Context
from bench.measure import summary
from bench.project import REAL_ROWS, Dataset, plain_project, run_stage, stage_order

FACTORS = (1, 10, 100)
QUICK_FACTORS = (0.1, 1)
EPOCHS = 2
TARGET_PEAK_GIB = 4.0
# Time may grow at most this much faster than the rows (10% for run-to-run noise) before the target counts as missed.
TOLERANCE = 1.1


def growth(small: float, large: float, rows_small: int, rows_large: int) -> float:
    """Time ratio over row ratio: 1 grows as the rows do, below 1 slower (fixed costs), above 1 faster."""
    return (large / small) / (rows_large / rows_small)


def measure(ctx: Context) -> dict:
    factors = QUICK_FACTORS if ctx.quick else FACTORS
    order = stage_order()
    sizes = []
    for factor in factors:
        rows = round(REAL_ROWS * factor)
        project = plain_project(ctx.workdir / f"scaling-{rows}", Dataset("synthetic", None, {}), {
            "data.source": "synthetic", "data.synthetic_rows": rows, "train.max_epochs": EPOCHS,
            "train.patience": EPOCHS})
        stages = {}
        for stage in order:
            ctx.log(f"scaling: {rows:,} rows: {stage} x{ctx.runs}")
            results = [run_stage(project, stage) for _ in range(ctx.runs)]
            stages[stage] = {"seconds": summary([r.seconds for r in results]),
                             "peak_rss_mib": summary([r.max_rss_bytes / 2**20 for r in results])}
        sizes.append({"factor": factor, "rows": rows, "stages": stages,
                      "total_s": round(sum(s["seconds"]["median"] for s in stages.values()), 3)})
        if not ctx.keep:
            shutil.rmtree(project, ignore_errors=True)

    first, last = sizes[0], sizes[-1]
    verdicts = {}
    for stage in order:
        ratios = [growth(a["stages"][stage]["seconds"]["median"], b["stages"][stage]["seconds"]["median"],
                         a["rows"], b["rows"]) for a, b in zip(sizes, sizes[1:])]
        verdicts[stage] = {
            "growth_per_step": [round(value, 3) for value in ratios],
            "exponent": round(math.log(last["stages"][stage]["seconds"]["median"]
                                       / first["stages"][stage]["seconds"]["median"])
                              / math.log(last["rows"] / first["rows"]), 3),
            "peak_rss_gib_at_largest": round(last["stages"][stage]["peak_rss_mib"]["max"] / 1024, 3),
        }
    return {
        "train_epochs": EPOCHS,
        "sizes": sizes,
        "stages": verdicts,
        "target_peak_gib": TARGET_PEAK_GIB,
        "growth_tolerance": TOLERANCE,
    }
