"""The train stage's hand-off to evaluate: the trained MLP's probabilities of the val and test rows, with a record
of the bundle that made them (models/model.pt's sha256 and the metadata the model card reports).

So evaluate scores the model without loading it: no torch in that stage. The probabilities are those any reader
of the bundle gets (spotify_genre.model.predict_proba on the bundle loaded back from disk), bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from pipeline.artifacts import processed_path
from spotify_genre.atomic import write_with
from spotify_genre.errors import DataError
from spotify_genre.songs.schema import TRACK_ID
from spotify_genre.validation import validated

MLP_PREDICTIONS = Path("data/mlp/predictions.parquet")  # train -> evaluate
PREDICTED_SPLITS = ("val", "test")
_RECORD_KEY = b"spotify_genre.model"
AGAIN = "run `dvc repro train` again"


class ModelRecord(BaseModel):
    """What the predictions file records of the bundle that made them."""

    model_config = ConfigDict(strict=True, frozen=True)
    model_sha256: str
    architecture: dict[str, Any]
    feature_names: list[str]
    class_names: list[str]
    preprocessor_path: str
    preprocessor_sha256: str
    params: dict[str, Any]
    data_sha256: str


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_mlp_predictions(path: str | os.PathLike, record: ModelRecord,
                          predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """`split` (val, then test), `track_id`, then one float64 column per class: the probabilities of each row of
    `predictions[split]` (track ids, probabilities); the record goes into the file's key-value metadata, as JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = []
    for name in PREDICTED_SPLITS:
        track_ids, probabilities = predictions[name]
        frame = pd.DataFrame(np.asarray(probabilities, dtype=np.float64), columns=record.class_names)
        frame.insert(0, TRACK_ID, pd.Series(track_ids, dtype="str"))
        frame.insert(0, "split", pd.Series([name] * len(frame), dtype="str"))
        frames.append(frame)
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           _RECORD_KEY: json.dumps(record.model_dump()).encode()})
    write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_mlp_predictions(track_ids: dict[str, np.ndarray],
                         path: str | os.PathLike = MLP_PREDICTIONS) -> tuple[ModelRecord, dict[str, np.ndarray]]:
    """The record, and {split: probabilities (float64, rows x classes)} of the val and test splits, each checked to
    be of the rows `track_ids[split]` (the processed split's), in that order."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro train` first") from None
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]}); {AGAIN}") from None
    try:
        raw = json.loads((table.schema.metadata or {})[_RECORD_KEY])
    except (KeyError, ValueError):
        raise DataError(f"{path}: records no model; {AGAIN}") from None
    record = validated(ModelRecord, raw, f"{path}: not a record of a model", DataError)
    frame = table.to_pandas()
    missing = [column for column in ("split", TRACK_ID, *record.class_names) if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: no {missing[0]!r} column; {AGAIN}")
    probabilities = {}
    for name in PREDICTED_SPLITS:
        rows = frame[frame["split"] == name]
        if not np.array_equal(rows[TRACK_ID].to_numpy(dtype=str), track_ids[name]):
            raise DataError(f"{path}: its {name} rows are not those of {processed_path(name)}; {AGAIN}")
        probabilities[name] = rows[record.class_names].to_numpy(dtype=np.float64)
    return record, probabilities
