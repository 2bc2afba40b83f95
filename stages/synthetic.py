"""A synthetic songs table with the raw schema and genre-dependent features, for demos, tests and benchmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages.schema import COLUMN_NAMES, GENRES

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


def _ids(rng: np.random.Generator, count: int) -> np.ndarray:
    letters = _ALPHABET[rng.integers(0, len(_ALPHABET), size=(count, 22))]
    return np.array(["".join(row) for row in letters])


def synthetic_songs(rows: int, seed: int) -> pd.DataFrame:
    """`rows` songs; the same (rows, seed) always gives the same table. About 1 row in 8 repeats a track."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, len(GENRES), size=rows)
    unit = np.clip(_GENRE_MEANS[genre] + rng.normal(0.0, 0.14, size=(rows, len(_UNIT_FEATURES))), 0.0, 1.0)
    year = np.clip(np.round(_GENRE_YEAR[genre] + rng.normal(0.0, 7.0, rows)), 1957, 2020).astype(int)
    month = rng.integers(1, 13, rows)
    day = rng.integers(1, 29, rows)
    precision = rng.choice(3, size=rows, p=[0.06, 0.01, 0.93])
    dates = np.where(precision == 0, [f"{y}" for y in year],
                     np.where(precision == 1, [f"{y}-{m:02d}" for y, m in zip(year, month)],
                              [f"{y}-{m:02d}-{d:02d}" for y, m, d in zip(year, month, day)]))
    track_ids = _ids(rng, rows)
    repeats = rng.random(rows) < 0.125
    track_ids[repeats] = track_ids[rng.integers(0, rows, size=int(repeats.sum()))]
    subgenre = np.array([f"{GENRES[g]} sub {rng.integers(0, 4)}" for g in genre])
    playlist_number = rng.integers(0, 20, rows)
    table = {
        "track_id": track_ids,
        "track_name": [f"Song {i}" for i in range(rows)],
        "track_artist": [f"Artist {a}" for a in rng.integers(0, max(rows // 10, 1), rows)],
        "track_popularity": np.clip(np.round(_GENRE_POPULARITY[genre] + rng.normal(0, 20, rows)), 0, 100).astype(int),
        "track_album_id": _ids(rng, rows),
        "track_album_name": [f"Album {i}" for i in rng.integers(0, max(rows // 3, 1), rows)],
        "track_album_release_date": dates,
        "playlist_name": [f"{s} mix {p}" for s, p in zip(subgenre, playlist_number)],
        "playlist_id": [f"pl{g}{p:03d}" for g, p in zip(genre, playlist_number)],
        "playlist_genre": np.array(GENRES)[genre],
        "playlist_subgenre": subgenre,
        **{name: np.round(unit[:, i], 4) for i, name in enumerate(_UNIT_FEATURES[:2])},
        "key": rng.integers(0, 12, rows),
        "loudness": np.round(np.clip(-6.5 - 3.0 * (genre == 3) + rng.normal(0, 2.8, rows), -46.0, 1.2), 3),
        "mode": rng.integers(0, 2, rows),
        **{name: np.round(unit[:, i + 2], 4) for i, name in enumerate(_UNIT_FEATURES[2:])},
        "tempo": np.round(np.clip(_GENRE_TEMPO[genre] + rng.normal(0, 25, rows), 40.0, 239.0), 3),
        "duration_ms": np.clip(np.round(rng.normal(225_000, 55_000, rows)), 4_000, 517_810).astype(int),
    }
    return pd.DataFrame(table)[list(COLUMN_NAMES)]
