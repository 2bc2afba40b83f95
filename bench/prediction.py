"""Section `predict`: `spotify-genre predict` on 100,000 songs, end to end and without process start-up.

The input is the raw songs repeated to the row count (real songs when the dataset is present), written with
every raw column; the model and preprocessor are those the pipeline trains with the default params. End to
end is a fresh `python -m spotify_genre.cli` process per run; "in process" calls the same `main()` in this
process, after one unmeasured call, so the interpreter's start and the imports (torch, pandas) are left out.
"""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import pandas as pd

from bench.context import Context
from bench.measure import BenchError, python, run, summary
from bench.project import RAW_CSV

ROWS = 100_000
QUICK_ROWS = 20_000
TARGET_S = 5.0  # "100,000 rows in a few seconds on a 2-core CPU" (issue 7)
SMALL_ROWS = 10
SMALL_TARGET_S = 2.0  # issue 14: a handful of songs is start-up alone


def songs_csv(raw: pd.DataFrame, rows: int) -> bytes:
    """`rows` songs: the raw table repeated, then cut."""
    return raw.iloc[np.arange(rows) % len(raw)].to_csv(index=False, lineterminator="\n").encode("utf-8")


def measure(ctx: Context) -> dict:
    from spotify_genre.cli import main as predict_main

    rows = QUICK_ROWS if ctx.quick else ROWS
    project = ctx.prepared("train")
    source = project / "songs.csv"
    source.write_bytes(songs_csv(pd.read_csv(project / RAW_CSV, dtype=str, keep_default_na=False), rows))
    model, preprocessor, output = project / "models/model.pt", project / "models/preprocessor.json", project / "out.csv"
    argv = ["predict", str(source), "-o", str(output), "--model", str(model), "--preprocessor", str(preprocessor)]

    ctx.log(f"predict: {rows:,} rows, end to end x{ctx.runs}")
    end_to_end = [run(python("-m", "spotify_genre.cli", *argv), project) for _ in range(ctx.runs)]
    written = output.read_text(encoding="utf-8").count("\n") - 1
    if written != rows:
        raise BenchError(f"predict wrote {written} rows for {rows}")

    ctx.log(f"predict: {rows:,} rows, in process x{ctx.runs} (after one unmeasured call)")
    in_process = []
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet):
        for attempt in range(ctx.runs + 1):
            started = time.perf_counter()
            code = predict_main(argv)
            seconds = time.perf_counter() - started
            if code != 0:
                raise BenchError(f"predict exited {code}: {quiet.getvalue()[-500:]}")
            if attempt:
                in_process.append(seconds)
    startup = [run(python("-c", "import spotify_genre.cli, spotify_genre.model"), project).seconds
               for _ in range(ctx.runs)]

    small = project / "songs-10.csv"
    small.write_bytes(songs_csv(pd.read_csv(project / RAW_CSV, dtype=str, keep_default_na=False), SMALL_ROWS))
    ctx.log(f"predict: {SMALL_ROWS} rows, end to end x{ctx.runs}")
    small_argv = ["predict", str(small), "-o", str(output), "--model", str(model), "--preprocessor", str(preprocessor)]
    small_runs = [run(python("-m", "spotify_genre.cli", *small_argv), project).seconds for _ in range(ctx.runs)]

    wall = [r.seconds for r in end_to_end]
    return {
        "rows": rows,
        "input_mib": round(source.stat().st_size / 2**20, 1),
        "command": "python -m spotify_genre.cli songs.csv -o out.csv",
        "end_to_end_s": summary(wall),
        "end_to_end_rows_per_s": summary([rows / seconds for seconds in wall]),
        "peak_rss_mib": summary([r.max_rss_bytes / 2**20 for r in end_to_end]),
        "in_process_s": summary(in_process),
        "in_process_rows_per_s": summary([rows / seconds for seconds in in_process]),
        "import_s": summary(startup),
        "target_s": TARGET_S,
        "small": {"rows": SMALL_ROWS, "end_to_end_s": summary(small_runs), "target_s": SMALL_TARGET_S},
    }
