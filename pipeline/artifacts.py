"""The files one stage hands to the next: where each lives, how it is written, and its one reader.

Every reader turns a missing or stale file into one DataError line that names the file and the stage to re-run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pydantic import BaseModel, ConfigDict

from spotify_genre.atomic import write_parquet
from spotify_genre.errors import DataError
from spotify_genre.songs.features import with_characters
from spotify_genre.songs.schema import COLUMN_NAMES, GENRES, TRACK_ID
from spotify_genre.validation import Finite, read_json, validated

SPLITS = ("train", "val", "test")
SUBGENRE = "subgenre"  # the processed splits' column of the songs' playlist_subgenre
RAW_SONGS = Path("data/raw/spotify_songs.csv")  # download -> split
SPLIT_DIR = Path("data/split")  # split -> select, preprocess, evaluate: validated songs, every raw column
SPLIT_REPORT = Path("reports/split.json")  # split -> preprocess, evaluate
ANOVA_REPORT = Path("reports/anova.json")  # select -> preprocess, evaluate
PROCESSED_DIR = Path("data/processed")  # preprocess -> train, baselines, evaluate
PREPROCESSOR = Path("models/preprocessor.json")  # preprocess -> train, evaluate, predict
MODEL = Path("models/model.pt")  # train -> evaluate, predict
LIVE_DIR = Path("dvclive")  # train -> evaluate
TRAINING_SUMMARY = LIVE_DIR / "metrics.json"
LOSS_CURVES = {split: LIVE_DIR / "plots" / "metrics" / split / "loss.tsv" for split in ("train", "val")}
BASELINES = Path("reports/baselines.json")  # baselines -> evaluate
BASELINE_PREDICTIONS = Path("data/baselines/test_predictions.parquet")  # baselines -> evaluate


def read_report(path: Path, stage: str) -> Any:
    """A stage's JSON report."""
    return read_json(path, DataError, f"run `dvc repro {stage}` first", f"run `dvc repro {stage}` again")


def _read_parquet(path: str | os.PathLike, stage: str, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro {stage}` first") from None
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]}); "
                        f"run `dvc repro {stage}` again") from None


def read_split(name: str, columns: tuple[str, ...] = COLUMN_NAMES) -> pd.DataFrame:
    """One split of songs as the split stage wrote it."""
    path = SPLIT_DIR / f"{name}.parquet"
    songs = _read_parquet(path, "split", None if columns == COLUMN_NAMES else list(columns))
    absent = [column for column in columns if column not in songs.columns]
    if absent:
        raise DataError(f"{path}: missing column {absent[0]!r}; run `dvc repro split` again")
    return songs


@dataclass(frozen=True)
class ProcessedSplit:
    """A model-ready split: `track_id`, integer `label` (index into GENRES), the playlist `subgenre` (a finer
    label, never an input; "" where the song has none), then float32 feature columns."""

    features: np.ndarray  # float32, (rows, len(feature_names))
    labels: np.ndarray  # int64, index into GENRES
    track_ids: np.ndarray  # str
    feature_names: tuple[str, ...]
    subgenres: np.ndarray | None = None  # str; None where the file predates the column


def processed_path(split: str, folder: str | os.PathLike = PROCESSED_DIR) -> Path:
    return Path(folder) / f"{split}.parquet"


def write_processed(path: str | os.PathLike, split: ProcessedSplit) -> None:
    frame = pd.DataFrame(split.features.astype(np.float32, copy=False), columns=list(split.feature_names))
    if split.subgenres is not None:
        frame.insert(0, SUBGENRE, pd.Series(split.subgenres, dtype="str"))
    frame.insert(0, "label", split.labels.astype(np.int64, copy=False))
    frame.insert(0, "track_id", pd.Series(split.track_ids, dtype="str"))
    write_parquet(path, frame)


def read_processed(path: str | os.PathLike) -> ProcessedSplit:
    """One processed split, checked: rows present, labels in range, every feature a finite number."""
    frame = _read_parquet(path, "preprocess")
    again = "run `dvc repro preprocess` again"
    names = tuple(column for column in frame.columns if column not in ("track_id", "label", SUBGENRE))
    missing = [column for column in ("track_id", "label") if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: no {missing[0]!r} column; {again}")
    if frame.empty:
        raise DataError(f"{path}: no rows; {again}")
    labels = frame["label"].to_numpy(dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(GENRES):
        raise DataError(f"{path}: label outside 0..{len(GENRES) - 1}; {again}")
    features = np.ascontiguousarray(frame[list(names)].to_numpy(dtype=np.float32))
    bad_rows, bad_columns = np.nonzero(~np.isfinite(features))
    if len(bad_rows):
        raise DataError(f"{path}: row {bad_rows[0] + 1}, column {names[bad_columns[0]]!r}: "
                        f"not a finite number (the preprocessed data should have none); {again}")
    subgenres = frame[SUBGENRE].to_numpy(dtype=str) if SUBGENRE in frame.columns else None
    return ProcessedSplit(features=features, labels=labels, track_ids=frame["track_id"].to_numpy(dtype=str),
                          feature_names=names, subgenres=subgenres)


def read_processed_splits(names: tuple[str, ...] = SPLITS,
                          folder: str | os.PathLike = PROCESSED_DIR) -> dict[str, ProcessedSplit]:
    """The named processed splits, which must share their feature columns."""
    splits = {name: read_processed(processed_path(name, folder)) for name in names}
    first = names[0]
    for name, split in splits.items():
        if split.feature_names != splits[first].feature_names:
            raise DataError(f"{processed_path(name, folder)}: feature columns differ from "
                            f"{processed_path(first, folder)}'s; run `dvc repro preprocess` again")
    return splits


def read_split_texts(name: str, split: ProcessedSplit, fields: list[str]) -> dict[str, np.ndarray]:
    """The text fields of a processed split's songs, from the split stage's file of the same rows."""
    songs = read_split(name, (TRACK_ID, *fields))
    if not np.array_equal(songs[TRACK_ID].to_numpy(dtype=str), split.track_ids):
        raise DataError(f"{SPLIT_DIR / f'{name}.parquet'}: its rows are not those of {processed_path(name)}; "
                        "run `dvc repro preprocess` again")
    return {field: songs[field].to_numpy(dtype=object) for field in fields}


def read_model_inputs(name: str, split: ProcessedSplit, text_encoder: dict | None) -> np.ndarray:
    """The matrix the model reads for a split: its processed features, then, where the model has a text encoder,
    the characters of the split's text fields (songs.features.with_characters), from the split stage's file of
    the same rows."""
    if text_encoder is None:
        return split.features
    return with_characters(split.features, read_split_texts(name, split, text_encoder["fields"]), text_encoder)


def read_curve(path: Path, column: str) -> pd.DataFrame:
    """One of DVCLive's per-epoch curves (a `step` column and `column`), as the train stage wrote it."""
    try:
        frame = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro train` first") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not a readable TSV ({type(error).__name__}); run `dvc repro train` again") from None
    missing = [name for name in ("step", column) if name not in frame.columns]
    if missing:
        raise DataError(f"{path}: expected columns 'step' and {column!r}, missing {', '.join(missing)}")
    return frame[["step", column]]


def write_baseline_predictions(path: str | os.PathLike, track_ids: np.ndarray,
                               predictions: dict[str, np.ndarray]) -> None:
    """`track_id`, then one int8 column per baseline: its predicted class (index into GENRES) of each test row."""
    frame = pd.DataFrame({name: np.asarray(predicted, dtype=np.int8) for name, predicted in predictions.items()})
    frame.insert(0, TRACK_ID, pd.Series(track_ids, dtype="str"))
    write_parquet(path, frame)


def read_baseline_predictions(track_ids: np.ndarray | None = None,
                              path: str | os.PathLike = BASELINE_PREDICTIONS) -> dict[str, np.ndarray]:
    """{baseline: predicted class (int64) of each test row}, in the baselines stage's order; with `track_ids`
    (the processed test split's), checked to be those rows in that order."""
    frame = _read_parquet(path, "baselines")
    again = "run `dvc repro baselines` again"
    if TRACK_ID not in frame.columns:
        raise DataError(f"{path}: no {TRACK_ID!r} column; {again}")
    if track_ids is not None and not np.array_equal(frame[TRACK_ID].to_numpy(dtype=str), track_ids):
        raise DataError(f"{path}: its rows are not those of {processed_path('test')}; {again}")
    predictions = {}
    for name in frame.columns.drop(TRACK_ID):
        column = frame[name]
        if column.dtype != np.int8 or (len(column) and not 0 <= column.min() <= column.max() < len(GENRES)):
            raise DataError(f"{path}: column {name!r}: expected class indices 0..{len(GENRES) - 1} (int8); {again}")
        predictions[name] = column.to_numpy(dtype=np.int64)
    return predictions


class _Scores(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)  # further keys are the baselines stage's own business
    accuracy: Finite
    f1_macro: Finite


class _Baseline(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)
    val: _Scores
    test: _Scores


class BaselineReport(BaseModel):
    """What evaluate reads of reports/baselines.json."""

    model_config = ConfigDict(strict=True, frozen=True)
    models: dict[str, _Baseline]
    strongest: str | None


def baseline_report(raw: object) -> BaselineReport:
    """reports/baselines.json's content, checked: its strongest baseline is one of its models."""
    report = validated(BaselineReport, raw, str(BASELINES), DataError)
    peers = [name for name in report.models if name != "majority"]
    named = report.strongest in peers if peers else report.strongest is None
    if not named:
        raise DataError(f"{BASELINES}: strongest: {report.strongest!r} is not one of its models; "
                        "run `dvc repro baselines` again")
    return report


def read_baselines(path: Path = BASELINES) -> BaselineReport:
    """reports/baselines.json, as the baselines stage wrote it."""
    return baseline_report(read_report(path, "baselines"))
