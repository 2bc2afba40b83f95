"""What the model reads for a split: the processed features, and where the model has a text encoder, the
characters of the split's text fields (spotify_genre/text_encoder.py), from the split stage's file of the same
rows. Shared by the train and evaluate stages."""

from __future__ import annotations

import numpy as np

from spotify_genre.errors import DataError
from spotify_genre.schema import TRACK_ID
from spotify_genre.text_encoder import with_characters
from stages.artifacts import SPLIT_DIR, ProcessedSplit, processed_path, read_split


def split_texts(name: str, split: ProcessedSplit, fields: list[str]) -> dict[str, np.ndarray]:
    """The text fields of a processed split's songs, from the split stage's file of the same rows."""
    songs = read_split(name, (TRACK_ID, *fields))
    if not np.array_equal(songs[TRACK_ID].to_numpy(dtype=str), split.track_ids):
        raise DataError(f"{SPLIT_DIR / f'{name}.parquet'}: its rows are not those of {processed_path(name)}; "
                        "run `dvc repro preprocess` again")
    return {field: songs[field].to_numpy(dtype=object) for field in fields}


def model_inputs(name: str, split: ProcessedSplit, text_encoder: dict | None) -> np.ndarray:
    """The matrix the model reads for a split: its processed features, then the text fields' characters where
    the model has a text encoder (spotify_genre/text_encoder.py)."""
    if text_encoder is None:
        return split.features
    return with_characters(split.features, split_texts(name, split, text_encoder["fields"]), text_encoder)
