"""Model inputs derived from a song's raw columns: only facts known before a song is put in a playlist; and the
character codes of its text fields, which a model with a text encoder (model/text_encoder.py) reads."""

from __future__ import annotations

import unicodedata
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from spotify_genre.songs.schema import AUDIO_FEATURES, RELEASE_DATE

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


PADDING, OTHER = 0, 1
_FIRST_PRINTABLE, _LAST_PRINTABLE = 32, 126
VOCABULARY = 2 + _LAST_PRINTABLE - _FIRST_PRINTABLE + 1  # padding, any other character, printable ASCII


def encode_characters(texts: Sequence[object], max_chars: int) -> np.ndarray:
    """Each text as `max_chars` character codes (rows × max_chars, float32), left-aligned and padded with 0.

    Case-folded and NFKD-normalised with accents dropped, so "Beyoncé" and "BEYONCE" read alike; printable ASCII
    keeps its own code, every other character shares one. A missing text is all padding. Nothing is fitted."""
    codes = np.zeros((len(texts), max_chars), dtype=np.float32)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            continue
        folded = unicodedata.normalize("NFKD", text.casefold())
        kept = [char for char in folded if not unicodedata.combining(char)][:max_chars]
        codes[row, :len(kept)] = [ord(char) - _FIRST_PRINTABLE + 2 if _FIRST_PRINTABLE <= ord(char) <= _LAST_PRINTABLE
                                  else OTHER for char in kept]
    return codes


def with_characters(features: np.ndarray, texts: Mapping[str, Sequence[object]],
                    text_encoder: Mapping[str, Any] | None) -> np.ndarray:
    """The model's input matrix: `features`, then each encoded field's character codes (none without an encoder)."""
    if text_encoder is None:
        return features
    blocks = [encode_characters(texts[field], text_encoder["max_chars"]) for field in text_encoder["fields"]]
    return np.hstack([np.asarray(features, dtype=np.float32), *blocks])
