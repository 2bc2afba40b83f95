"""The `spotify-genre` command: `predict` gives genres for new songs, from a model bundle and its preprocessor;
`serve` answers the same over HTTP (spotify_genre/predict/serve.py, with the serve extra).

Tuning trains on a clone's pipeline, so it is a command of the clone (`python -m experiments.tune`, `make tune`);
`spotify-genre tune` only says so."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

import pandas as pd

from spotify_genre.errors import BundleError, ParamsError, exits_cleanly, quoted
from spotify_genre.predict.predictor import DEFAULT_CHUNK_ROWS, Pool, Predictor, Settings, predict_stream
from spotify_genre.predict.shards import claim, find_shards, is_catalogue, pending
from spotify_genre.predict.sinks import FORMATS, ReaderGone, output_format
from spotify_genre.songs.csv_reader import STDIO, read_csv_bytes, required_columns
from spotify_genre.validation import whole_number
from spotify_genre.workers import MAX_WORKERS

DEFAULT_MODEL = "models/model.pt"
DEFAULT_PREPROCESSOR = "models/preprocessor.json"
__all__ = ["main", "read_input", "required_columns", "run"]

EXIT_CODES = """exit codes:
  0  predictions written
  1  the output could not be written
  2  wrong usage (unknown option, --top-k out of range, an output extension of no known format, an output that
     is the input)
  3  bad input data (unreadable file or closed standard input, missing column, invalid value, corrupt compressed
     data, no shards)
  5  bad model bundle or preprocessor (missing, unsafe, or for other features)
  6  the preprocessor is not the one the model was trained with (its sha256 differs from the bundle's)
  130  interrupted (Ctrl-C, SIGINT); no output was left half-written
  143  terminated (SIGTERM); no output was left half-written"""


def read_input(data: bytes, where: str, required: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A whole CSV's songs and every invalid cell of the columns checked, as (row, column, value, reason), rows
    from 0."""
    return read_csv_bytes(data, where, required)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotify-genre", description="Genre classification of Spotify songs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict", help="predict the genre of each song in a CSV or Parquet file, or a folder of them",
        description="Predict the genre of each song in a CSV (plain, .gz, .bz2, .xz or .zst) or Parquet file with "
                    "the raw dataset's columns (extra columns are ignored; label and playlist columns are not "
                    "needed), or in every file of a folder or glob of shards. Input and output are streamed a chunk "
                    "at a time.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("input", metavar="INPUT",
                         help="songs to classify: a file, '-' for standard input, or a folder or glob of shards")
    predict.add_argument("-o", "--output", metavar="OUTPUT", default=STDIO,
                         help="where to write the predictions: a .csv, .csv.gz or .parquet file, '-' (the default) "
                              "for standard output, or for shards the folder of output shards")
    predict.add_argument("--model", metavar="PATH", default=DEFAULT_MODEL,
                         help=f"model bundle (default {DEFAULT_MODEL})")
    predict.add_argument("--preprocessor", metavar="PATH", default=DEFAULT_PREPROCESSOR,
                         help=f"fitted preprocessor (default {DEFAULT_PREPROCESSOR})")
    predict.add_argument("--top-k", metavar="K", type=_positive, default=0,
                         help="also write the K most likely genres and their probabilities")
    predict.add_argument("--novelty", action="store_true",
                         help="also write, last, how new each song is to the model: known_album (a training song "
                              "is on its album), new_album (its artist has training songs) or new_artist; each "
                              "has its own expected accuracy (reports/model_card.md). Needs the track_album_id and "
                              "track_artist columns")
    predict.add_argument("--skip-invalid", action="store_true",
                         help="leave out rows with missing or invalid values (each listed on stderr) instead of "
                              "stopping at the first")
    predict.add_argument("--chunk-rows", metavar="N", type=whole_number(1, MAX_CHUNK_ROWS), default=DEFAULT_CHUNK_ROWS,
                         help=f"songs read, checked and predicted at a time (default {DEFAULT_CHUNK_ROWS:,}, at most "
                              f"{MAX_CHUNK_ROWS:,}); the output is the same whatever N")
    predict.add_argument("--workers", metavar="N", type=whole_number(1, MAX_WORKERS), default=1,
                         help="worker processes for an input of more than one chunk (default 1: this process, "
                              "which runs the model on a second thread and so uses two cores); each holds its own "
                              "model and chunks, about 0.5 GB")
    predict.add_argument("--output-format", choices=FORMATS, default=None,
                         help="for shards: the output shards' format (default: each input's own, compressed CSV "
                              "as .csv.gz)")
    predict.add_argument("--dask", metavar="ADDRESS", default=None,
                         help="for shards: predict each shard as a task on this Dask scheduler (tcp://host:port), "
                              "or on local[:N] worker processes on 127.0.0.1; needs the dask extra")
    commands.add_parser("serve", add_help=False,
                        help="serve the model over HTTP (`spotify-genre serve --help`, docs/shipping.md); needs "
                             "the serve extra")
    commands.add_parser("tune", add_help=False, help="where to find the Optuna study over the MLP (a clone's "
                                                     "`python -m experiments.tune`)")
    return parser


TUNE_ELSEWHERE = ("spotify-genre tune: tuning trains on a clone's pipeline, so it runs there: `python -m "
                  "experiments.tune` (or `make tune`) from the root of a clone, with the tune extra (docs/tuning.md)")


def _serve(argv: list[str]) -> int:
    """`spotify-genre serve` (spotify_genre/predict/serve.py), whose web framework comes with the serve extra only."""
    try:
        from spotify_genre.predict.serve import main as serve
    except ImportError as error:
        raise ParamsError(f"spotify-genre serve needs the serve extra: pip install -e '.[serve]' from a clone "
                          f"({error})") from None
    return serve(argv)


MAX_CHUNK_ROWS = 1 << 20  # a chunk's songs are held several times over in memory: 1 GB and more at this size
_positive = whole_number(1)


def _log(line: str) -> None:
    sys.stderr.write(f"{line}\n")


def _predict_shards(args, settings: Settings, predictor: Predictor, pool: Pool | None) -> None:
    if args.output == STDIO:
        raise ParamsError(f"{args.input}: a folder or glob of shards needs -o, the folder the predictions go to")
    shards = find_shards(args.input, args.output, args.output_format)
    claim(args.output, args.model, predictor.pre.sha256, args.top_k, args.novelty)
    todo = pending(shards)
    if len(todo) < len(shards):
        _log(f"{args.output}: {len(shards) - len(todo)} of {len(shards)} shards already predicted, skipped")
    if args.dask is not None:
        from spotify_genre.predict.distributed import predict_on_dask

        predict_on_dask(args.dask, todo, settings, _log)
        return
    for shard in todo:
        outcome = predict_stream(shard.source, shard.target, shard.fmt, predictor, _log, pool)
        _log(f"{shard.source}: {outcome.predicted} songs predicted into {shard.target}")


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tune":
        raise ParamsError(TUNE_ELSEWHERE)
    if argv and argv[0] == "serve":
        return _serve(argv[1:])
    if not argv or argv[0] not in ("predict", "-h", "--help"):
        argv.insert(0, "predict")
    args = _parser().parse_args(argv)
    catalogue = is_catalogue(args.input)
    if not catalogue:
        fmt = output_format(args.output)
        for option, given in (("--output-format", args.output_format), ("--dask", args.dask)):
            if given is not None:
                raise ParamsError(f"{option} is for a folder or glob of shards; for one file the extension of -o "
                                  "says the format")

    settings = Settings(args.model, args.preprocessor, args.top_k, args.skip_invalid, args.chunk_rows, args.novelty)
    predictor = Predictor(settings)
    if args.top_k > len(predictor.classes):
        raise ParamsError(f"--top-k {args.top_k}: the model knows {len(predictor.classes)} genres; "
                          f"expected 1..{len(predictor.classes)}")
    if not Path(args.model).is_file():
        raise BundleError(f"{args.model}: no model bundle there (train one with `dvc repro`, or pass --model)")

    pool = Pool(settings, args.workers) if args.workers > 1 and args.dask is None else None
    finished = False
    try:
        if catalogue:
            _predict_shards(args, settings, predictor, pool)
        else:
            predict_stream(args.input, args.output, fmt, predictor, _log, pool)
        finished = True
    except ReaderGone:  # the reader stopped early (`| head`): not an error of ours
        finished = True
    finally:
        if pool is not None:
            pool.close(wait=finished)
    return 0


def _keep_freed_memory() -> None:
    """Let glibc's malloc keep up to 256 MB of freed memory for reuse: by default it hands each chunk's arrays (a
    few MB each) back to the system and maps them anew for the next chunk, a third of a catalogue's page faults
    and a tenth of its time. Peak memory is unchanged. Nothing to do on another C library."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def run() -> NoReturn:
    """The `spotify-genre` command: main(), then an exit that skips Python's teardown of the loaded modules.

    Every output is written, closed and renamed before main() returns, so the teardown (0.6 s of a 2 s predict,
    most of it torch's) would do nothing a finished run needs."""
    _keep_freed_memory()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: closed when the command started
                stream.flush()
        except OSError:  # the reader stopped early (`| head`); a full disk was said by main()
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
