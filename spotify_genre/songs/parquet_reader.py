"""Songs read from a Parquet file a record batch at a time, as read_songs would give the same songs from a CSV.

Its columns must already have the right types: numbers (any integer or floating-point type) for numeric columns,
text for text ones (`track_id` may also be an integer, the release date a Parquet date). A null, or an empty text,
is a missing value, as an empty CSV cell is. Invalid cells are found by schema.row_problems, rows numbered from the
file's first song.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from spotify_genre.errors import DataError
from spotify_genre.songs.csv_reader import PROBLEM_COLUMNS, Songs, cell_problems
from spotify_genre.songs.schema import BY_NAME, TRACK_ID, check_columns


def _arrow_kind(kind) -> str:
    """'number', 'text', 'date' or the type's own name."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "number"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "text"
    if pa.types.is_date(kind):
        return "date"
    if pa.types.is_null(kind):
        return "null"
    return str(kind)


def _accepted(name: str) -> tuple[str, ...]:
    column = BY_NAME[name]
    if column.numeric:
        return ("number", "null")
    if column.kind == "date":
        return ("text", "date", "null")
    return ("text", "number", "null") if name == TRACK_ID else ("text", "null")


def open_parquet(path: str, where: str, required: tuple[str, ...]):
    """The Parquet file and the columns to read, its schema checked: each required column present once, of a type
    that holds its values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{where}: not a readable Parquet file ({str(error).strip().splitlines()[0]})") from None
    schema = parquet.schema_arrow
    names = list(schema.names)
    check_columns(names, required, where, in_header=False)
    columns = [*required, *([TRACK_ID] if TRACK_ID in names and TRACK_ID not in required else [])]
    for name in columns:
        kind = _arrow_kind(schema.field(name).type)
        if kind not in _accepted(name):
            expected = {"number": "numbers (integer or floating point)", "text": "text", "date": "dates"}
            wanted = " or ".join(expected[k] for k in _accepted(name) if k in expected)
            raise DataError(f"{where}: column {name!r} is of type {schema.field(name).type}; expected {wanted}")
    if parquet.metadata.num_rows == 0:
        raise DataError(f"{where}: no song rows")
    return parquet, columns


def parquet_batches(parquet, columns: list[str], where: str, rows: int) -> Iterator[tuple[object, int]]:
    """(record batch, songs before it), a row group at a time, each batch of up to `rows` songs."""
    import pyarrow as pa

    first = 0
    batches = parquet.iter_batches(batch_size=rows, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{where}: row {first + 1} on cannot be read "
                            f"({str(error).strip().splitlines()[0]})") from None
        if batch is None:
            return
        yield batch, first
        first += batch.num_rows


def _arrow_column(values, name: str) -> np.ndarray | pd.Series:
    """A Parquet column as read_songs gives a CSV column: float64 with NaN, or text with NaN for empty."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if BY_NAME[name].numeric:  # as a CSV's digits are read: to the nearest double (2**63 - 1 is 2.0**63), range-checked
        return values.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    if pa.types.is_date(values.type):
        values = pc.strftime(values.cast(pa.date32()), format="%Y-%m-%d")
    elif not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    if len(values) and not pa.types.is_null(values.type):
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)
    return pd.Series(values.to_pandas(), dtype="object").astype("str")


def parse_parquet(batch, first_row: int, required: tuple[str, ...], where: str = "<parquet>") -> Songs:
    """The songs of one record batch, as read_songs would give the same songs from a CSV."""
    import pyarrow as pa

    columns = {}
    for name in batch.schema.names:
        try:
            columns[name] = _arrow_column(batch.column(name), name)
        except (pa.ArrowException, OverflowError, ValueError) as error:  # a date64 far beyond year 9999, ...
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"{where}: column {name!r}, rows {first_row + 1} to {first_row + batch.num_rows}: "
                            f"a value out of range for {batch.schema.field(name).type} ({reason[:160]})"
                            ) from None
    frame = pd.DataFrame(columns)
    problems = cell_problems(frame, required, None)
    problems = problems.assign(row=problems["row"].to_numpy() + first_row, line=0)
    return Songs(frame, problems[PROBLEM_COLUMNS], first_row)
