"""`python -m bench`: measure the pipeline on this machine and write reports/bench.json and reports/bench.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import cuda, numerics, peers, pipeline, prediction, report, scaling, serving, training, tuning
from bench.context import Context
from bench.machine import describe, load_average
from bench.measure import BenchError
from bench.project import ROOT, Dataset

SECTIONS = {
    "pipeline": pipeline.measure,
    "peers": peers.measure,
    "training": training.measure,
    "numerics": numerics.measure,
    "scaling": scaling.measure,
    "predict": prediction.measure,
    "catalogue": prediction.measure_catalogue,
    "serving": serving.measure,
    "tuning": tuning.measure,
    "cuda": cuda.measure,
}
RUNS = 3
FORMAT = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        epilog="Sections: pipeline (dvc repro, no-op repro, dvc exp run), peers (the baselines stage on the "
               "development split seeds: validation scores beside the settings before, and its time), training "
               "(the train stage's loop against a plain DataLoader), numerics (the train loop with and without the "
               "numerics pin), scaling (1x/10x/100x synthetic rows: time and peak memory per stage), predict "
               "(100,000 rows), catalogue (predict streamed over 100k, 1M and 10M songs; CSV, .csv.gz and "
               "Parquet), serving (`spotify-genre serve`: one song a request from 16 clients, 1,000 songs a "
               "request, beside predict's rows/s), tuning (`python -m experiments.tune`, 50 trials on 2 workers, "
               "once), cuda (CPU against GPU; skipped without one). --only merges its sections into the "
               "existing report.")
    parser.add_argument("--quick", action="store_true",
                        help="one run each and small sizes, for trying the harness; writes to reports/bench/ unless "
                             "--output-dir says otherwise")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), metavar="SECTION",
                        help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"runs behind each figure (default {RUNS}; 1 with --quick)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where bench.json and bench.md go (default reports/, or reports/bench/ with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects, and say where they are")
    parser.add_argument("--before", type=Path, default=None, metavar="BENCH_JSON",
                        help="an earlier bench.json (e.g. `git show COMMIT:reports/bench.json > before.json`) whose "
                             "figures bench.md shows beside the new ones, for the sections measured now")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite bench.md from the bench.json already there")
    return parser


def _load(path: Path) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) and document.get("format") == FORMAT else {}


def _write(folder: Path, document: dict) -> None:
    from spotify_genre.atomic import write_json, write_text

    write_json(folder / "bench.json", document)
    write_text(folder / "bench.md", report.markdown(document))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.quick else RUNS)
    if runs < 1:
        _parser().error("--runs must be at least 1")
    folder = args.output_dir or (ROOT / "reports" / "bench" if args.quick else ROOT / "reports")
    if args.report_only:
        document = _load(folder / "bench.json")
        if not document.get("sections"):
            print(f"error: {folder / 'bench.json'}: no benchmark results to report", file=sys.stderr)
            return 1
        _write(folder, document)
        return 0
    chosen = args.only or list(SECTIONS)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])

    before = {}
    if args.before is not None:
        before = _load(args.before).get("sections", {})
        if not before:
            print(f"error: {args.before}: no bench.json sections to compare with", file=sys.stderr)
            return 1
    previous = _load(folder / "bench.json")
    document = previous if args.only else {"sections": {}}
    document.setdefault("sections", {})
    earlier = dict(previous.get("sections", {}))
    workdir = Path(tempfile.mkdtemp(prefix="spotify-genre-bench-"))
    ctx = Context(workdir=workdir, runs=runs, quick=args.quick, dataset=Dataset.default(), keep=args.keep)
    ctx.log(f"{', '.join(chosen)}; {runs} run(s) each; data: {ctx.dataset.describe()}; working in {workdir}")
    failed = []
    try:
        for name in chosen:
            machine = describe(ROOT, with_gpu=name == "cuda")
            started = time.perf_counter()
            entry = {"measured_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "command": command, "runs": runs, "quick": args.quick, "dataset": ctx.dataset.describe(),
                     "machine": machine}
            try:
                entry["results"] = SECTIONS[name](ctx)
            except BenchError as error:
                ctx.log(f"{name} failed: {error}")
                entry["error"] = str(error).splitlines()[0]
                failed.append(name)
            except Exception as error:  # a bug in one section: report it, keep the others' figures
                traceback.print_exc()
                entry["error"] = f"{type(error).__name__}: {error}"
                failed.append(name)
            if "results" in before.get(name, {}):
                earlier_entry = before[name]
                entry["before"] = {"measured_at": earlier_entry.get("measured_at"),
                                   "commit": earlier_entry.get("machine", {}).get("commit"),
                                   "cpu": earlier_entry.get("machine", {}).get("cpu"),
                                   "results": earlier_entry["results"]}
            entry["seconds"] = round(time.perf_counter() - started, 1)
            entry["load_average_at_end"] = load_average()
            kept = earlier.get(name, {})
            if "skipped" in entry.get("results", {}) and "skipped" not in kept.get("results", {"skipped": True}):
                ctx.log(f"{name}: skipped here; keeping the figures measured on {kept['machine'].get('cpu')} "
                        f"({kept['machine'].get('gpu')}) at {kept['measured_at']}")
                document["sections"][name] = kept
            else:
                document["sections"][name] = entry
                document.update(format=FORMAT, command=command, machine=machine, updated=entry["measured_at"])
            document["sections"] = {key: document["sections"][key] for key in SECTIONS if key in document["sections"]}
            _write(folder, document)
            ctx.log(f"{name} done in {entry['seconds']:.0f} s; wrote {folder / 'bench.json'} and bench.md")
    except KeyboardInterrupt:
        ctx.log("interrupted")
        return 130
    finally:
        if args.keep:
            ctx.log(f"kept the temporary projects in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        ctx.log(f"failed: {', '.join(failed)}")
        return 1
    print((folder / "bench.md").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
