"""A CSV byte stream cut into chunks of whole records, so that a file of any size is read a chunk at a time.

A record ends at a line break outside quotes. In CSV as writers make it (RFC 4180: a quote only opens a field,
closes it, or is doubled inside it) that is a newline after an even number of quotes, found with numpy a block at a
time. A chunk that does not keep to that (a quote inside an unquoted field, a lone carriage return as line break)
switches the rest of the stream to Python's csv module, which cuts such records where pandas does. Every record
keeps the line it starts on and whether it is blank (pandas skips blank lines), so an error names the line of the
file whatever the chunk, and each chunk knows how many songs come before it.
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass
from typing import IO, Iterator

import numpy as np

from spotify_genre.errors import DataError

BLOCK_BYTES = 8 << 20
RECORD_LIMIT_BYTES = 64 << 20  # one song's row is a few hundred bytes: more is a quote that never closes
QUOTE, COMMA, LF, CR = 34, 44, 10, 13
_BLANK = np.array([32, 9, CR, LF], dtype=np.uint8)  # what a line pandas skips as blank may hold
_BLANK_BYTES = bytes(_BLANK)
_FIELD_START = np.array([COMMA, LF, CR], dtype=np.uint8)
_AFTER_CLOSING_QUOTE = np.array([COMMA, LF, CR, QUOTE], dtype=np.uint8)
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Records:
    """Consecutive whole records of a CSV stream."""

    data: bytes  # the records, each with its line break (the stream's last one may have none)
    offset: int  # where `data` starts in the (decompressed) stream
    first_row: int  # songs (non-blank records after the header) before these
    lines: np.ndarray  # the line each record starts on, the header's being line 1
    blank: np.ndarray  # whether each record is blank

    @property
    def rows(self) -> int:
        """The songs among these records: what pandas reads from them."""
        return int(np.count_nonzero(~self.blank))

    def row_lines(self) -> np.ndarray:
        """The line each song starts on."""
        return self.lines[~self.blank]


def _blank(data: bytes, starts: np.ndarray) -> np.ndarray:
    """Whether each record (from each start to the next) holds only spaces, tabs and line breaks."""
    array = np.frombuffer(data, dtype=np.uint8)
    blank = np.zeros(starts.size, dtype=bool)
    if not starts.size:
        return blank
    maybe = np.flatnonzero(np.isin(array[starts], _BLANK))  # a song's record starts with a visible character
    ends = np.append(starts[1:], len(data))
    for index in maybe.tolist():
        blank[index] = not data[starts[index]:ends[index]].strip(_BLANK_BYTES)
    return blank


def _conforms(data: np.ndarray, stream_start: bool) -> bool:
    """Whether every quote of these whole records opens a field, closes one or doubles inside one, and every
    carriage return outside quotes comes before a newline: then an even count of quotes tells a record's end."""
    quotes = np.flatnonzero(data == QUOTE)
    if quotes.size:
        opens, closes = quotes[0::2], quotes[1::2]
        first = 3 if stream_start and data[:3].tobytes() == _BOM else 0
        at_start = (opens == first) | np.isin(data[np.maximum(opens - 1, 0)], _FIELD_START)
        doubled = np.zeros(opens.size, dtype=bool)
        doubled[1:] = opens[1:] - 1 == closes[: opens.size - 1]
        if not (at_start | doubled).all():
            return False
        after = closes + 1
        inside = after < data.size
        if not np.isin(data[after[inside]], _AFTER_CLOSING_QUOTE).all():
            return False
    returns = np.flatnonzero(data == CR)
    if returns.size:
        lone = returns[(returns + 1 >= data.size) | (data[np.minimum(returns + 1, data.size - 1)] != LF)]
        outside = (np.searchsorted(quotes, lone) & 1) == 0
        if (lone[outside] + 1 < data.size).any():
            return False
    return True


class _FastCutter:
    """Record ends by quote parity, one block at a time: the parity carries over from block to block."""

    def __init__(self) -> None:
        self.inside_quotes = 0
        self.newlines = 0  # newlines before the next block

    def ends(self, block: bytes) -> tuple[np.ndarray, np.ndarray]:
        """The block's record ends (positions after each record-ending newline, in the block) and the count of
        newlines up to each, from the stream's start."""
        data = np.frombuffer(block, dtype=np.uint8)
        newlines = np.flatnonzero(data == LF)
        quotes = np.flatnonzero(data == QUOTE)
        if quotes.size:
            ending = ((np.searchsorted(quotes, newlines) + self.inside_quotes) & 1) == 0
            ends, counts = newlines[ending] + 1, np.flatnonzero(ending) + 1 + self.newlines
            self.inside_quotes = (self.inside_quotes + quotes.size) & 1
        elif self.inside_quotes:
            ends, counts = newlines[:0], newlines[:0]
        else:
            ends, counts = newlines + 1, np.arange(1, newlines.size + 1) + self.newlines
        self.newlines += newlines.size
        return ends, counts


def _line_breaks(data: bytes) -> np.ndarray:
    """Where each line ends (the position after its \\n, \\r\\n or lone \\r), as Python's csv module counts lines."""
    array = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(array == LF)
    returns = np.flatnonzero(array == CR)
    lone = returns[(returns + 1 < array.size) & (array[np.minimum(returns + 1, array.size - 1)] != LF)]
    return np.sort(np.concatenate([newlines, lone])) + 1


def _csv_module_cut(data: bytes, at_end: bool, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `want` record ends in `data` (starting at a record) by Python's csv module, and the count of line
    breaks up to each; without `at_end`, a record that reaches the end of `data` may go on and is left out."""
    breaks = _line_breaks(data)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, RECORD_LIMIT_BYTES))
    try:
        reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
        counts = np.array([reader.line_num for _ in itertools.islice(reader, want)], dtype=np.int64)
    except csv.Error:  # what it cannot read, pandas reads whole and names the line of
        counts = np.array([breaks.size + 1] if at_end else [], dtype=np.int64)
    finally:
        csv.field_size_limit(limit)
    ends = np.append(breaks, len(data))[np.minimum(counts, breaks.size + 1) - 1]  # past the last break: the end
    keep = ends <= len(data) if at_end else ends < len(data)
    return ends[keep], counts[keep]


class _Splitter:
    """The state of one stream being cut: the bytes read but not yet given out, from a record's start on."""

    def __init__(self, stream: IO[bytes], where: str, block_bytes: int):
        self.stream, self.where, self.block_bytes = stream, where, block_bytes
        self.pieces: list[bytes] = []
        self.size = 0  # bytes in pieces
        self.start, self.line, self.row = 0, 1, 0  # stream position, line and songs before pieces[0]
        self.at_end = False
        self.fast = _FastCutter()  # None once the stream has gone to the csv module
        self.ends: list[np.ndarray] = []  # fast: record ends found in pieces (stream positions), and newline counts
        self.counts: list[np.ndarray] = []
        self.found = 0
        self.last_end, self.last_line = 0, 1  # fast: where the last record found ends, and the next one's line

    def _read(self, size: int) -> bool:
        block = self.stream.read(size)
        if not block:
            self.at_end = True
            return False
        if self.fast is not None:
            ends, counts = self.fast.ends(block)
            self.ends.append(ends + self.start + self.size)
            self.counts.append(counts)
            self.found += ends.size
            if ends.size:
                self.last_end, self.last_line = int(self.ends[-1][-1]), int(counts[-1]) + 1
        self.pieces.append(block)
        self.size += len(block)
        return True

    def _too_long(self, line: int) -> DataError:
        return DataError(f"{self.where}: line {line}: a record runs on for more than {RECORD_LIMIT_BYTES >> 20} MiB "
                         "(a quote that never closes?)")

    def _fast_cut(self, want: int) -> tuple[bytes, np.ndarray, np.ndarray]:
        """The buffered bytes, and up to `want` record ends in them with the newline count up to each."""
        while self.found < want and self._read(self.block_bytes):
            last_end, last_line = (self.last_end, self.last_line) if self.found else (self.start, self.line)
            if self.start + self.size - last_end > RECORD_LIMIT_BYTES:
                raise self._too_long(last_line)
        data = b"".join(self.pieces)
        ends = np.concatenate(self.ends) - self.start if self.ends else np.zeros(0, dtype=np.int64)
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, dtype=np.int64)
        if self.at_end and data and (not ends.size or ends[-1] < len(data)):
            ends, counts = np.append(ends, len(data)), np.append(counts, self.fast.newlines)
        return data, ends[:want], counts[:want]

    def _slow_cut(self, want: int) -> tuple[bytes, np.ndarray, np.ndarray]:
        while True:
            data = b"".join(self.pieces)
            self.pieces = [data] if data else []
            ends, counts = _csv_module_cut(data, self.at_end, want)
            if ends.size >= want or self.at_end:
                return data, ends[:want], counts[:want] + (self.line - 1)
            if not ends.size and len(data) > RECORD_LIMIT_BYTES:
                raise self._too_long(self.line)
            self._read(max(self.block_bytes, len(data)))

    def take(self, want: int) -> Records | None:
        """The next `want` records (fewer at the end of the stream), or None after the last."""
        while True:
            data, ends, counts = (self._fast_cut if self.fast is not None else self._slow_cut)(want)
            if not ends.size:
                return None
            cut = int(ends[-1])
            array = np.frombuffer(data, dtype=np.uint8, count=cut)
            if self.fast is None or _conforms(array, self.start == 0):
                break
            self.fast, self.ends, self.counts, self.found = None, [], [], 0
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        lines = np.concatenate([[self.line], counts[:-1] + 1]).astype(np.int64)
        chunk = Records(data[:cut], self.start, self.row, lines, _blank(data[:cut], starts))
        rest = data[cut:]
        self.pieces, self.size = ([rest] if rest else []), len(rest)
        if self.fast is not None:
            all_ends, all_counts = np.concatenate(self.ends), np.concatenate(self.counts)
            self.ends, self.counts = [all_ends[ends.size:]], [all_counts[ends.size:]]
            self.found -= ends.size
        self.start, self.line = self.start + cut, int(counts[-1]) + 1
        return chunk


def split_records(stream: IO[bytes], rows: int, where: str, block_bytes: int | None = None) -> Iterator[Records]:
    """The header record alone, then chunks of up to `rows` records, from a binary stream read a block at a time.

    An empty stream gives nothing. A record longer than RECORD_LIMIT_BYTES (a quote never closed) is a
    DataError naming the line it starts on."""
    splitter = _Splitter(stream, where, block_bytes or BLOCK_BYTES)
    header = splitter.take(1)
    if header is None:
        return
    yield header
    while (chunk := splitter.take(rows)) is not None:
        splitter.row += chunk.rows
        yield chunk
