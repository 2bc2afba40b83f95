"""The split stage: grouped by track (or by artist), class mix close to the whole, stable when songs are added."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline import splitting
from pipeline.params import SplitParams
from pipeline.synthetic import synthetic_songs
from spotify_genre.errors import DataError
from spotify_genre.songs.schema import COLUMN_NAMES, GENRES, LABEL, RELEASE_DATE, TRACK_ID
from stages import split
from tests.conftest import ROOT

PARAMS = SplitParams(val_size=0.15, test_size=0.15, seed=42, missing="drop", group_by="track_id")
BY_ARTIST = PARAMS.model_copy(update={"group_by": "track_artist"})


@pytest.fixture(scope="module")
def songs() -> pd.DataFrame:
    return synthetic_songs(20_000, seed=1)


def _assignment(splits: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {track: name for name, frame in splits.items() for track in frame[TRACK_ID]}


def test_no_track_in_two_splits_and_no_row_lost(songs):
    splits, report = split.split_songs(songs, PARAMS)
    ids = {name: set(frame[TRACK_ID]) for name, frame in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert sum(len(frame) for frame in splits.values()) == len(songs)
    assert songs[TRACK_ID].duplicated().sum() > 1000, "the synthetic table must repeat tracks for this test to bite"
    assert {name: report["splits"][name]["rows"] for name in splits} == {n: len(f) for n, f in splits.items()}
    assert report["all"]["tracks"] == songs[TRACK_ID].nunique()


def test_split_sizes_follow_params(songs):
    splits, _ = split.split_songs(songs, PARAMS)
    tracks = songs[TRACK_ID].nunique()
    for name, share in (("val", PARAMS.val_size), ("test", PARAMS.test_size)):
        assert splits[name][TRACK_ID].nunique() / tracks == pytest.approx(share, abs=0.01)


def test_class_proportions_within_two_points_of_the_whole(songs):
    splits, report = split.split_songs(songs, PARAMS)
    whole = songs[LABEL].value_counts(normalize=True)
    for name, frame in splits.items():
        share = frame[LABEL].value_counts(normalize=True).reindex(GENRES, fill_value=0.0)
        assert (share - whole.reindex(GENRES)).abs().max() <= 0.02, name
        assert report["splits"][name]["max_proportion_gap"] <= 0.02
        assert report["splits"][name]["class_counts"] == {g: int((frame[LABEL] == g).sum()) for g in GENRES}


@pytest.mark.parametrize("where", ["after", "before"])
def test_adding_songs_keeps_every_old_assignment(songs, where):
    new = synthetic_songs(5_000, seed=2)
    grown = pd.concat([songs, new] if where == "after" else [new, songs], ignore_index=True)
    before = _assignment(split.split_songs(songs, PARAMS)[0])
    after = _assignment(split.split_songs(grown, PARAMS)[0])
    assert {track: after[track] for track in before} == before


def test_assignment_is_the_documented_hash():
    ids = pd.Series(["0UywfDKYlyiu1b38DRrzYD", "6f807x0ima9a1j3VPbc7VN", "xyz"])
    expected = [int.from_bytes(hashlib.sha256(f"42:{i}".encode()).digest()[:8], "big") / 2**64 for i in ids]
    np.testing.assert_array_equal(splitting.track_fractions(ids, 42), expected)
    labels = ["test" if u < 0.15 else "val" if u < 0.30 else "train" for u in expected]
    assert list(splitting.assign_splits(ids, PARAMS)) == labels


def test_seed_changes_the_assignment(songs):
    same = splitting.assign_splits(songs[TRACK_ID], PARAMS)
    other = splitting.assign_splits(songs[TRACK_ID], PARAMS.model_copy(update={"seed": 7}))
    assert (same == splitting.assign_splits(songs[TRACK_ID], PARAMS)).all()
    assert 0.3 < (same != other).mean() < 0.7


def test_rows_keep_raw_order_and_every_column(songs):
    splits, _ = split.split_songs(songs, PARAMS)
    for frame in splits.values():
        assert list(frame.columns) == list(COLUMN_NAMES)
        positions = songs.reset_index().merge(frame.reset_index(), on=list(COLUMN_NAMES))["index_x"]
        assert positions.is_monotonic_increasing and len(positions) == len(frame)


@pytest.mark.parametrize("policy", ["drop", "impute"])
def test_missing_release_dates_follow_the_policy(songs, policy):
    holes = songs.copy()
    holes.loc[holes.index[::97], RELEASE_DATE] = np.nan
    affected = int(holes[RELEASE_DATE].isna().sum())
    splits, report = split.split_songs(holes, PARAMS.model_copy(update={"missing": policy}))
    kept = pd.concat(splits.values())
    assert report["missing"]["rows_affected"] == affected
    if policy == "drop":
        assert report["missing"]["rows_dropped"] == affected
        assert len(kept) == len(songs) - affected and kept[RELEASE_DATE].notna().all()
    else:
        assert report["missing"]["rows_dropped"] == 0
        assert len(kept) == len(songs) and kept[RELEASE_DATE].isna().sum() == affected


def test_too_few_songs_for_a_split_is_a_clear_error(songs):
    with pytest.raises(DataError, match="split is empty"):
        split.split_songs(songs.head(2), PARAMS)


def test_grouped_by_artist_no_artist_and_no_track_in_two_splits(songs):
    songs = songs.copy()
    # One artist per track, as in the real data (the synthetic table draws each row's artist on its own) ...
    songs["track_artist"] = songs.groupby(TRACK_ID)["track_artist"].transform("first")
    # ... but some rows name none: a track named in one row only, and tracks named in no row, stay whole too.
    repeats = np.flatnonzero(songs[TRACK_ID].duplicated(keep="first"))
    songs.loc[repeats[:50], "track_artist"] = np.nan
    songs.loc[~songs[TRACK_ID].duplicated(keep=False) & (songs.index < 200), "track_artist"] = np.nan
    splits, report = split.split_songs(songs, BY_ARTIST)
    artists = {name: set(frame["track_artist"].dropna()) for name, frame in splits.items()}
    tracks = {name: set(frame[TRACK_ID]) for name, frame in splits.items()}
    for one, other in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not artists[one] & artists[other] and not tracks[one] & tracks[other]
    assert sum(len(frame) for frame in splits.values()) == len(songs)
    assert report["group_by"] == "track_artist"
    assert report["splits"]["test"]["groups"] < report["splits"]["test"]["tracks"]
    assert abs(len(splits["test"]) / len(songs) - BY_ARTIST.test_size) < 0.03


def test_grouping_by_track_is_the_documented_hash_of_the_track_id(songs):
    by_track = split.split_songs(songs, PARAMS)[0]
    expected = splitting.assign_splits(songs[TRACK_ID], PARAMS)
    assert _assignment(by_track) == dict(zip(songs[TRACK_ID], expected))
    by_artist = split.split_songs(songs, BY_ARTIST)[0]
    assert _assignment(by_artist) != _assignment(by_track)


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stage_writes_splits_and_a_deterministic_report(stage_dir, capsys):
    raw = stage_dir / "data/raw/spotify_songs.csv"
    raw.parent.mkdir(parents=True)
    synthetic_songs(3000, seed=3).to_csv(raw, index=False)

    assert split.main([]) == 0
    outputs = [stage_dir / f"data/split/{name}.parquet" for name in split.SPLITS] + [stage_dir / "reports/split.json"]
    first = [path.read_bytes() for path in outputs]
    report = json.loads(outputs[-1].read_text())
    assert report["raw_sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert report["group_by"] == "track_id"
    train = pd.read_parquet(outputs[0])
    assert list(train.columns) == list(COLUMN_NAMES)
    assert train["key"].dtype == "int64" and train["duration_ms"].dtype == "int64"
    assert sum(report["splits"][name]["rows"] for name in split.SPLITS) == 3000

    assert split.main([]) == 0
    assert [path.read_bytes() for path in outputs] == first
    assert sorted(p.name for p in (stage_dir / "data/split").iterdir()) == [f"{n}.parquet" for n in ("test", "train", "val")]


def test_stage_without_raw_data_says_what_to_run(stage_dir, capsys):
    assert split.main([]) == 3
    assert "data/raw/spotify_songs.csv: not found; run `dvc repro download`" in capsys.readouterr().err
    assert not (stage_dir / "data/split").exists()


def test_stage_refuses_invalid_songs_naming_the_cell(stage_dir, capsys):
    raw = stage_dir / "data/raw/spotify_songs.csv"
    raw.parent.mkdir(parents=True)
    bad = synthetic_songs(100, seed=3)
    bad.loc[5, "danceability"] = 1.5
    bad.to_csv(raw, index=False)
    assert split.main([]) == 3
    err = capsys.readouterr().err
    assert "line 7, column 'danceability'" in err and "Traceback" not in err
    assert not (stage_dir / "data/split").exists()
