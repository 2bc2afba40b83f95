"""Model-ready splits on disk: `track_id`, integer `label` (index into GENRES), then float32 feature columns."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.files import write_parquet
from stages.schema import GENRES

PROCESSED_DIR = "data/processed"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ProcessedSplit:
    features: np.ndarray  # float32, (rows, len(feature_names))
    labels: np.ndarray  # int64, index into GENRES
    track_ids: np.ndarray  # str
    feature_names: tuple[str, ...]


def processed_path(split: str, folder: str | os.PathLike = PROCESSED_DIR) -> str:
    return os.path.join(folder, f"{split}.parquet")


def write_processed(path: str | os.PathLike, split: ProcessedSplit) -> None:
    frame = pd.DataFrame(split.features.astype(np.float32, copy=False), columns=list(split.feature_names))
    frame.insert(0, "label", split.labels.astype(np.int64, copy=False))
    frame.insert(0, "track_id", pd.Series(split.track_ids, dtype="str"))
    write_parquet(path, frame)


def read_processed(path: str | os.PathLike) -> ProcessedSplit:
    frame = pd.read_parquet(path)
    names = tuple(column for column in frame.columns if column not in ("track_id", "label"))
    labels = frame["label"].to_numpy(dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(GENRES)):
        raise ValueError(f"{path}: label outside 0..{len(GENRES) - 1}")
    return ProcessedSplit(
        features=np.ascontiguousarray(frame[list(names)].to_numpy(dtype=np.float32)),
        labels=labels,
        track_ids=frame["track_id"].to_numpy(dtype=str),
        feature_names=names,
    )
