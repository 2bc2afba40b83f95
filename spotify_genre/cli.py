"""The `spotify-genre` command: `predict` gives genres for new songs, from a model bundle and its preprocessor."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from spotify_genre.errors import BundleError, DataError, ParamsError, PipelineError, exits_cleanly
from spotify_genre.features import DERIVED_FEATURES
from spotify_genre.atomic import write_text
from spotify_genre.predictions import prediction_table, predictions_csv
from spotify_genre.preprocessor import load_preprocessor, model_inputs
from spotify_genre.schema import (INPUT_COLUMNS, RELEASE_DATE, TRACK_ID, read_as_text, read_songs, repeated_header,
                                  row_problems, unparsable_cells)
from spotify_genre.validation import read_bytes

STDIO = "-"
DEFAULT_MODEL = "models/model.pt"
DEFAULT_PREPROCESSOR = "models/preprocessor.json"
ROW = "row"

EXIT_CODES = """exit codes:
  0  predictions written
  1  the output could not be written
  2  wrong usage (unknown option, --top-k out of range)
  3  bad input data (unreadable file, missing column, invalid value)
  5  bad model bundle or preprocessor (missing, unsafe, or for other features)
  6  the preprocessor is not the one the model was trained with (its sha256 differs from the bundle's)
  130  interrupted"""


def required_columns(input_features: tuple[str, ...] | list[str], text_fields: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The raw columns the model's inputs are derived from: those of its features, in schema order, then the text
    fields it scores."""
    derived = any(name in DERIVED_FEATURES for name in input_features)
    numeric = tuple(name for name in INPUT_COLUMNS if name in input_features or (name == RELEASE_DATE and derived))
    return numeric + tuple(field for field in text_fields if field not in numeric)


def invalid_cells(data: bytes) -> tuple[bytes, pd.DataFrame] | None:
    """Blank every numeric cell that is not a number; return the CSV so cleaned and where those cells were.

    read_songs stops at the first such cell, which suits the pipeline's own data; a user's file gets every invalid
    row reported, or left out with --skip-invalid. None when there is no such cell, or a row repeats the header:
    the error read_songs raised is then the one to show.
    """
    raw = read_as_text(data)
    if raw is None or repeated_header(raw) is not None:
        return None
    found = unparsable_cells(raw)
    if found.empty:
        return None
    for name, rows in found.groupby("column")["row"]:
        raw.loc[rows.to_numpy(), name] = ""
    header = data[: data.find(b"\n") + 1] if b"\n" in data else data + b"\n"
    return header + raw.to_csv(index=False, header=False).encode("utf-8"), found


def read_input(data: bytes, where: str, required: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The songs and every invalid cell of the columns checked, as (row, column, value, reason), rows from 0."""
    try:
        songs, unparsable = read_songs(io.BytesIO(data), where, required=required, allow_extra=True), None
    except DataError:
        cleaned = invalid_cells(data)
        if cleaned is None:
            raise
        data, unparsable = cleaned
        songs = read_songs(io.BytesIO(data), where, required=required, allow_extra=True)
    checked = (*required, TRACK_ID) if TRACK_ID in songs.columns else required
    problems = row_problems(songs, checked)
    values = np.empty(len(problems), dtype=object)
    for name, at in problems.groupby("column").indices.items():
        values[at] = songs[name].to_numpy(dtype=object)[problems["row"].to_numpy()[at]]
    problems["value"] = values
    if unparsable is not None:
        blanked = pd.MultiIndex.from_frame(unparsable[["row", "column"]])
        problems = problems[~pd.MultiIndex.from_frame(problems[["row", "column"]]).isin(blanked)]
        problems = pd.concat([problems, unparsable[unparsable["column"].isin(checked)]], ignore_index=True)
        problems = problems.sort_values(["row", "column"], kind="stable", ignore_index=True)
    return songs, problems[["row", "column", "value", "reason"]]


def describe(row: int, column: str, value, reason: str) -> str:
    """One invalid cell, with the line number of its row in the input file (the header is line 1)."""
    if isinstance(value, (float, np.floating)):
        value = int(value) if float(value).is_integer() else float(value)
    shown = "" if pd.isna(value) else f" {value!r}:"
    return f"line {row + 2}, column {column!r}:{shown} {reason}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotify-genre", description="Genre classification of Spotify songs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict", help="predict the genre of each song in a CSV",
        description="Predict the genre of each song in a CSV with the raw dataset's columns (extra columns are "
                    "ignored; label and playlist columns are not needed).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("input", metavar="INPUT.csv", help="songs to classify; '-' reads standard input")
    predict.add_argument("-o", "--output", metavar="OUTPUT.csv", default=STDIO,
                         help="where to write the predictions; '-' (the default) is standard output")
    predict.add_argument("--model", metavar="PATH", default=DEFAULT_MODEL,
                         help=f"model bundle (default {DEFAULT_MODEL})")
    predict.add_argument("--preprocessor", metavar="PATH", default=DEFAULT_PREPROCESSOR,
                         help=f"fitted preprocessor (default {DEFAULT_PREPROCESSOR})")
    predict.add_argument("--top-k", metavar="K", type=_positive, default=0,
                         help="also write the K most likely genres and their probabilities")
    predict.add_argument("--skip-invalid", action="store_true",
                         help="leave out rows with missing or invalid values (each listed on stderr) instead of "
                              "stopping at the first")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _read_bytes(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == STDIO else read_bytes(path, DataError, "no such file")


def _write(path: str, text: str) -> None:
    if path == STDIO:
        try:
            sys.stdout.buffer.write(text.encode("utf-8"))
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped early (`| head`): not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    try:
        write_text(path, text)
    except OSError as error:
        raise PipelineError(f"{path}: cannot write the predictions ({error.strerror or error})") from None


def valid_songs(songs: pd.DataFrame, problems: pd.DataFrame, where: str,
                skip_invalid: bool) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """The songs to predict, their ids (track_id, else the 1-based row number) and one line per cell left out.

    Without skip_invalid, any invalid row is a DataError naming the first one and how many there are.
    """
    invalid = problems["row"].unique()
    if invalid.size and not skip_invalid:
        count = f" ({invalid.size} invalid rows in all)" if invalid.size > 1 else ""
        raise DataError(f"{where}: {describe(*problems.iloc[0])}{count}; --skip-invalid leaves invalid rows out")
    skipped = [f"{where}: skipped {describe(*cell)}" for cell in problems.itertuples(index=False)]
    if invalid.size == len(songs):
        raise DataError(f"{where}: all {len(songs)} rows are invalid, nothing to predict "
                        f"(first: {describe(*problems.iloc[0])})")
    keep = np.setdiff1d(np.arange(len(songs)), invalid)
    kept = songs.iloc[keep].reset_index(drop=True)
    ids = kept[TRACK_ID] if TRACK_ID in kept.columns else pd.Series(keep + 1, name=ROW)
    if invalid.size:
        skipped.append(f"{where}: {invalid.size} invalid rows left out, {len(kept)} predicted")
    return kept, ids, skipped


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("predict", "-h", "--help"):
        argv.insert(0, "predict")
    args = _parser().parse_args(argv)

    preprocessor = load_preprocessor(args.preprocessor)
    classes = tuple(preprocessor.classes)
    if args.top_k > len(classes):
        raise ParamsError(f"--top-k {args.top_k}: the model knows {len(classes)} genres; expected 1..{len(classes)}")
    if not Path(args.model).is_file():
        raise BundleError(f"{args.model}: no model bundle there (train one with `dvc repro`, or pass --model)")

    where = "<stdin>" if args.input == STDIO else args.input
    required = required_columns(preprocessor.input_features, preprocessor.text_fields)
    songs, problems = read_input(_read_bytes(args.input), where, required)
    songs, ids, skipped = valid_songs(songs, problems, where, args.skip_invalid)
    sys.stderr.write("".join(f"{line}\n" for line in skipped))
    features = model_inputs(preprocessor, songs)

    from spotify_genre.bundle import load_bundle  # torch loads only once the input is known to be good
    from spotify_genre.model import predict_proba

    bundle = load_bundle(args.model, feature_names=preprocessor.output_features, class_names=classes,
                         preprocessor_sha256=preprocessor.sha256, preprocessor_path=args.preprocessor)
    table = prediction_table(ids, predict_proba(bundle.model, features), classes, top_k=args.top_k)
    _write(args.output, predictions_csv(table))
    return 0


def run() -> NoReturn:
    """The `spotify-genre` command: main(), then an exit that skips Python's teardown of the loaded modules.

    Every output is written, closed and renamed before main() returns, so the teardown (0.6 s of a 2 s predict,
    most of it torch's) would do nothing a finished run needs."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader stopped early (`| head`)
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
