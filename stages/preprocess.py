"""Fit the preprocessor on the training split, apply it to all three splits, and save it (JSON and .npz)."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from pipeline.artifacts import (ANOVA_REPORT, PREPROCESSOR, SPLIT_REPORT, SPLITS, ProcessedSplit, processed_path,
                                read_report, read_split, write_processed)
from pipeline.params import PreprocessParams, load_params
from pipeline.preprocessor_fitting import encode_labels, fit_model_inputs
from pipeline.splitting import GROUP_BY, group_keys
from pipeline.timing import exit_with
from spotify_genre.errors import DataError, exits_cleanly
from spotify_genre.preprocessing.preprocessor import Preprocessor, model_inputs, save_preprocessor
from spotify_genre.songs.features import CANDIDATE_FEATURES
from spotify_genre.songs.schema import LABEL, SUBGENRE_FIELD, TRACK_ID
from spotify_genre.validation import SHA256_PATTERN


def preprocess_splits(splits: dict[str, pd.DataFrame], selected: list[str], params: PreprocessParams,
                      data_sha256: str, group_by: str = "track_id") -> tuple[Preprocessor, dict[str, ProcessedSplit]]:
    """Fit on splits['train'] alone, then transform every other split with what was learned there.

    The training rows' text scores are out of fold, by the split's groups (`group_by`)."""
    train = splits["train"]
    pre, train_inputs = fit_model_inputs(train, selected, params, data_sha256=data_sha256,
                                         groups=group_keys(train, group_by))
    processed = {
        name: ProcessedSplit(
            features=train_inputs if name == "train" else model_inputs(pre, songs),
            labels=encode_labels(songs[LABEL]),
            track_ids=songs[TRACK_ID].to_numpy(dtype=str),
            feature_names=pre.output_features,
            subgenres=songs[SUBGENRE_FIELD].fillna("").to_numpy(dtype=str),
        )
        for name, songs in splits.items()
    }
    return pre, processed


def _selected_features(anova: Any) -> list[str]:
    selected = anova.get("selected") if isinstance(anova, dict) else None
    if (not isinstance(selected, list) or not selected
            or not all(isinstance(name, str) and name in CANDIDATE_FEATURES for name in selected)):
        raise DataError(f"{ANOVA_REPORT}: 'selected' must be a non-empty list of candidate features; "
                        "run `dvc repro select` again")
    return selected


def _data_sha256(report: Any) -> str:
    sha = report.get("raw_sha256") if isinstance(report, dict) else None
    if not isinstance(sha, str) or not re.fullmatch(SHA256_PATTERN, sha):
        raise DataError(f"{SPLIT_REPORT}: no 'raw_sha256'; run `dvc repro split` again")
    return sha


def _group_by(report: Any) -> str:
    """How the split grouped songs (a report from before split.group_by existed grouped by track)."""
    group_by = report.get("group_by", "track_id") if isinstance(report, dict) else None
    if group_by not in GROUP_BY:
        raise DataError(f"{SPLIT_REPORT}: 'group_by' must be one of {', '.join(GROUP_BY)}; run `dvc repro split` again")
    return group_by


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    params = load_params()
    selected = _selected_features(read_report(ANOVA_REPORT, "select"))
    split_report = read_report(SPLIT_REPORT, "split")
    splits = {name: read_split(name) for name in SPLITS}
    pre, processed = preprocess_splits(splits, selected, params.preprocess, _data_sha256(split_report),
                                       _group_by(split_report))
    for name, split in processed.items():
        write_processed(processed_path(name), split)
    save_preprocessor(PREPROCESSOR, pre)
    scored = [f"{len(fields)} {kind} fields" for kind, fields in (("text", pre.text), ("id", pre.ids)) if fields]
    text = f" and {' and '.join(scored)}" if scored else ""
    print(f"preprocess: {len(pre.input_features)} features{text} -> {len(pre.output_features)} model inputs; "
          + ", ".join(f"{name} {len(split.labels)} rows" for name, split in processed.items()))
    return 0


if __name__ == "__main__":
    exit_with(main)
