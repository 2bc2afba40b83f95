"""Model inputs derived from a song's raw columns: only facts known before a song is put in a playlist."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spotify_genre.schema import AUDIO_FEATURES, RELEASE_DATE

DERIVED_FEATURES = ("release_year", "release_month", "release_date_precision")
CANDIDATE_FEATURES = (*AUDIO_FEATURES, "track_popularity", *DERIVED_FEATURES)
CATEGORICAL_FEATURES = ("key", "mode", "release_date_precision")
# release_date_precision: how much of the date Spotify knows, 0 = year, 1 = year and month, 2 = full date.
# The text columns that can be turned into genre scores (text_scores.py); playlist fields never can.
TEXT_FIELDS = ("track_name", "track_album_name", "track_artist")
# The columns whose exact value can be looked up among the training songs' (id_scores.py).
ID_FIELDS = ("track_album_id", "track_artist")


def release_date_parts(dates: pd.Series) -> pd.DataFrame:
    """Year, month (NaN where unknown) and precision of YYYY, YYYY-MM or YYYY-MM-DD strings (NaN where missing)."""
    codes, distinct = pd.factorize(dates)  # songs share release dates: each distinct one is parsed once
    text = pd.Series(distinct, dtype=object).astype("str")
    parts = np.column_stack([
        pd.to_numeric(text.str.slice(0, 4), errors="coerce").to_numpy(dtype="float64", na_value=np.nan),
        pd.to_numeric(text.str.slice(5, 7).replace("", np.nan), errors="coerce").to_numpy(dtype="float64",
                                                                                        na_value=np.nan),
        text.str.len().map({4: 0.0, 7: 1.0, 10: 2.0}).to_numpy(dtype="float64", na_value=np.nan),
    ]).reshape(len(distinct), 3)
    values = np.vstack([parts, np.full((1, 3), np.nan)])[codes]  # code -1, a missing date: the row of NaNs
    return pd.DataFrame(values, columns=list(DERIVED_FEATURES), index=dates.index)


def candidate_features(songs: pd.DataFrame, names: tuple[str, ...] | list[str] = CANDIDATE_FEATURES) -> pd.DataFrame:
    """The named candidate features of each song, as float64 columns in the order asked for."""
    columns = {name: songs[name] for name in names if name not in DERIVED_FEATURES}
    if any(name in DERIVED_FEATURES for name in names):
        parts = release_date_parts(songs[RELEASE_DATE])
        columns.update({name: parts[name] for name in names if name in DERIVED_FEATURES})
    return pd.DataFrame({name: columns[name] for name in names}, index=songs.index).astype("float64")
