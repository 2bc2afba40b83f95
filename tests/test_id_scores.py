"""Id genre scores (fitted by pipeline/preprocessor_fitting.py, applied by spotify_genre/preprocessing/id_scores.py):
the exact lookup by hand, out-of-fold training scores, the arrays in the .npz beside the preprocessor JSON, and model_inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.params import IdParams, parse_params
from pipeline.preprocessor_fitting import encode_labels, fit_id_scorer, fit_model_inputs, fold_of
from pipeline.synthetic import synthetic_songs
from spotify_genre.errors import BundleError, DataError, ParamsError
from spotify_genre.preprocessing.id_scores import lookup_counts
from spotify_genre.preprocessing.preprocessor import arrays_path, load_preprocessor, model_inputs, save_preprocessor
from spotify_genre.songs.schema import GENRES, LABEL, TRACK_ID
from tests.conftest import default_params, replace_preprocessor_arrays, with_overrides

SHA = "cd" * 32
PARAMS = IdParams(fields=["track_album_id"], alpha=1.0, folds=5)


@pytest.fixture(scope="module")
def songs() -> pd.DataFrame:
    """Synthetic songs: about four to an album, each album of one genre."""
    return synthetic_songs(1200, seed=3)


def by_hand(counts: np.ndarray, prior: np.ndarray, alpha: float) -> np.ndarray:
    n = counts.sum()
    return np.append(np.log((counts + alpha * prior) / (n + alpha) / prior), np.log(1 + n))


def test_new_songs_are_scored_from_the_training_songs_with_their_id(songs):
    labels = encode_labels(songs[LABEL])
    scorer, _ = fit_id_scorer(songs["track_album_id"], labels, songs[TRACK_ID], "track_album_id", PARAMS)
    prior = np.array(scorer.prior)
    counts = np.bincount(labels, minlength=len(GENRES))
    np.testing.assert_allclose(prior, (counts + 1) / (counts.sum() + len(GENRES)))
    album = songs["track_album_id"].iloc[0]
    album_counts = np.bincount(labels[(songs["track_album_id"] == album).to_numpy()], minlength=len(GENRES))
    new = pd.Series([album, "an album nobody has", None, ""])
    raw = scorer.transform(new) * np.array(scorer.scale) + np.array(scorer.center)
    np.testing.assert_allclose(raw[0], by_hand(album_counts, prior, 1.0), rtol=1e-12)
    for unknown in raw[1:]:  # nothing known: the prior, on no songs
        np.testing.assert_allclose(unknown, np.zeros(len(GENRES) + 1), atol=1e-12)
    assert scorer.outputs == (*(f"track_album_id_{genre}" for genre in GENRES), "track_album_id_songs")
    assert raw[0, int(labels[0])] > 0.5, "an album of one genre should point to it"


def test_a_training_row_is_scored_by_its_album_mates_in_other_folds_only(songs):
    labels = encode_labels(songs[LABEL])
    fold = fold_of(songs[TRACK_ID], PARAMS.folds)

    def raw_scores(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scorer, scores = fit_id_scorer(songs["track_album_id"], labels, songs[TRACK_ID], "track_album_id", PARAMS)
        return scores * np.array(scorer.scale) + np.array(scorer.center), np.array(scorer.prior)

    scores, prior = raw_scores(labels)
    row = int(np.flatnonzero(songs["track_album_id"].duplicated(keep=False).to_numpy() & (fold == 0))[0])
    mates = (songs["track_album_id"] == songs["track_album_id"].iloc[row]).to_numpy() & (fold != 0)
    np.testing.assert_allclose(scores[row], by_hand(np.bincount(labels[mates], minlength=len(GENRES)), prior, 1.0),
                               rtol=1e-12)
    # Shuffle the genres of fold 0 among its rows: the genre shares, so the prior, stay as they were.
    shuffled = labels.copy()
    shuffled[fold == 0] = np.random.default_rng(0).permutation(labels[fold == 0])
    moved, moved_prior = raw_scores(shuffled)
    np.testing.assert_array_equal(moved_prior, prior)
    # Rows of fold 0 are scored from the other folds: their own genres play no part ...
    np.testing.assert_allclose(moved[fold == 0], scores[fold == 0], rtol=0, atol=1e-12)
    # ... while the other folds' rows with album mates in fold 0 learned from them.
    assert not np.allclose(moved[fold != 0], scores[fold != 0])


def test_lookup_is_exact_and_missing_ids_find_nothing():
    keys = np.array(["a", "ab", "b"])
    counts = np.arange(18, dtype=np.int32).reshape(3, 6)
    found = lookup_counts(pd.Series(["ab", "a", "zz", None, "", "b"]), keys, counts)
    np.testing.assert_array_equal(found, np.vstack([counts[1], counts[0], np.zeros((3, 6)), counts[2]]))
    assert lookup_counts(pd.Series(["a"]), np.array([], dtype=str), np.zeros((0, 6), np.int32)).sum() == 0


@pytest.fixture()
def saved(songs, tmp_path):
    params = parse_params(with_overrides(default_params(), {"preprocess.text.fields": [],
                                                            "preprocess.text.buckets": 64})).preprocess
    train, new = songs.iloc[:900], songs.iloc[900:]
    pre, train_inputs = fit_model_inputs(train, ["energy", "tempo"], params, data_sha256=SHA, groups=train[TRACK_ID])
    path = tmp_path / "preprocessor.json"
    save_preprocessor(path, pre)
    return pre, path, new, train_inputs


def test_the_preprocessor_saves_and_loads_its_lookup(saved):
    pre, path, new, train_inputs = saved
    assert pre.id_fields == ("track_album_id", "track_artist") == pre.song_fields
    assert pre.output_features[-1] == "track_artist_songs" and train_inputs.shape[1] == len(pre.output_features)
    loaded = load_preprocessor(path)
    assert loaded == pre
    np.testing.assert_array_equal(model_inputs(loaded, new), model_inputs(pre, new))
    assert json.loads(path.read_text())["ids"]["fields"]["track_album_id"]["alpha"] == 1.0


def test_a_song_without_the_id_column_is_refused_in_one_line(saved):
    pre, _, new, _ = saved
    with pytest.raises(DataError, match=r"^column 'track_album_id' is missing; the preprocessor scores these "
                                        r"columns: track_album_id, track_artist$"):
        model_inputs(pre, new.drop(columns="track_album_id"))


def test_a_tampered_lookup_is_refused(saved):
    pre, path, _, _ = saved
    with np.load(arrays_path(path)) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["track_album_id.keys"] = arrays["track_album_id.keys"][::-1].copy()
    replace_preprocessor_arrays(path, arrays)
    with pytest.raises(BundleError, match=r"track_album_id\.keys.* must be distinct strings in sorted order"):
        load_preprocessor(path)


@pytest.mark.parametrize(("fields", "message"), [
    (["playlist_id"], "playlist field"),
    (["track_name"], "unknown id field 'track_name'; id fields are track_album_id, track_artist"),
    (["track_album_id", "track_album_id"], "listed twice"),
])
def test_params_refuse_fields_that_are_not_ids(fields, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(with_overrides(default_params(), {"preprocess.ids.fields": fields}))
