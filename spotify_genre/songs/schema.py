"""The raw-data schema: one definition of a song row, shared by every stage and tool that reads songs."""

from __future__ import annotations

import calendar
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from spotify_genre.errors import DataError, quoted

GENRES = ("edm", "latin", "pop", "r&b", "rap", "rock")
LABEL = "playlist_genre"
TRACK_ID = "track_id"
RELEASE_DATE = "track_album_release_date"
SUBGENRE_FIELD = "playlist_subgenre"  # a finer label than LABEL (pipeline/subgenres.py), never an input
PLAYLIST_FIELDS = ("playlist_name", "playlist_id", SUBGENRE_FIELD)
RELEASE_DATE_PATTERN = r"^\d{4}(-\d{2}(-\d{2})?)?$"
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "text", "int", "float", "date" or "label"
    nullable: bool = False
    low: float | None = None
    high: float | None = None

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")

    def expectation(self) -> str:
        what = "an integer" if self.kind == "int" else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{what} >= {self.low:g}"
        return what


COLUMNS = (
    Column("track_id", "text"),
    Column("track_name", "text", nullable=True),
    Column("track_artist", "text", nullable=True),
    Column("track_popularity", "int", low=0, high=100),
    Column("track_album_id", "text", nullable=True),
    Column("track_album_name", "text", nullable=True),
    Column(RELEASE_DATE, "date", nullable=True),
    Column("playlist_name", "text", nullable=True),
    Column("playlist_id", "text", nullable=True),
    Column(LABEL, "label"),
    Column("playlist_subgenre", "text", nullable=True),
    Column("danceability", "float", low=0, high=1),
    Column("energy", "float", low=0, high=1),
    Column("key", "int", low=-1, high=11),
    Column("loudness", "float", low=-80, high=10),
    Column("mode", "int", low=0, high=1),
    Column("speechiness", "float", low=0, high=1),
    Column("acousticness", "float", low=0, high=1),
    Column("instrumentalness", "float", low=0, high=1),
    Column("liveness", "float", low=0, high=1),
    Column("valence", "float", low=0, high=1),
    Column("tempo", "float", low=0, high=300),
    Column("duration_ms", "int", low=1),
)
COLUMN_NAMES = tuple(column.name for column in COLUMNS)
BY_NAME = {column.name: column for column in COLUMNS}
AUDIO_FEATURES = (
    "danceability", "energy", "key", "loudness", "mode", "speechiness",
    "acousticness", "instrumentalness", "liveness", "valence", "tempo", "duration_ms",
)
# What a song needs for prediction: no label, no playlist fields.
INPUT_COLUMNS = ("track_popularity", RELEASE_DATE, *AUDIO_FEATURES)


def _dtypes(names) -> dict[str, str]:
    return {name: ("float64" if BY_NAME[name].numeric else "str") for name in names if name in BY_NAME}


def check_columns(names: list[str], required: tuple[str, ...], where: str, *, allow_extra: bool = True,
                  in_header: bool = True) -> None:
    """A file's column names (a CSV's header, a Parquet file's schema): each name once, every required one there,
    no other with `allow_extra` False; a DataError naming the first problem."""
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        where_found = " in the header" if in_header else ""
        raise DataError(f"{where}: column {quoted(duplicated[0])} appears more than once{where_found}")
    missing = [name for name in required if name not in names]
    extra = [name for name in names if name not in BY_NAME]
    if missing:
        hint = f" (found unexpected {quoted(extra[0])}: renamed?)" if extra else ""
        raise DataError(f"{where}: missing column {missing[0]!r}{hint}")
    if extra and not allow_extra:
        raise DataError(f"{where}: unexpected column {quoted(extra[0])}; expected exactly the {len(COLUMNS)} columns of "
                        "the schema")


def read_songs(source: str | IO[bytes], where: str, *, required: tuple[str, ...] = COLUMN_NAMES,
               allow_extra: bool = False, parsed: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Parse a songs CSV (a path or a binary stream): header and cell types. Values are checked by row_problems.

    `parsed`: the schema columns to read (those the file has), where the caller needs no others; None reads all."""
    # The CSV is parsed from its bytes: a copy as text, let alone the 4 bytes a character of io.StringIO, would
    # cost several times the file's size in memory on large inputs.
    data = source.read() if hasattr(source, "read") else Path(source).read_bytes()
    if not data or data.isspace():
        raise DataError(f"{where}: empty file; expected a CSV with a header and song rows")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{where}: line {line}: not UTF-8 text (undecodable byte at offset {error.start})") from None
    if b"\x00" in data:  # in UTF-8 a zero byte is only ever the NUL character
        raise DataError(f"{where}: binary data (NUL bytes), not a CSV")
    first_line = data[: data.find(b"\n")] if b"\n" in data else data
    header = [name.lstrip("\ufeff") for name in next(csv.reader(io.StringIO(first_line.decode("utf-8"))), [])]
    padded = [name for name in header if name != name.strip() and name.strip() in BY_NAME]
    if padded:
        raise DataError(f"{where}: column {quoted(padded[0])} has spaces around its name; expected {quoted(padded[0].strip())}")
    header = [name.strip() for name in header]
    if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
        raise DataError(f"{where}: the header has one column; expected comma-separated values (wrong delimiter?)")
    check_columns(header, required, where, allow_extra=allow_extra)
    kept = [name for name in header if name in BY_NAME and (parsed is None or name in parsed)]
    try:
        frame = pd.read_csv(io.BytesIO(data), encoding="utf-8", usecols=kept, dtype=_dtypes(kept),
                            keep_default_na=False, na_values={name: [""] for name in kept}, skipinitialspace=False)
    except ValueError:
        frame = _read_as_text_and_locate(data, kept, where)
    except pd.errors.ParserError as error:
        raise DataError(f"{where}: malformed CSV ({str(error).strip().splitlines()[-1]})") from None
    if frame.empty:
        raise DataError(f"{where}: header only, no song rows")
    return frame


def read_as_text(data: bytes) -> pd.DataFrame | None:
    """Every cell of a songs CSV as a string ("" where empty), or None where the CSV does not parse at all."""
    try:
        return pd.read_csv(io.BytesIO(data), encoding="utf-8", dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError):
        return None


def repeated_header(raw: pd.DataFrame) -> int | None:
    """The 0-based row of read_as_text's frame that repeats the header (two files glued together), if any."""
    known = [name for name in raw.columns if name in BY_NAME]
    repeats = (raw[known] == pd.Series(known, index=known)).all(axis=1).to_numpy()
    return int(np.flatnonzero(repeats)[0]) if repeats.any() else None


def unparsable_cells(raw: pd.DataFrame) -> pd.DataFrame:
    """Every cell of a numeric schema column in read_as_text's frame that is not a number, as (row, column,
    value, reason), in column order then row order."""
    found = []
    for name in raw.columns:
        column = BY_NAME.get(name)
        if column is None or not column.numeric:
            continue
        cells = raw[name].str.strip()
        bad = (pd.to_numeric(cells.where(cells != ""), errors="coerce").isna() & (cells != "")).to_numpy()
        if bad.any():
            found.append(pd.DataFrame({"row": np.flatnonzero(bad), "column": name, "value": raw[name][bad].to_numpy(),
                                       "reason": f"not a number (expected {column.expectation()})"}))
    if not found:
        return pd.DataFrame({"row": pd.Series(dtype="int64"), "column": pd.Series(dtype="str"),
                             "value": pd.Series(dtype="str"), "reason": pd.Series(dtype="str")})
    return pd.concat(found, ignore_index=True)


def _read_as_text_and_locate(data: bytes, kept: list[str], where: str) -> pd.DataFrame:
    """Slow path, taken only when a numeric cell does not parse: find and name the first bad cell."""
    raw = read_as_text(data)
    if raw is None:
        raise DataError(f"{where}: a numeric column could not be parsed")
    raw = raw[kept]
    header_row = repeated_header(raw)
    if header_row is not None:
        raise DataError(f"{where}: line {header_row + 2} repeats the header inside the data")
    cells = unparsable_cells(raw)
    if not cells.empty:
        first = cells.sort_values(["row"], kind="stable").iloc[0]
        raise DataError(f"{where}: line {first['row'] + 2}, column {first['column']!r}: "
                        f"{quoted(first['value'].strip())} is {first['reason']}")
    raise DataError(f"{where}: a numeric column could not be parsed")


def row_problems(frame: pd.DataFrame, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every invalid cell as (row, column, reason), row being the 0-based position in `frame`."""
    names = [name for name in (columns or frame.columns) if name in BY_NAME and name in frame.columns]
    found: list[pd.DataFrame] = []

    def flag(mask, name: str, reason: str) -> None:
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        if rows.size:
            found.append(pd.DataFrame({"row": rows, "column": name, "reason": reason}))

    for name in names:
        column, values = BY_NAME[name], frame[name]
        missing = values.isna().to_numpy()
        if not column.nullable:
            flag(missing, name, "missing value")
        present = ~missing
        if column.numeric:
            numbers = values.to_numpy(dtype="float64", na_value=np.nan)
            out = np.zeros(len(values), dtype=bool)
            if column.low is not None:
                out |= numbers < column.low
            if column.high is not None:
                out |= numbers > column.high
            out |= ~np.isfinite(numbers) & present
            if column.kind == "int":
                out |= present & np.isfinite(numbers) & (numbers != np.round(numbers))
            flag(out & present, name, f"expected {column.expectation()}")
        elif column.kind == "label":
            flag(present & ~values.isin(GENRES).to_numpy(), name, f"unknown genre; expected one of {', '.join(GENRES)}")
        elif column.kind == "date":
            well_formed = values.astype("str").str.fullmatch(RELEASE_DATE_PATTERN).to_numpy(dtype=bool, na_value=False)
            flag(present & ~well_formed, name, "expected a date as YYYY, YYYY-MM or YYYY-MM-DD")
            flag(present & well_formed & ~_real_dates(values, well_formed), name,
                 "not a date of the calendar (month 01 to 12, and a day that month has)")
        elif name == TRACK_ID:
            flag(present & (values.astype("str").str.strip() == "").to_numpy(), name, "empty track id")
    if not found:
        return pd.DataFrame({"row": pd.Series(dtype="int64"), "column": pd.Series(dtype="str"),
                             "reason": pd.Series(dtype="str")})
    return pd.concat(found, ignore_index=True).sort_values(["row", "column"], kind="stable", ignore_index=True)


def _real_date(text: str) -> bool:
    """Whether a YYYY, YYYY-MM or YYYY-MM-DD string names a day, or month, of the (proleptic Gregorian) calendar."""
    if len(text) == 4:
        return True
    year, month = int(text[:4]), int(text[5:7])
    if not 1 <= month <= 12:
        return False
    if len(text) == 7:
        return True
    leap = month == 2 and calendar.isleap(year)
    return 1 <= int(text[8:10]) <= _MONTH_DAYS[month - 1] + leap


def _real_dates(values: pd.Series, well_formed: np.ndarray) -> np.ndarray:
    """_real_date of each well-formed value (True elsewhere), each distinct date checked once."""
    real = np.ones(len(values), dtype=bool)
    if well_formed.any():
        codes, distinct = pd.factorize(values[well_formed].astype("str"))
        real[well_formed] = np.array([_real_date(text) for text in distinct], dtype=bool)[codes]
    return real


def describe_problem(problems: pd.DataFrame, frame: pd.DataFrame, where: str) -> str:
    """The first problem as one line: file, line, column, value, expectation, and how many rows in all."""
    first = problems.iloc[0]
    row, name = int(first["row"]), str(first["column"])
    value = frame[name].iloc[row]
    value = value.item() if isinstance(value, np.generic) else value  # 1.7, not np.float64(1.7)
    shown = "" if pd.isna(value) else f" {quoted(value)}:"
    rows = problems["row"].nunique()
    total = f" ({rows} invalid rows in all)" if rows > 1 else ""
    return f"{where}: line {row + 2}, column {name!r}:{shown} {first['reason']}{total}"


def validate_songs(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Raise DataError naming the first invalid cell; return the frame with columns in schema order."""
    problems = row_problems(frame)
    if not problems.empty:
        raise DataError(describe_problem(problems, frame, where))
    return frame[[name for name in COLUMN_NAMES if name in frame.columns]]
