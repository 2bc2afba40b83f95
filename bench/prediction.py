"""Sections `predict` and `catalogue`: `spotify-genre predict` on 100,000 songs, end to end and without process
start-up; and streamed over whole catalogues (measure_catalogue).

The input is the raw songs repeated to the row count (real songs when the dataset is present), written with
every raw column; the model and preprocessor are those the pipeline trains with the default params. End to
end is a fresh `python -m spotify_genre.predict.cli` process per run; "in process" calls the same `main()` in this
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
TARGET_S = 5.0  # the project's goal: 100,000 rows in a few seconds on a 2-core CPU
SMALL_ROWS = 10
SMALL_TARGET_S = 2.0  # the project's goal for a handful of songs, which is start-up alone


def songs_csv(raw: pd.DataFrame, rows: int) -> bytes:
    """`rows` songs: the raw table repeated, then cut."""
    return raw.iloc[np.arange(rows) % len(raw)].to_csv(index=False, lineterminator="\n").encode("utf-8")


def measure(ctx: Context) -> dict:
    from spotify_genre.predict.cli import main as predict_main

    rows = QUICK_ROWS if ctx.quick else ROWS
    project = ctx.prepared("train")
    source = project / "songs.csv"
    source.write_bytes(songs_csv(pd.read_csv(project / RAW_CSV, dtype=str, keep_default_na=False), rows))
    model, preprocessor, output = project / "models/model.pt", project / "models/preprocessor.json", project / "out.csv"
    argv = ["predict", str(source), "-o", str(output), "--model", str(model), "--preprocessor", str(preprocessor)]

    ctx.log(f"predict: {rows:,} rows, end to end x{ctx.runs}")
    end_to_end = [run(python("-m", "spotify_genre.predict.cli", *argv), project) for _ in range(ctx.runs)]
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
    startup = [run(python("-c", "import spotify_genre.predict.cli, spotify_genre.model"), project).seconds
               for _ in range(ctx.runs)]

    small = project / "songs-10.csv"
    small.write_bytes(songs_csv(pd.read_csv(project / RAW_CSV, dtype=str, keep_default_na=False), SMALL_ROWS))
    ctx.log(f"predict: {SMALL_ROWS} rows, end to end x{ctx.runs}")
    small_argv = ["predict", str(small), "-o", str(output), "--model", str(model), "--preprocessor", str(preprocessor)]
    small_runs = [run(python("-m", "spotify_genre.predict.cli", *small_argv), project).seconds for _ in range(ctx.runs)]

    wall = [r.seconds for r in end_to_end]
    return {
        "rows": rows,
        "input_mib": round(source.stat().st_size / 2**20, 1),
        "command": "python -m spotify_genre.predict.cli songs.csv -o out.csv",
        "end_to_end_s": summary(wall),
        "end_to_end_rows_per_s": summary([rows / seconds for seconds in wall]),
        "peak_rss_mib": summary([r.max_rss_bytes / 2**20 for r in end_to_end]),
        "in_process_s": summary(in_process),
        "in_process_rows_per_s": summary([rows / seconds for seconds in in_process]),
        "import_s": summary(startup),
        "target_s": TARGET_S,
        "small": {"rows": SMALL_ROWS, "end_to_end_s": summary(small_runs), "target_s": SMALL_TARGET_S},
    }


# --- section `catalogue`: whole-catalogue predict, streamed -------------------------------------------------------

CATALOGUE_ROWS = (100_000, 1_000_000, 10_000_000)
QUICK_CATALOGUE_ROWS = (20_000, 100_000)
FORMATS_AT = 1_000_000  # the size the input formats (CSV, .csv.gz, Parquet) are compared at
TARGET_PEAK_GIB = 1.0
TARGET_ROWS_PER_S = 100_000  # the project's goal, end to end, at FORMATS_AT rows
GROWTH_TOLERANCE = 1.1  # as the scaling section's: 10% for run-to-run noise
POLL_S = 0.05


def _tree_peak_rss(args: list[str], cwd) -> tuple[float, float, int]:
    """(wall seconds, peak resident memory of the command and all its children together, in bytes, exit code),
    polled: a pool's workers are processes of their own, which ru_maxrss would leave out."""
    import subprocess

    import psutil

    from bench.measure import child_env

    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(POLL_S)
    stderr = process.stderr.read().decode(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"`{' '.join(args)}` exited {process.returncode}: {stderr[-500:]}")
    return time.perf_counter() - started, peak, process.returncode


def _lines(path) -> int:
    with open(path, "rb") as file:
        return sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 24), b""))


def _sha256(path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _catalogue_files(folder, raw: pd.DataFrame, sizes: tuple[int, ...], ctx: Context) -> dict[int, object]:
    """CSVs of the real rows repeated to each size; a size ten times another repeats that one's rows ten times."""
    files = {}
    for rows in sizes:
        path = folder / f"songs-{rows}.csv"
        smaller = next((n for n in files if rows % n == 0 and rows // n <= 10 and n >= 100_000), None)
        ctx.log(f"catalogue: writing {rows:,} rows to {path.name}")
        if smaller is None:
            path.write_bytes(songs_csv(raw, rows))
        else:
            body = files[smaller].read_bytes()
            header, _, rest = body.partition(b"\n")
            with open(path, "wb") as file:
                file.write(header + b"\n")
                for _ in range(rows // smaller):
                    file.write(rest)
        files[rows] = path
    return files


def measure_catalogue(ctx: Context) -> dict:
    """`spotify-genre predict` over whole catalogues: 100k, 1M and 10M songs as CSV (each a fresh process, in the
    default one process), the 1M also as .csv.gz and Parquet (the same predictions, byte for byte), and with two
    worker processes: wall time, rows/s and the peak memory of the process and its workers together."""
    import gzip

    from spotify_genre.predict.predictor import DEFAULT_CHUNK_ROWS
    from spotify_genre.preprocessing.preprocessor import load_preprocessor
    from spotify_genre.songs.csv_reader import required_columns
    from spotify_genre.songs.schema import read_songs

    sizes = QUICK_CATALOGUE_ROWS if ctx.quick else CATALOGUE_ROWS
    formats_at = sizes[-1] if ctx.quick else FORMATS_AT
    project = ctx.prepared("train")
    folder = ctx.workdir / "catalogue"
    folder.mkdir(exist_ok=True)
    raw = pd.read_csv(project / RAW_CSV, dtype=str, keep_default_na=False)
    files = _catalogue_files(folder, raw, sizes, ctx)
    model, preprocessor = project / "models/model.pt", project / "models/preprocessor.json"
    base = ["predict", "--model", str(model), "--preprocessor", str(preprocessor)]

    def predict(source, output, *extra) -> tuple[float, float]:
        seconds, peak, _ = _tree_peak_rss(python("-m", "spotify_genre.predict.cli", *base[:1], str(source), "-o", str(output),
                                                 *base[1:], *extra), project)
        return seconds, peak

    results = []
    for rows in sizes:
        runs = 1 if rows >= 10_000_000 else ctx.runs
        ctx.log(f"catalogue: {rows:,} rows of CSV, end to end x{runs}")
        measured = [predict(files[rows], folder / "out.csv") for _ in range(runs)]
        written = _lines(folder / "out.csv") - 1
        if written != rows:
            raise BenchError(f"predict wrote {written:,} rows for {rows:,}")
        results.append({"rows": rows, "input_mib": round(files[rows].stat().st_size / 2**20, 1),
                        "end_to_end_s": summary([s for s, _ in measured]),
                        "rows_per_s": summary([rows / s for s, _ in measured]),
                        "peak_rss_mib": summary([peak / 2**20 for _, peak in measured])})
    expected = _sha256(folder / "out.csv") if sizes[-1] == formats_at else None
    if expected is None:
        predict(files[formats_at], folder / "out.csv")
        expected = _sha256(folder / "out.csv")

    ctx.log(f"catalogue: {formats_at:,} rows as .csv.gz and Parquet")
    source = files[formats_at]
    packed = folder / f"songs-{formats_at}.csv.gz"
    with open(source, "rb") as plain, gzip.GzipFile(packed, "wb", compresslevel=6, mtime=0) as out:
        for block in iter(lambda: plain.read(1 << 24), b""):
            out.write(block)
    pre = load_preprocessor(preprocessor)
    columns = required_columns(pre.input_features, pre.text_fields)
    parquet = folder / f"songs-{formats_at}.parquet"
    read_songs(source, "songs", required=columns, allow_extra=True)[["track_id", *columns]].to_parquet(
        parquet, index=False, row_group_size=100_000)
    formats = {}
    for name, path in (("csv.gz", packed), ("parquet", parquet)):
        seconds, peak = predict(path, folder / f"out-{name}.csv")
        formats[name] = {"input_mib": round(path.stat().st_size / 2**20, 1), "end_to_end_s": round(seconds, 2),
                         "rows_per_s": round(formats_at / seconds), "peak_rss_mib": round(peak / 2**20),
                         "same_predictions": _sha256(folder / f"out-{name}.csv") == expected}
    ctx.log(f"catalogue: {formats_at:,} rows of CSV with --workers 2")
    seconds, peak = predict(source, folder / "out-workers.csv", "--workers", "2")
    workers = {"workers": 2, "end_to_end_s": round(seconds, 2), "rows_per_s": round(formats_at / seconds),
               "peak_rss_mib": round(peak / 2**20), "same_predictions": _sha256(folder / "out-workers.csv") == expected}
    steps = _stage_costs(files[sizes[0]], model, preprocessor, ctx)
    return {"command": "python -m spotify_genre.predict.cli predict songs-N.csv -o out.csv --model … --preprocessor …",
            "seconds_per_million_by_step": steps, "steps_measured_on": sizes[0],
            "chunk_rows": DEFAULT_CHUNK_ROWS, "sizes": results, "formats_at": formats_at, "formats": formats,
            "with_workers": workers, "target_peak_gib": TARGET_PEAK_GIB, "target_rows_per_s": TARGET_ROWS_PER_S,
            "growth_tolerance": GROWTH_TOLERANCE}


def _stage_costs(source, model, preprocessor, ctx: Context) -> dict[str, float]:
    """Seconds per million songs of each step, in this process on one chunk of `source` (the model already loaded):
    what bounds the end-to-end rate."""
    from spotify_genre.model import predict_proba
    from spotify_genre.model.bundle import load_bundle
    from spotify_genre.predict.predictor import MODEL_BATCH_ROWS, Predictor, Settings
    from spotify_genre.predict.sinks import CSV, render
    from spotify_genre.predict.table import prediction_table
    from spotify_genre.preprocessing.preprocessor import model_inputs
    from spotify_genre.preprocessing.score_cache import remembering
    from spotify_genre.songs.csv_reader import parse_csv
    from spotify_genre.songs.records import split_records

    predictor = Predictor(Settings(str(model), str(preprocessor)))
    with open(source, "rb") as file:
        started = time.perf_counter()
        header, chunk = list(split_records(file, 10**9, str(source)))
        costs = {"cut into records": time.perf_counter() - started}
    scoring = remembering(predictor.pre)
    steps = {
        "read and check (schema.read_songs)": lambda: parse_csv(header.data, chunk, "songs", predictor.required),
        "model inputs, texts not seen before (preprocessor, text scores)": lambda: model_inputs(scoring, songs.frame),
        "model inputs, texts seen before (text scores remembered, score_cache.py)":
            lambda: model_inputs(scoring, songs.frame),
        "model (predict_proba)": lambda: predict_proba(bundle, features, batch_size=MODEL_BATCH_ROWS),
        "output (prediction_table, outputs.render as CSV)": lambda: render(
            prediction_table(songs.frame["track_id"], probabilities, predictor.classes), CSV),
    }
    bundle = load_bundle(model).model
    results = {}
    for name, step in steps.items():
        ctx.log(f"catalogue: in process, {name}")
        started = time.perf_counter()
        results[name] = step()
        costs[name] = time.perf_counter() - started
        songs = results.get("read and check (schema.read_songs)")
        features = results.get("model inputs, texts not seen before (preprocessor, text scores)")
        probabilities = results.get("model (predict_proba)")
    return {name: round(seconds * 1_000_000 / chunk.rows, 2) for name, seconds in costs.items()}


def catalogue_targets(results: dict) -> list[tuple[str, str, str, str]]:
    """The catalogue section's rows for the targets table: (measurement, measured, target, verdict)."""
    sizes = results["sizes"]
    peak = max(size["peak_rss_mib"]["max"] for size in sizes) / 1024
    largest = max(sizes, key=lambda size: size["peak_rss_mib"]["max"])
    at = next((size for size in sizes if size["rows"] == results["formats_at"]), sizes[-1])
    speed = at["rows_per_s"]["median"]
    rows = [(f"catalogue predict, peak memory at every size (largest at {largest['rows']:,} rows)",
             f"{peak:.2f} GiB", f"≤ {results['target_peak_gib']:g} GiB",
             "met" if peak <= results["target_peak_gib"] else "**missed**"),
            (f"catalogue predict, {at['rows']:,} rows of CSV, end to end", f"{speed:,.0f} rows/s",
             f"≥ {results['target_rows_per_s']:,} rows/s",
             "met" if speed >= results["target_rows_per_s"] else
             f"**missed** ({speed / results['target_rows_per_s']:.2f}× the target)")]
    if len(sizes) >= 2:
        small, big = sizes[-2], sizes[-1]
        growth = (big["end_to_end_s"]["median"] / small["end_to_end_s"]["median"]) / (big["rows"] / small["rows"])
        rows.append((f"catalogue predict, time growth {small['rows']:,} → {big['rows']:,} rows",
                     f"{growth:.2f}× the row growth", "≤ 1×",
                     "met" if growth <= 1 else f"met, within noise (≤ {results['growth_tolerance']:g})"
                     if growth <= results["growth_tolerance"] else "**missed**"))
    return rows


def catalogue_markdown(results: dict) -> list[str]:
    """The catalogue section of bench.md."""
    lines = [f"**Catalogue predict** (`{results['command']}`, real songs repeated, --chunk-rows "
             f"{results['chunk_rows']:,}, one process; peak memory of the process and any workers together):", "",
             "| songs | CSV | time | rows/s | peak memory |", "| --- | --- | --- | --- | --- |"]
    for size in results["sizes"]:
        stats = size["end_to_end_s"]
        spread = f" ({stats['min']:.1f}–{stats['max']:.1f})" if stats["n"] > 1 else ""
        time_text = f"{stats['median']:.1f} s{spread}"
        lines.append(f"| {size['rows']:,} | {size['input_mib']:,.0f} MiB | {time_text} | "
                     f"{size['rows_per_s']['median']:,.0f} | {size['peak_rss_mib']['max']:,.0f} MiB |")
    at = results["formats_at"]
    lines += ["", f"The same {at:,} songs in other forms (one run each):", "",
              "| input | size | time | rows/s | peak memory | predictions |", "| --- | --- | --- | --- | --- | --- |"]
    for name, row in [*results["formats"].items(), ("CSV, --workers 2", results["with_workers"])]:
        size = f"{row['input_mib']:,.0f} MiB" if "input_mib" in row else ""
        same = "identical to the CSV's" if row["same_predictions"] else "**differ**"
        lines.append(f"| {name} | {size} | {row['end_to_end_s']:.1f} s | {row['rows_per_s']:,} | "
                     f"{row['peak_rss_mib']:,} MiB | {same} |")
    steps = results.get("seconds_per_million_by_step")
    if steps:
        lines += ["", f"Where the time goes (in one process, one chunk of {results['steps_measured_on']:,} songs, "
                      "model loaded; seconds per million songs):", "", "| step | s per 1M songs |", "| --- | --- |"]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in steps.items()]
    lines += ["", "| goal | measured | goal | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in catalogue_targets(results)]
    return lines
