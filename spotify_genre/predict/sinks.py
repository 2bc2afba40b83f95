"""Where predictions go, a piece at a time: CSV (plain or gzip) or Parquet, chosen by the output's extension, to a
file written atomically (a temporary file renamed at the end) or to standard output.

The bytes do not depend on how the rows were cut into pieces: a CSV is predictions_csv's text with the header once,
gzip gets no time stamp or name, and Parquet row groups are always ROW_GROUP_ROWS rows (the last one fewer).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
from pathlib import Path
from typing import IO, Iterator

import pandas as pd

from spotify_genre.atomic import atomic_path
from spotify_genre.errors import ParamsError, PipelineError
from spotify_genre.predict.table import fast_predictions_csv, predictions_csv
from spotify_genre.songs.csv_reader import CSV, PARQUET, STDIO

CSV_GZ = "csv.gz"
FORMATS = (CSV, CSV_GZ, PARQUET)
SUFFIXES = {CSV: ".csv", CSV_GZ: ".csv.gz", PARQUET: ".parquet"}
ROW_GROUP_ROWS = 1 << 17
GZIP_LEVEL = 6


class ReaderGone(Exception):
    """Standard output's reader stopped early (`| head`): not an error, but nothing more to write."""


def output_format(path: str) -> str:
    """The format of an output path: by its extension; standard output and a name without one are CSV."""
    if path == STDIO:
        return CSV
    name = Path(path).name.lower()
    if name.endswith((".csv.gz", ".gz")):
        return CSV_GZ
    if name.endswith((".parquet", ".pq")):
        return PARQUET
    suffix = Path(name).suffix
    if suffix in ("", ".csv"):
        return CSV
    raise ParamsError(f"-o {path}: unknown output format {suffix!r}; expected a name ending in .csv, .csv.gz or "
                      ".parquet (or - for standard output)")


def render(table: pd.DataFrame, fmt: str):
    """One piece of the predictions table ready for the sink: the CSV's bytes, or an Arrow table for Parquet."""
    if fmt == PARQUET:
        import pyarrow as pa

        return pa.Table.from_pandas(table, preserve_index=False).replace_schema_metadata(None)
    return fast_predictions_csv(table) or predictions_csv(table).encode("utf-8")


class CsvSink:
    def __init__(self, stream: IO[bytes]):
        self._stream, self._started = stream, False

    def write(self, piece: bytes) -> None:
        if self._started:
            piece = piece[piece.index(b"\n") + 1:]
        self._started = True
        self._stream.write(piece)

    def finish(self) -> None:
        """Nothing is held back: closing the file (and the gzip stream) is the caller's."""


class ParquetSink:
    """Row groups of ROW_GROUP_ROWS rows, whatever the pieces, with the first piece's column types."""

    def __init__(self, path: Path):
        self._path, self._writer, self._pending, self._rows = path, None, [], 0

    def write(self, piece) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            schema = pa.schema([field.with_type(pa.string()) if pa.types.is_large_string(field.type) else field
                                for field in piece.schema])
            self._writer = pq.ParquetWriter(self._path, schema, compression="zstd")
        self._pending.append(piece.cast(self._writer.schema))
        self._rows += piece.num_rows
        if self._rows >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self._pending)
        whole = table.num_rows if final else table.num_rows - table.num_rows % ROW_GROUP_ROWS
        for start in range(0, whole, ROW_GROUP_ROWS):
            group = table.slice(start, min(ROW_GROUP_ROWS, whole - start)).combine_chunks()
            self._writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
        rest = table.slice(whole)
        self._pending, self._rows = ([rest] if rest.num_rows else []), rest.num_rows

    def finish(self) -> None:
        """Write what is left and the footer."""
        if self._writer is None:
            return
        if self._rows:
            self._flush(final=True)
        self._writer.close()
        self._writer = None

    def abandon(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None


class _StdoutSink(CsvSink):
    def __init__(self):
        super().__init__(sys.stdout.buffer)

    def write(self, piece: bytes) -> None:
        try:
            super().write(piece)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise ReaderGone from None


def _cannot_write(path: str, error: OSError) -> PipelineError:
    return PipelineError(f"{path}: cannot write the predictions ({error.strerror or error})")


def _file_sink(tmp: Path, fmt: str, stack: contextlib.ExitStack) -> CsvSink | ParquetSink:
    if fmt == PARQUET:
        sink = ParquetSink(tmp)
        stack.callback(sink.abandon)
        return sink
    file = stack.enter_context(open(tmp, "wb"))
    if fmt == CSV_GZ:
        file = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=file, compresslevel=GZIP_LEVEL,
                                                 mtime=0))
    return CsvSink(file)


@contextlib.contextmanager
def open_sink(path: str, fmt: str) -> Iterator[CsvSink | ParquetSink]:
    """A sink for the predictions; a file appears under `path` only if the block succeeds."""
    if path == STDIO:
        yield _StdoutSink()
        return
    if Path(path).is_dir():
        raise _cannot_write(path, IsADirectoryError(21, "Is a directory"))
    with contextlib.ExitStack() as stack:
        try:
            sink = _file_sink(stack.enter_context(atomic_path(path)), fmt, stack)
        except OSError as error:
            raise _cannot_write(path, error) from None
        yield sink
        try:
            sink.finish()
            stack.close()  # the last rows, the gzip trailer, the Parquet footer; then the rename
        except OSError as error:
            raise _cannot_write(path, error) from None
