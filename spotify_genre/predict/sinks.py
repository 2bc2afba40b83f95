"""Where predictions go, a piece at a time: CSV (plain or gzip) or Parquet, chosen by the output's extension, to a
file written atomically (a temporary file renamed at the end) or to standard output.

The bytes do not depend on how the rows were cut into pieces: a CSV is predictions_csv's text with the header once,
gzip gets no time stamp or name, and Parquet row groups are always ROW_GROUP_ROWS rows (the last one fewer).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
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
    """CSV pieces into a byte stream, the header once; `files` are closed by finish (the gzip stream, then the
    file under it), or quietly by abandon."""

    def __init__(self, stream: IO[bytes], files: tuple = ()):
        self._stream, self._started, self._files = stream, False, files

    def write(self, piece: bytes) -> None:
        if self._started:
            piece = piece[piece.index(b"\n") + 1:]
        self._started = True
        self._stream.write(piece)

    def finish(self) -> None:
        """Flush and close: the last bytes, the gzip trailer."""
        for file in self._files:
            file.close()

    def abandon(self) -> None:
        for file in self._files:
            with contextlib.suppress(Exception):
                file.close()


class _Counted:
    """A byte stream that knows how much was written to it: a Parquet writer asks, and a pipe cannot say."""

    def __init__(self, file: IO[bytes]):
        self._file, self._position, self.closed = file, 0, False

    def write(self, data) -> int:
        self._file.write(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self.closed = True


class ParquetSink:
    """Row groups of ROW_GROUP_ROWS rows, whatever the pieces, with the first piece's column types; into a file by
    its path, or into an open stream (a FIFO, a device), which finish and abandon close."""

    def __init__(self, path: Path | None, stream: IO[bytes] | None = None):
        self._path, self._stream, self._writer, self._pending, self._rows = path, stream, None, [], 0

    def write(self, piece) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            schema = pa.schema([field.with_type(pa.string()) if pa.types.is_large_string(field.type) else field
                                for field in piece.schema])
            where = self._path if self._stream is None else _Counted(self._stream)
            self._writer = pq.ParquetWriter(where, schema, compression="zstd")
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
        if self._writer is not None:
            if self._rows:
                self._flush(final=True)
            self._writer.close()
            self._writer = None
        if self._stream is not None:
            self._stream.close()

    def abandon(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()


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


class _Named:
    """A sink whose failures to write (a full disk, a failing device, a reader gone from a FIFO) are one
    PipelineError naming the output."""

    def __init__(self, sink: CsvSink | ParquetSink, where: str):
        self._sink, self._where = sink, where

    def write(self, piece) -> None:
        try:
            self._sink.write(piece)
        except OSError as error:
            raise _cannot_write(self._where, error) from None

    def finish(self) -> None:
        try:
            self._sink.finish()
        except OSError as error:
            raise _cannot_write(self._where, error) from None

    def abandon(self) -> None:
        self._sink.abandon()


def _cannot_write(path: str, error: OSError) -> PipelineError:
    return PipelineError(f"{path}: cannot write the predictions ({error.strerror or error})")


def _sink(fmt: str, path: Path | None = None, stream: IO[bytes] | None = None) -> CsvSink | ParquetSink:
    """The sink of format `fmt` into a new file at `path`, or into an open `stream`."""
    if fmt == PARQUET:
        return ParquetSink(path, stream)
    file = stream if stream is not None else open(path, "wb")
    if fmt == CSV_GZ:
        packed = gzip.GzipFile(filename="", mode="wb", fileobj=file, compresslevel=GZIP_LEVEL, mtime=0)
        return CsvSink(packed, (packed, file))
    return CsvSink(file, (file,))


SPECIAL = {stat.S_IFSOCK: "a socket", stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _fd_status(fd: int) -> os.stat_result | None:
    try:
        return os.fstat(fd)
    except OSError:
        return None


def _check_not_the_input(path: str, status: os.stat_result, source: str | None) -> None:
    """Refuse an output that is the input file, however its path is spelled (another spelling, a hard link, a
    symbolic link, or the file standard input reads)."""
    if source is None or not stat.S_ISREG(status.st_mode):
        return
    if source == STDIO:
        found = _fd_status(0) if sys.stdin is not None else None
    else:
        try:
            found = os.stat(source)
        except OSError:
            found = None
    if found is not None and _identity(found) == _identity(status):
        shown = "standard input" if source == STDIO else source
        raise ParamsError(f"-o {path}: is the input ({shown}, the same file): its songs would be replaced by their "
                          "predictions; pass another -o")


@contextlib.contextmanager
def _written(sink: CsvSink | ParquetSink, where: str) -> Iterator[_Named]:
    named = _Named(sink, where)
    try:
        yield named
        named.finish()
    except BaseException:
        named.abandon()
        raise


@contextlib.contextmanager
def open_sink(path: str, fmt: str, source: str | None = None) -> Iterator[CsvSink | ParquetSink]:
    """A sink for the predictions of `source`; what a file is at `path` decides how they get there.

    - standard output (`-`, or a path naming the file standard output is: /dev/stdout, /proc/self/fd/1, a link to
      them): written to standard output;
    - a FIFO or a character device (/dev/null, a terminal): streamed into it, opened as it is;
    - a regular file, or nothing yet: written to a temporary file beside it and renamed onto it at the end, so a
      file appears under `path` only if the block succeeds; a symbolic link is followed, the file it names
      replaced and the link kept;
    - the input itself, a folder, a socket or a block device: refused.
    """
    if path == STDIO:
        if sys.stdout is None:
            raise PipelineError("standard output is closed: nothing can be written to it; pass -o FILE")
        yield _Named(_StdoutSink(), "standard output")
        return
    try:
        status = os.stat(path)
    except FileNotFoundError:
        status = None
    except OSError as error:
        raise _cannot_write(path, error) from None
    if status is not None:
        _check_not_the_input(path, status, source)
        kind = SPECIAL.get(stat.S_IFMT(status.st_mode))
        if kind == "a folder":
            raise _cannot_write(path, IsADirectoryError(21, "Is a directory"))
        if kind is not None:
            raise PipelineError(f"-o {path}: is {kind}; expected a file, a FIFO or a character device")
        stdout = _fd_status(1) if sys.stdout is not None else None
        if stdout is not None and _identity(stdout) == _identity(status):
            if fmt == CSV:
                yield _Named(_StdoutSink(), path)
                return
            with _written(_sink(fmt, stream=open(os.dup(1), "wb")), path) as sink:
                yield sink
            return
        if not stat.S_ISREG(status.st_mode):  # a FIFO or a character device: streamed into, never replaced
            try:
                stream = open(path, "wb")
            except OSError as error:
                raise _cannot_write(path, error) from None
            with _written(_sink(fmt, stream=stream), path) as sink:
                yield sink
            return
    target = os.path.realpath(path) if os.path.islink(path) else path
    writing = False  # while the caller's block runs, its own errors (reading the input) pass through as they are
    try:
        with atomic_path(target) as tmp, _written(_sink(fmt, path=tmp), path) as named:
            writing = True
            yield named
            writing = False
    except OSError as error:
        if writing:
            raise
        raise _cannot_write(path, error) from None
