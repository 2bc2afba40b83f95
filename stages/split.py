"""Split songs into train/val/test by a stable hash of (seed, group): no track on two sides, ever.

The group is the track (split.group_by: track_id) or the track's artist (track_artist: no artist on two sides,
so the test measures genres of artists the model has never met; see pipeline/splitting.py). A group's split depends
only on its key and the seed, so adding songs never moves a track that was already assigned, and every row of a
group lands in the same split. That stability is also the limit on stratification: a split that may not look
at other groups is a random sample of groups, so each genre's share in it matches the whole in expectation,
within sampling noise (about one point on this dataset's validation split when grouping by track; more by
artist, whose groups are larger). reports/split.json records each split's class mix and its largest gap from
the whole.

Missing values: only the release date may be empty in valid songs (the schema refuses every other gap);
`split.missing` drops those rows, or keeps them for the preprocessor to impute from training statistics.
"""

from __future__ import annotations

import hashlib
import io

import pandas as pd

from pipeline.artifacts import RAW_SONGS, SPLIT_DIR, SPLIT_REPORT, SPLITS
from pipeline.params import SplitParams, load_params
from pipeline.splitting import METHOD, assign_splits, group_keys
from pipeline.timing import exit_with
from spotify_genre.atomic import write_json, write_parquet
from spotify_genre.errors import DataError, exits_cleanly
from spotify_genre.songs.schema import COLUMNS, GENRES, LABEL, RELEASE_DATE, TRACK_ID, read_songs, validate_songs
# Required for the release-year/month/precision features, and the only feature source the schema lets be empty.
MISSING_FIELDS = (RELEASE_DATE,)
def apply_missing_policy(songs: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, dict]:
    """Drop or keep (for imputation from training statistics) the rows missing a MISSING_FIELDS value."""
    affected = songs[list(MISSING_FIELDS)].isna().any(axis=1).to_numpy()
    kept = songs[~affected] if policy == "drop" else songs
    report = {
        "policy": policy,
        "fields": list(MISSING_FIELDS),
        "rows_affected": int(affected.sum()),
        "rows_dropped": int(affected.sum()) if policy == "drop" else 0,
        "note": ("rows missing a value are dropped" if policy == "drop" else
                 "rows missing a value are kept; the preprocessor imputes from training statistics"),
    }
    return kept, report


def _class_mix(labels: pd.Series) -> dict:
    counts = labels.value_counts().reindex(GENRES, fill_value=0)
    total = int(counts.sum())
    return {
        "class_counts": {genre: int(counts[genre]) for genre in GENRES},
        "class_proportions": {genre: round(float(counts[genre]) / total, 6) if total else 0.0 for genre in GENRES},
    }


def split_songs(songs: pd.DataFrame, params: SplitParams) -> tuple[dict[str, pd.DataFrame], dict]:
    """The three splits (raw columns, raw row order) and the report's statistics, minus the data hash."""
    kept, missing = apply_missing_policy(songs, params.missing)
    kept = kept.reset_index(drop=True)
    assignment = assign_splits(group_keys(kept, params.group_by), params)
    splits = {name: kept[assignment == name].reset_index(drop=True) for name in SPLITS}
    empty = [name for name in SPLITS if splits[name].empty]
    if empty:
        raise DataError(f"the {empty[0]} split is empty: {len(kept)} songs are too few for "
                        f"split.val_size={params.val_size} and split.test_size={params.test_size}")
    whole = _class_mix(kept[LABEL])
    per_split = {}
    for name, frame in splits.items():
        mix = _class_mix(frame[LABEL])
        gap = max(abs(mix["class_proportions"][g] - whole["class_proportions"][g]) for g in GENRES)
        per_split[name] = {"rows": len(frame), "tracks": int(frame[TRACK_ID].nunique()),
                           "groups": int(group_keys(frame, params.group_by).nunique()), **mix,
                           "max_proportion_gap": round(gap, 6)}
    report = {
        "method": METHOD,
        "seed": params.seed,
        "group_by": params.group_by,
        "val_size": params.val_size,
        "test_size": params.test_size,
        "missing": missing,
        "all": {"rows": len(kept), "tracks": int(kept[TRACK_ID].nunique()), **whole},
        "splits": per_split,
    }
    return splits, report


def _with_integer_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer schema columns as int64 (the reader gives float64; validation proved them whole numbers)."""
    ints = {column.name: "int64" for column in COLUMNS if column.kind == "int" and column.name in frame}
    return frame.astype(ints)


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    params = load_params()
    try:
        data = RAW_SONGS.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{RAW_SONGS}: not found; run `dvc repro download` first") from None
    songs = validate_songs(read_songs(io.BytesIO(data), str(RAW_SONGS)), str(RAW_SONGS))
    splits, report = split_songs(_with_integer_columns(songs), params.split)
    for name, frame in splits.items():
        write_parquet(SPLIT_DIR / f"{name}.parquet", frame)
    write_json(SPLIT_REPORT, {"raw_sha256": hashlib.sha256(data).hexdigest(), **report})
    sizes = ", ".join(f"{name} {len(frame)}" for name, frame in splits.items())
    print(f"split: {sizes} rows; {report['missing']['rows_affected']} rows missing a release date "
          f"({params.split.missing})")
    return 0


if __name__ == "__main__":
    exit_with(main)
