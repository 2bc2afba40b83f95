"""A synthetic songs table with the raw schema and genre-dependent features, for demos, tests and benchmarks."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from spotify_genre.songs.schema import COLUMN_NAMES, GENRES

_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
_UNIT_FEATURES = ("danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence")
# One row per genre, one column per unit-interval feature: where that genre's songs sit on average.
_GENRE_MEANS = np.array([
    [0.66, 0.80, 0.09, 0.08, 0.22, 0.21, 0.40],  # edm
    [0.71, 0.71, 0.10, 0.21, 0.04, 0.18, 0.60],  # latin
    [0.64, 0.70, 0.07, 0.17, 0.03, 0.18, 0.50],  # pop
    [0.67, 0.59, 0.12, 0.26, 0.03, 0.17, 0.53],  # r&b
    [0.72, 0.65, 0.20, 0.19, 0.02, 0.19, 0.50],  # rap
    [0.52, 0.73, 0.06, 0.15, 0.06, 0.20, 0.50],  # rock
])
_GENRE_TEMPO = np.array([125.0, 118.0, 121.0, 112.0, 120.0, 124.0])
_GENRE_YEAR = np.array([2016.0, 2015.0, 2014.0, 2010.0, 2015.0, 1995.0])
_GENRE_POPULARITY = np.array([35.0, 47.0, 47.0, 41.0, 43.0, 41.0])
_SUBGENRES_PER_GENRE = 4
_BLOCK_ROWS = 65_536
_SUBGENRES = np.array([f"{genre} sub {k}" for genre in GENRES for k in range(_SUBGENRES_PER_GENRE)])


def _ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random 22-character ids, drawn a block of rows at a time: the same numbers as one (count, 22) draw,
    without its 176 bytes a row of int64."""
    blocks = [_ALPHABET[rng.integers(0, len(_ALPHABET), size=(min(_BLOCK_ROWS, count - start), 22))]
              for start in range(0, count, _BLOCK_ROWS)]
    blocks = [letters.view("<U22")[:, 0] for letters in blocks]  # each row's 22 letters as one string
    return np.concatenate(blocks) if blocks else np.array([], dtype="<U22")


def _album_ids(rng: np.random.Generator, genre: np.ndarray) -> np.ndarray:
    """Each song's album: about four songs an album, all of one genre, as on the real data, so that the album genre
    scores (id_scores.py) have something to find. The ids are drawn as one id a row, so every later column gets the
    random numbers it got when each song had an album of its own; a song's album number within its genre is a fixed
    scramble of its row number."""
    drawn = _ids(rng, len(genre))
    if not len(genre):
        return drawn
    per_genre = max(len(genre) // (4 * len(GENRES)), 1)
    number = (np.arange(len(genre), dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(per_genre)
    return drawn[(genre * per_genre + number.astype(np.int64)) % len(genre)]


def _digits(numbers: np.ndarray, width: int = 1) -> np.ndarray:
    """Non-negative integers in decimal, zero-padded to `width` (f"{n:0{width}d}"), as a numpy string array."""
    numbers = np.asarray(numbers)
    longest = len(str(int(numbers.max()))) if numbers.size else 1
    return np.char.zfill(numbers.astype(f"<U{max(longest, width)}"), width)


def _join(*parts) -> np.ndarray:
    """Element-wise string concatenation, column by column: a Python string per row costs ~10x the time."""
    return functools.reduce(np.char.add, parts)


def _text(values: np.ndarray) -> pd.Series:
    """A text column in pandas' own string storage, built now so that the wide numpy array can go."""
    return pd.Series(values)


def synthetic_songs(rows: int, seed: int) -> pd.DataFrame:
    """`rows` songs; the same (rows, seed) always gives the same table. About 1 row in 8 repeats a track."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, len(GENRES), size=rows)
    unit = np.clip(_GENRE_MEANS[genre] + rng.normal(0.0, 0.14, size=(rows, len(_UNIT_FEATURES))), 0.0, 1.0)
    year = np.clip(np.round(_GENRE_YEAR[genre] + rng.normal(0.0, 7.0, rows)), 1957, 2020).astype(int)
    month = rng.integers(1, 13, rows)
    day = rng.integers(1, 29, rows)
    precision = rng.choice(3, size=rows, p=[0.06, 0.01, 0.93])
    year_month = _join(_digits(year), "-", _digits(month, 2))
    dates = _text(np.where(precision == 0, _digits(year),
                           np.where(precision == 1, year_month, _join(year_month, "-", _digits(day, 2)))))
    del year_month
    track_ids = _ids(rng, rows)
    repeats = rng.random(rows) < 0.125
    track_ids[repeats] = track_ids[rng.integers(0, rows, size=int(repeats.sum()))]
    # One draw per row, in row order: the same numbers as a scalar rng.integers(0, 4) call per row.
    subgenre = _SUBGENRES[genre * _SUBGENRES_PER_GENRE + rng.integers(0, _SUBGENRES_PER_GENRE, size=rows)]
    playlist_number = rng.integers(0, 20, rows)
    table = {
        "track_id": _text(track_ids),
        "track_name": _text(_join("Song ", _digits(np.arange(rows)))),
        "track_artist": _text(_join("Artist ", _digits(rng.integers(0, max(rows // 10, 1), rows)))),
        "track_popularity": np.clip(np.round(_GENRE_POPULARITY[genre] + rng.normal(0, 20, rows)), 0, 100).astype(int),
        "track_album_id": _text(_album_ids(rng, genre)),
        "track_album_name": _text(_join("Album ", _digits(rng.integers(0, max(rows // 3, 1), rows)))),
        "track_album_release_date": dates,
        "playlist_name": _text(_join(subgenre, " mix ", _digits(playlist_number))),
        "playlist_id": _text(_join("pl", _digits(genre), _digits(playlist_number, 3))),
        "playlist_genre": _text(np.array(GENRES)[genre]),
        "playlist_subgenre": _text(subgenre),
        **{name: np.round(unit[:, i], 4) for i, name in enumerate(_UNIT_FEATURES[:2])},
        "key": rng.integers(0, 12, rows),
        "loudness": np.round(np.clip(-6.5 - 3.0 * (genre == 3) + rng.normal(0, 2.8, rows), -46.0, 1.2), 3),
        "mode": rng.integers(0, 2, rows),
        **{name: np.round(unit[:, i + 2], 4) for i, name in enumerate(_UNIT_FEATURES[2:])},
        "tempo": np.round(np.clip(_GENRE_TEMPO[genre] + rng.normal(0, 25, rows), 40.0, 239.0), 3),
        "duration_ms": np.clip(np.round(rng.normal(225_000, 55_000, rows)), 4_000, 517_810).astype(int),
    }
    return pd.DataFrame(table)[list(COLUMN_NAMES)]
