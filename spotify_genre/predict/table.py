"""The predictions table, shared by the evaluate stage and the predict command so the two agree to the byte, and
its CSV bytes: predictions_csv, through pandas' cell-by-cell writer, or fast_predictions_csv, the same bytes built
column by column with numpy and Arrow, ten times faster on a catalogue.

A probability is written as "%.6f" does (correctly rounded, ties to even) from its value times 10**6: where that
product is within ROUNDING_MARGIN of a tie its rounding could differ from the exact decimal's, so those few cells
are formatted by Python itself. Text is quoted as Python's csv module quotes it for pandas (a delimiter, a quote or
the line terminator inside; "\\r" alone is not quoted with "\\n" line ends). A table with anything else (a value
outside [0, 1], a missing cell, a column of another kind) returns None: predictions_csv is then the writer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

PREDICTED = "predicted"
PROBABILITY_FORMAT = "%.6f"


def top_genres(probabilities: np.ndarray, top_k: int) -> np.ndarray:
    """Each row's top_k genres (column indices), most likely first; of equal probabilities, the first genre."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]


def prediction_table(ids: pd.Series | pd.DataFrame, probabilities: np.ndarray, classes: Sequence[str], *,
                     actual: Sequence[str] | None = None, top_k: int = 0) -> pd.DataFrame:
    """One row per song: its id, [the actual genre,] the predicted genre, one probability column per genre,
    then the top k genres with their probabilities, most likely first. `ids` is the id column, or a frame of it
    and further columns to put last (the novelty slice)."""
    classes = np.asarray(list(classes), dtype=object)
    trailing = None
    if isinstance(ids, pd.DataFrame):
        ids, trailing = ids.iloc[:, 0], ids.iloc[:, 1:]
    table = {ids.name: ids.to_numpy()}
    if actual is not None:
        table["actual"] = np.asarray(actual, dtype=object)
    table[PREDICTED] = classes[probabilities.argmax(axis=1)]
    table.update({name: probabilities[:, i] for i, name in enumerate(classes)})
    if top_k:
        order = top_genres(probabilities, top_k)
        for rank in range(top_k):
            table[f"top{rank + 1}_genre"] = classes[order[:, rank]]
            table[f"top{rank + 1}_probability"] = probabilities[np.arange(len(order)), order[:, rank]]
    if trailing is not None:
        table.update({name: trailing[name].to_numpy() for name in trailing.columns})
    return pd.DataFrame(table)


def predictions_csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator="\n", float_format=PROBABILITY_FORMAT)


ROUNDING_MARGIN = 1e-4  # far above the 1.2e-10 that multiplying by 10**6 can be off by
_DIGITS = 6
_NEEDS_QUOTES = '[,"\n]'


def _large(text: str):
    import pyarrow as pa

    return pa.scalar(text, type=pa.large_string())


def _probability_text(values: np.ndarray, end: bytes = b""):
    """Each value in [0, 1] as "%.6f" writes it, then `end`, as Arrow text; None if a value is outside."""
    import pyarrow as pa

    if not (np.isfinite(values).all() and (values >= 0.0).all() and (values <= 1.0).all()
            and not np.signbit(values).any()):
        return None
    scaled = values * 10.0 ** _DIGITS
    units = np.rint(scaled).astype(np.int64)
    near_tie = np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < ROUNDING_MARGIN)
    for row in near_tie.tolist():
        units[row] = int((PROBABILITY_FORMAT % values[row]).replace(".", ""))
    width = _DIGITS + 2 + len(end)
    text = np.empty((len(values), width), dtype=np.uint8)
    text[:, 0] = units // 10 ** _DIGITS + ord("0")
    text[:, 1] = ord(".")
    fraction = units % 10 ** _DIGITS
    for place in range(_DIGITS):
        text[:, _DIGITS + 1 - place] = fraction // 10 ** place % 10 + ord("0")
    text[:, _DIGITS + 2:] = np.frombuffer(end, dtype=np.uint8)
    return pa.array(text.view(f"S{width}").ravel(), type=pa.binary(width)).cast(pa.large_string())


def _text(column: pd.Series):
    """Strings as the csv module writes them, as Arrow text; None if a value is missing or not a string."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        array = pa.array(column, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count or not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return None
    array = array.cast(pa.large_string())  # 64-bit offsets: a piece may hold more than 2 GB of text
    quoted = pc.match_substring_regex(array, _NEEDS_QUOTES)
    if pc.any(quoted).as_py():
        doubled = pc.binary_join_element_wise(_large('"'), pc.replace_substring(array, '"', '""'), _large('"'),
                                              _large(""))
        array = pc.if_else(quoted, doubled, array)
    return array


def _quoted(name: str) -> str:
    if not any(char in name for char in ',"\n'):
        return name
    return '"' + name.replace('"', '""') + '"'


def _column_text(column: pd.Series, last: bool):
    """The column's cells as text; the last column's end with the line break."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pd.api.types.is_float_dtype(column.dtype):
        return _probability_text(column.to_numpy(dtype=np.float64), b"\n" if last else b"")
    if pd.api.types.is_integer_dtype(column.dtype) and not pd.api.types.is_extension_array_dtype(column.dtype):
        text = pa.array(column.to_numpy()).cast(pa.large_string())
    elif pd.api.types.is_object_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype):
        text = _text(column)
    else:
        return None
    return pc.binary_join_element_wise(text, _large(""), _large("\n")) if last and text is not None else text


def fast_predictions_csv(table: pd.DataFrame) -> bytes | None:
    """predictions_csv(table) encoded as UTF-8, or None where this cannot promise the same bytes."""
    import pyarrow.compute as pc

    names = list(table.columns)
    if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(name, str) for name in names):
        return None  # one column: the csv module quotes an empty row's field
    if not len(table):
        return None
    columns = [_column_text(table[name], last=index == len(names) - 1) for index, name in enumerate(names)]
    if any(column is None for column in columns):
        return None
    lines = pc.binary_join_element_wise(*columns, _large(","))
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset:lines.offset + len(lines) + 1]
    body = lines.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]
    return (",".join(_quoted(name) for name in names) + "\n").encode("utf-8") + body
