"""Novelty slices (spotify_genre/preprocessing/novelty.py): which slice a song falls in, by hand-made cases; the known ids kept in
the preprocessor's .npz; and the evaluate stage's per-slice scores against a computation by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spotify_genre.errors import BundleError
from spotify_genre.preprocessing.novelty import SLICES, KnownIds
from spotify_genre.preprocessing.preprocessor import arrays_path, load_preprocessor, save_preprocessor
from pipeline.synthetic import synthetic_songs
from stages import evaluate
from pipeline.params import parse_params
from pipeline.preprocessor_fitting import fit_model_inputs
from tests.conftest import BIN, default_params, replace_preprocessor_arrays, run

TRAINING = pd.DataFrame({
    "track_album_id": ["album-a", "album-a", "album-b", None, "album-c"],
    "track_artist": ["Ana", "Ana", "Bo", "Cy", None],
})


@pytest.mark.parametrize("album, artist, expected", [
    ("album-a", "Ana", "known_album"),
    ("album-b", "Somebody new", "known_album"),  # a compilation: the album is known, whoever sings
    ("album-c", None, "known_album"),
    ("album-new", "Ana", "new_album"),
    ("album-new", "Cy", "new_album"),  # Cy's only training song has no album id
    (None, "Bo", "new_album"),
    ("", "Bo", "new_album"),
    ("album-new", "Nobody", "new_artist"),
    ("album-new", None, "new_artist"),
    (None, None, "new_artist"),
    ("", "", "new_artist"),
    ("ALBUM-A", "ana", "new_artist"),  # exact match: no case folding
    ("album-a ", " Ana", "new_artist"),
    ("Ana", "album-a", "new_artist"),  # an album id is not an artist, nor the other way round
])
def test_each_song_falls_in_one_slice_by_hand(album, artist, expected):
    known = KnownIds.from_songs(TRAINING)
    songs = pd.DataFrame({"track_album_id": [album], "track_artist": [artist]})
    assert known.slices(songs).tolist() == [expected]
    assert SLICES[known.codes(songs)[0]] == expected


def test_known_ids_are_the_distinct_training_ids_sorted_without_missing_ones():
    known = KnownIds.from_songs(TRAINING)
    assert known.albums.tolist() == ["album-a", "album-b", "album-c"]
    assert known.artists.tolist() == ["Ana", "Bo", "Cy"]
    empty = KnownIds.from_songs(TRAINING.iloc[:0])
    songs = pd.DataFrame({"track_album_id": ["album-a"], "track_artist": ["Ana"]})
    assert empty.slices(songs).tolist() == ["new_artist"]


def test_a_training_song_is_in_the_known_album_slice():
    songs = synthetic_songs(400, seed=5)
    known = KnownIds.from_songs(songs.iloc[:300])
    codes = known.codes(songs)
    assert (codes[:300] == 0).all()
    later = songs.iloc[300:]
    album_known = later["track_album_id"].isin(songs["track_album_id"].iloc[:300]).to_numpy()
    artist_known = later["track_artist"].isin(songs["track_artist"].iloc[:300]).to_numpy()
    assert codes[300:].tolist() == np.where(album_known, 0, np.where(artist_known, 1, 2)).tolist()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    songs = synthetic_songs(300, seed=1)
    params = parse_params(default_params())
    pre, _ = fit_model_inputs(songs, ["danceability", "energy"], params.preprocess, data_sha256="ab" * 32,
                              groups=songs["track_id"])
    path = tmp_path_factory.mktemp("pre") / "preprocessor.json"
    save_preprocessor(path, pre)
    return path, pre, songs


def test_the_preprocessor_keeps_the_training_albums_and_artists(saved):
    path, pre, songs = saved
    loaded = load_preprocessor(path)
    assert loaded.known == pre.known == KnownIds.from_songs(songs)
    assert json.loads(path.read_text())["known"]["fields"] == ["track_album_id", "track_artist"]


def test_a_preprocessor_without_known_ids_still_loads(saved, tmp_path):
    path, pre, _ = saved
    data = json.loads(path.read_text())
    del data["known"]
    older = tmp_path / "preprocessor.json"
    older.write_text(json.dumps(data))
    arrays_path(older).write_bytes(arrays_path(path).read_bytes())
    assert load_preprocessor(older).known is None


def test_tampered_known_ids_are_refused(saved, tmp_path):
    path, _, _ = saved
    with np.load(arrays_path(path), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["known.track_artist"] = arrays["known.track_artist"][::-1]
    tampered = tmp_path / "preprocessor.json"
    tampered.write_text(path.read_text())
    replace_preprocessor_arrays(tampered, arrays)
    with pytest.raises(BundleError, match="known.track_artist' must be distinct strings in sorted order"):
        load_preprocessor(tampered)


def test_slice_scores_by_hand():
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 5])
    model = np.array([0, 1, 2, 0, 0, 1, 0, 0, 4, 5])
    peer = np.array([0, 0, 2, 3, 1, 1, 2, 0, 4, 0])
    codes = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=np.int8)  # no song in the new-artist slice
    settings = parse_params(default_params()).evaluate.bootstrap
    slices = evaluate.novelty_metrics(labels, model, codes, {"peer": peer}, settings)
    assert list(slices) == list(SLICES)
    assert slices["new_artist"] == {"songs": 0, "share": 0.0}
    first, second = slices["known_album"], slices["new_album"]
    assert (first["songs"], first["share"], second["songs"], second["share"]) == (4, 0.4, 6, 0.6)
    assert first["accuracy"] == 0.75 and second["accuracy"] == pytest.approx(4 / 6)
    # macro-F1 over all six genres: in the first slice genres 0-2 have F1 1, 2/3 and 1 (genre 0 also
    # predicted for a genre-3 song), genre 3 has 0, genres 4 and 5 neither appear nor are predicted: 0
    assert first["f1_macro"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 6)
    assert first["baselines"]["peer"]["accuracy"] == 0.75
    assert second["baselines"]["peer"]["accuracy"] == pytest.approx(3 / 6)
    difference = second["baselines"]["peer"]["difference"]["accuracy"]
    assert difference["estimate"] == pytest.approx(1 / 6)
    assert difference["low"] <= difference["estimate"] <= difference["high"]


@pytest.mark.e2e
def test_predict_says_each_songs_slice_as_the_evaluate_stage_counted_them(synthetic_pipeline, tmp_path):
    """`predict --novelty` on the pipeline's test split: the slices of the training split's raw ids, by hand, and
    the evaluate stage's counts; without the flag the output is as before, and a missing column is one line."""
    pipeline = synthetic_pipeline
    test = pd.read_parquet(pipeline / "data" / "split" / "test.parquet")
    test.to_csv(tmp_path / "test.csv", index=False)
    settings = ["--model", str(pipeline / "models" / "model.pt"),
                "--preprocessor", str(pipeline / "models" / "preprocessor.json")]
    with_slices = run([str(BIN / "spotify-genre"), "predict", "test.csv", "--novelty", "-o", "novelty.csv",
                       *settings], tmp_path)
    plain = run([str(BIN / "spotify-genre"), "predict", "test.csv", "-o", "plain.csv", *settings], tmp_path)
    assert with_slices.stderr == plain.stderr == ""
    ours = pd.read_csv(tmp_path / "novelty.csv", dtype=str, keep_default_na=False)
    assert ours.columns[-1] == "novelty"
    assert ours.drop(columns="novelty").equals(pd.read_csv(tmp_path / "plain.csv", dtype=str, keep_default_na=False))

    train = pd.read_parquet(pipeline / "data" / "split" / "train.parquet")
    album = test["track_album_id"].isin(train["track_album_id"].dropna())
    artist = test["track_artist"].isin(train["track_artist"].dropna())
    expected = np.where(album, "known_album", np.where(artist, "new_album", "new_artist"))
    assert ours["novelty"].tolist() == expected.tolist()
    assert {"known_album", "new_album"} <= set(expected), "the synthetic split's songs share albums and artists"
    counted = json.loads((pipeline / "reports" / "metrics.json").read_text())["novelty"]["test"]
    assert {name: entry["songs"] for name, entry in counted.items() if entry["songs"]} == (
        ours["novelty"].value_counts().to_dict())

    test.drop(columns="track_artist").to_csv(tmp_path / "no-artist.csv", index=False)
    missing = run([str(BIN / "spotify-genre"), "predict", "no-artist.csv", "--novelty", *settings], tmp_path,
                  check=False)
    assert missing.returncode == 3 and missing.stderr == "error: no-artist.csv: missing column 'track_artist'\n"

    older = json.loads((pipeline / "models" / "preprocessor.json").read_text())
    del older["known"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    (tmp_path / "older.npz").write_bytes((pipeline / "models" / "preprocessor.npz").read_bytes())
    refused = run([str(BIN / "spotify-genre"), "predict", "test.csv", "--novelty", "--model",
                   str(pipeline / "models" / "model.pt"), "--preprocessor", "older.json"], tmp_path, check=False)
    assert refused.returncode == 5 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: older.json: holds no training albums and artists"), refused.stderr


def test_without_a_peer_the_slice_table_has_the_mlp_alone():
    from pipeline.report import novelty_table

    entry = {"songs": 10, "share": 1.0, "accuracy": 0.5, "f1_macro": 0.4,
             "intervals": {"accuracy": {"low": 0.2, "high": 0.8}, "f1_macro": {"low": 0.1, "high": 0.7}},
             "baselines": {"majority": {"accuracy": 0.3, "f1_macro": 0.1}}}
    metrics = {"strongest_baseline": None,
               "novelty": {"test": {"known_album": entry, "new_album": {"songs": 0, "share": 0.0},
                                    "new_artist": {"songs": 0, "share": 0.0}}}}
    lines = novelty_table(metrics)
    assert lines[0] == "| test songs whose | songs | MLP accuracy | MLP macro-F1 |"
    assert lines[2] == "| album has training songs | 10 (100%) | 0.5000 [0.2000, 0.8000] | 0.4000 [0.1000, 0.7000] |"
    assert lines[3] == "| new album, known artist | 0 |  |  |"
