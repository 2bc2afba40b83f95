"""Songs read a chunk at a time from CSV (plain or compressed) or standard input, checked as a whole-file read would
check them; which kind of file an input is (Parquet is read by parquet_reader.py).

A CSV chunk is the header plus whole records (records.py), parsed by schema.read_songs exactly as the whole file
would be, so the songs, and every error, are the same whatever the chunk size; errors name the line of the file
(the line a record starts on, the header being line 1). Every chunk's invalid cells come back as (row, column,
value, reason, line), row counted from the file's first song.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import pandas as pd

from spotify_genre.errors import DataError
from spotify_genre.songs.features import DERIVED_FEATURES, TEXT_FIELDS
from spotify_genre.songs.records import Records, split_records
from spotify_genre.songs.schema import (INPUT_COLUMNS, RELEASE_DATE, TRACK_ID, read_as_text, read_songs,
                                        repeated_header, row_problems, unparsable_cells)

STDIO = "-"  # standard input, or as an output standard output
CSV, PARQUET = "csv", "parquet"  # the formats of songs, and of predictions (predict/sinks.py adds compressed CSV)
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
INPUT_SUFFIXES = (".csv", *(f".csv{suffix}" for suffix in COMPRESSIONS), ".parquet", ".pq")
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_PARQUET_MAGIC = b"PAR1"
_OPENERS = {"gzip": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"), "bz2": lambda raw: bz2.BZ2File(raw, "rb"),
            "xz": lambda raw: lzma.LZMAFile(raw, "rb")}
_DECOMPRESSION_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)
PROBLEM_COLUMNS = ["row", "column", "value", "reason", "line"]
UNPARSED = "a numeric column could not be parsed"  # read_songs' message when pandas cannot tokenize the CSV


def required_columns(input_features: tuple[str, ...] | list[str], song_fields: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The raw columns the model's inputs are derived from: those of its features, in schema order, then the text
    and id fields it scores (Preprocessor.song_fields)."""
    derived = any(name in DERIVED_FEATURES for name in input_features)
    numeric = tuple(name for name in INPUT_COLUMNS if name in input_features or (name == RELEASE_DATE and derived))
    return numeric + tuple(field for field in song_fields if field not in numeric)


@dataclass
class Songs:
    """One chunk of songs and its invalid cells (PROBLEM_COLUMNS, row counted from the file's first song; line is
    0 where the file has no lines, as in Parquet)."""

    frame: pd.DataFrame
    problems: pd.DataFrame
    first_row: int


def place(row: int, line: int) -> str:
    """Where a song is in its file, for messages: its line in a CSV, else its 1-based row."""
    return f"line {line}" if line else f"row {row + 1}"


# --- opening an input ----------------------------------------------------------------------------------------


def _kind(start: bytes, name: str, where: str) -> tuple[str, str | None]:
    """(CSV or PARQUET, compression or None), from the first bytes, checked against what the name promises."""
    if start.startswith(_PARQUET_MAGIC):
        return PARQUET, None
    found = next((kind for magic, kind in _MAGIC.items() if start.startswith(magic)), None)
    lowered = name.lower()
    promised = next((kind for suffix, kind in COMPRESSIONS.items() if lowered.endswith(suffix)), None)
    if promised is not None and found != promised:
        raise DataError(f"{where}: not {promised} data, though its name says so (it starts with {start[:4]!r})")
    if lowered.endswith((".parquet", ".pq")) and found is None:
        raise DataError(f"{where}: not a Parquet file (it does not start with {_PARQUET_MAGIC!r})")
    return CSV, found


class _Decompressing(io.RawIOBase):
    """A decompressed stream whose damage (corrupt or cut-short data) is one DataError naming the file."""

    def __init__(self, stream: IO[bytes], kind: str, where: str):
        super().__init__()
        self._stream, self._kind, self._where = stream, kind, where

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(size)
        except _DECOMPRESSION_ERRORS as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"{self._where}: corrupt {self._kind} data ({reason})") from None
        return data

    def close(self) -> None:
        with contextlib.suppress(*_DECOMPRESSION_ERRORS):
            self._stream.close()
        super().close()


def _decompressed(raw: IO[bytes], kind: str, where: str) -> IO[bytes]:
    if kind == "zstd":
        import pyarrow as pa

        stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")
    else:
        stream = _OPENERS[kind](raw)
    return _Decompressing(stream, kind, where)


@contextlib.contextmanager
def open_csv_stream(source: str, where: str) -> Iterator[tuple[str, IO[bytes] | None]]:
    """(CSV, the decompressed byte stream) for a CSV file or standard input, or (PARQUET, None) for a Parquet
    file; unreadable or missing files are a DataError."""
    if source == STDIO:
        if sys.stdin is None:  # closed when the command started (`<&-`)
            raise DataError(f"{where}: standard input is closed; pass a file, or pipe or redirect the songs in")
        stdin = sys.stdin.buffer
        if not hasattr(stdin, "peek"):
            stdin = io.BufferedReader(stdin)
        try:
            start = stdin.peek(8)[:8]
        except OSError as error:
            raise DataError(f"{where}: cannot be read ({error.strerror or error})") from None
        kind, compression = _kind(start, "", where)
        if kind == PARQUET:
            raise DataError(f"{where}: Parquet cannot be read from standard input (it is read from its end); "
                            "pass the file's path")
        yield CSV, (_decompressed(stdin, compression, where) if compression else stdin)
        return
    try:
        raw = open(source, "rb")
    except FileNotFoundError:
        raise DataError(f"{source}: no such file") from None
    except OSError as error:
        raise DataError(f"{source}: cannot be read ({error.strerror or error})") from None
    with raw:
        try:
            start = raw.peek(8)[:8]
        except OSError as error:
            raise DataError(f"{source}: cannot be read ({error.strerror or error})") from None
        kind, compression = _kind(start, source, where)
        if kind == PARQUET:
            yield PARQUET, None
            return
        stream = _decompressed(raw, compression, where) if compression else raw
        try:
            yield CSV, stream
        finally:
            if compression:
                stream.close()


# --- CSV -----------------------------------------------------------------------------------------------------


def csv_chunks(stream: IO[bytes], where: str, rows: int) -> tuple[bytes, Iterator[Records]]:
    """The header record, and the chunks of up to `rows` records after it."""
    records = split_records(stream, rows, where)
    header = next(records, None)
    if header is None:
        read_songs(io.BytesIO(b""), where)  # raises: empty file
    return header.data, records


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


def _relocated(message: str, where: str, header: bytes, records: Records) -> str:
    """read_songs' message about `header + records.data`, its line numbers made those of the whole file."""
    prefix, text = f"{where}: ", message[len(where) + 2:]

    def line_of_record(index: int) -> int:  # index among records.data's records
        return int(records.lines[min(max(index, 0), records.lines.size - 1)])

    def undecodable(found: re.Match) -> str:
        offset = int(found[2])
        if offset < len(header):
            return found[0]
        local = offset - len(header)
        line = int(records.lines[0]) + records.data.count(b"\n", 0, local)
        return f"line {line}: not UTF-8 text (undecodable byte at offset {records.offset + local})"

    row_lines = records.row_lines()
    text = re.sub(r"^line (\d+): not UTF-8 text \(undecodable byte at offset (\d+)\)", undecodable, text)
    text = re.sub(r"^line (\d+) repeats the header",
                  lambda found: f"line {int(row_lines[min(int(found[1]) - 2, row_lines.size - 1)])} repeats the "
                                "header", text)
    text = re.sub(r"EOF inside string starting at row (\d+)",
                  lambda found: f"EOF inside a quoted field starting at line {line_of_record(int(found[1]) - 1)}",
                  text)
    return prefix + text


def cell_problems(songs: pd.DataFrame, required: tuple[str, ...], unparsable: pd.DataFrame | None) -> pd.DataFrame:
    """Every invalid cell of the columns checked, as (row, column, value, reason), rows from 0; `unparsable` are
    the cells invalid_cells blanked."""
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
    return problems[["row", "column", "value", "reason"]]


def read_csv_bytes(data: bytes, where: str, required: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A whole CSV's songs and every invalid cell of the columns checked, as (row, column, value, reason), rows
    from 0: the one-chunk read."""
    parsed = (*required, TRACK_ID, *TEXT_FIELDS)  # the text fields, for a model with a text encoder
    try:
        songs, unparsable = read_songs(io.BytesIO(data), where, required=required, allow_extra=True,
                                       parsed=parsed), None
    except DataError:
        cleaned = invalid_cells(data)
        if cleaned is None:
            raise
        data, unparsable = cleaned
        songs = read_songs(io.BytesIO(data), where, required=required, allow_extra=True, parsed=parsed)
    return songs, cell_problems(songs, required, unparsable)


def _tokenizer_error(data: bytes, where: str) -> str | None:
    """Why pandas cannot cut `data` into fields (an unclosed quote), where read_songs says only UNPARSED."""
    try:
        pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        return f"{where}: malformed CSV ({str(error).strip().splitlines()[-1]})"
    except ValueError:
        pass
    return None


def parse_csv(header: bytes, records: Records, where: str, required: tuple[str, ...]) -> Songs:
    """The songs of one chunk of records, read as if the header and these records were the whole file."""
    data = header + records.data
    try:
        frame, problems = read_csv_bytes(data, where, required)
    except DataError as error:
        message = str(error)
        if message == f"{where}: {UNPARSED}":
            message = _tokenizer_error(data, where) or message
        raise DataError(_relocated(message, where, header, records)) from None
    lines = records.row_lines()
    if lines.size != len(frame):  # pandas cut the records otherwise than records.py: name rows, not lines
        lines = np.zeros(len(frame), dtype=np.int64)
    rows = problems["row"].to_numpy()
    problems = problems.assign(row=rows + records.first_row, line=lines[rows])
    return Songs(frame, problems[PROBLEM_COLUMNS], records.first_row)


def header_only(header: bytes, records: Records | None, where: str, required: tuple[str, ...]) -> DataError:
    """The error a whole-file read gives a CSV with a header and no songs (empty, or a bad header)."""
    try:
        read_songs(io.BytesIO(header + (records.data if records else b"")), where, required=required,
                   allow_extra=True)
    except DataError as error:
        return error
    return DataError(f"{where}: header only, no song rows")


def songs_suffix(path: str | Path) -> str | None:
    """The songs format suffix a file name ends with (`.csv.gz`, `.parquet`), or None."""
    name = Path(path).name.lower()
    return next((suffix for suffix in sorted(INPUT_SUFFIXES, key=len, reverse=True) if name.endswith(suffix)), None)
