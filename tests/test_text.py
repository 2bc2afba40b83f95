"""Text genre scores (fitted by pipeline/preprocessor_fitting.py, applied by spotify_genre/preprocessing/text_scores.py)
and their place in the preprocessor: hashed n-grams, naive Bayes equal to scikit-learn's, out-of-fold training scores, chunking, the
.npz beside the JSON, and model_inputs for predict."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.naive_bayes import MultinomialNB

from pipeline.params import TextParams, load_params, parse_params
from pipeline.preprocessor_fitting import encode_labels, fit_model_inputs, fit_text_scorer, fold_of
from pipeline.splitting import group_keys
from pipeline.synthetic import synthetic_songs
from spotify_genre.errors import BundleError, DataError, ParamsError
from spotify_genre.preprocessing import text_scores as text
from spotify_genre.preprocessing.preprocessor import arrays_path, load_preprocessor, model_inputs, save_preprocessor
from spotify_genre.songs.features import CANDIDATE_FEATURES, TEXT_FIELDS
from spotify_genre.songs.schema import GENRES, LABEL, TRACK_ID
from stages.split import split_songs
from tests.conftest import ROOT, default_params, replace_preprocessor_arrays, with_overrides

SHA = "cd" * 32
PARAMS = TextParams(fields=["track_name", "track_album_name"], buckets=512, ngram_min=2, ngram_max=4, alpha=0.1,
                    folds=5)
WORDS = {"edm": ["remix", "club mix", "radio edit"], "latin": ["amor", "corazón", "fiesta"],
         "pop": ["love", "baby", "heart"], "r&b": ["soul", "slow jam", "feelings"],
         "rap": ["feat.", "gang", "hustle"], "rock": ["remastered", "live", "guitar"]}


def worded_songs(rows: int, seed: int) -> pd.DataFrame:
    """Synthetic songs whose names carry a word of their genre two times in three (the synthetic table's own
    names, "Song 12", say nothing)."""
    songs = synthetic_songs(rows, seed)
    rng = np.random.default_rng(seed)
    words = [WORDS[genre][rng.integers(0, 3)] if rng.random() < 2 / 3 else "" for genre in songs[LABEL]]
    songs["track_name"] = [f"{name} {word}".strip() for name, word in zip(songs["track_name"], words)]
    return songs


@pytest.fixture(scope="module")
def splits() -> dict[str, pd.DataFrame]:
    params = load_params(ROOT / "params.yaml").split
    return split_songs(worded_songs(3000, seed=4), params)[0]


@pytest.fixture(scope="module")
def preprocessor_params():
    """The default text fields alone (the id scores have their own tests, tests/test_id_scores.py)."""
    return parse_params(with_overrides(default_params(), {"preprocess.text.buckets": 512,
                                                          "preprocess.ids.fields": []})).preprocess


# --- hashed character n-grams -------------------------------------------------------------------------------

def test_ngrams_by_hand():
    counts = text.ngram_counts(pd.Series(["Ab", "ab", None, ""], dtype=object), 4096, 2, 4).toarray()
    # " ab ": 2-grams " a", "ab", "b "; 3-grams " ab", "ab "; the 4-gram " ab ": six in all.
    assert counts[0].sum() == 6 and (counts[0] > 0).sum() <= 6
    np.testing.assert_array_equal(counts[0], counts[1])  # lower-cased
    np.testing.assert_array_equal(counts[2], counts[3])  # missing is the empty string
    assert counts[3].sum() == 1  # "  ": one 2-gram
    one = text.ngram_counts(pd.Series(["ab"]), 4096, 2, 2).toarray()[0]
    assert one.sum() == 3 and np.all(one <= counts[0])


def test_ngrams_never_run_from_one_text_into_the_next():
    texts = pd.Series(["abc", "de", "a" * 200, "x"])
    together = text.ngram_counts(texts, 1024, 1, 5).toarray()
    alone = np.vstack([text.ngram_counts(texts.iloc[[i]], 1024, 1, 5).toarray() for i in range(len(texts))])
    np.testing.assert_array_equal(together, alone)
    width = min(200, text.MAX_CHARS - 2) + 2  # a long text is cut, then padded
    assert together[2].sum() == sum(width - n + 1 for n in range(1, 6))


# --- naive Bayes and out-of-fold scores ------------------------------------------------------------------------

def test_scores_of_new_songs_equal_scikit_learn(splits):
    train, val = splits["train"], splits["val"]
    labels = encode_labels(train[LABEL])
    scorer, _ = fit_text_scorer(train["track_name"], labels, train[TRACK_ID], "track_name", PARAMS)

    def counts(songs):
        counted = text.ngram_counts(songs["track_name"], PARAMS.buckets, PARAMS.ngram_min, PARAMS.ngram_max)
        return counted.log1p()

    tfidf = TfidfTransformer().fit(counts(train))
    priors = (np.bincount(labels, minlength=6) + 1.0) / (len(labels) + 6.0)
    model = MultinomialNB(alpha=PARAMS.alpha, class_prior=priors).fit(tfidf.transform(counts(train)), labels)
    expected = model.predict_proba(tfidf.transform(counts(val)))
    np.testing.assert_allclose(scorer.probabilities(val["track_name"]), expected, rtol=1e-4, atol=1e-6)
    assert np.mean(expected.argmax(axis=1) == encode_labels(val[LABEL])) > 0.5, "the words should tell genres"


def test_a_training_row_is_scored_without_its_own_label(splits):
    train = splits["train"]
    labels = encode_labels(train[LABEL])
    fold = fold_of(train[TRACK_ID], PARAMS.folds)

    def probabilities(labels: np.ndarray) -> np.ndarray:
        scorer, scores = fit_text_scorer(train["track_name"], labels, train[TRACK_ID], "track_name", PARAMS)
        return scores * np.array(scorer.scale) + np.array(scorer.center)  # before standardising

    scores = probabilities(labels)
    moved = probabilities(np.where(fold == 0, (labels + 1) % len(GENRES), labels))
    # Rows of fold 0 are scored by a model of the other folds: their own (changed) labels play no part ...
    np.testing.assert_allclose(moved[fold == 0], scores[fold == 0], rtol=0, atol=1e-9)
    # ... while the other folds' models learned from them.
    assert not np.allclose(moved[fold != 0], scores[fold != 0])


def test_folds_keep_groups_whole_and_are_fixed():
    groups = pd.Series([f"artist {i % 40}" for i in range(1000)])
    fold = fold_of(groups, 5)
    assert pd.Series(fold).groupby(groups).nunique().max() == 1
    assert set(fold) == set(range(5))
    np.testing.assert_array_equal(fold, fold_of(groups.copy(), 5))


def test_chunks_change_nothing(splits, monkeypatch):
    train, test = splits["train"], splits["test"]
    labels = encode_labels(train[LABEL])
    whole, whole_scores = fit_text_scorer(train["track_name"], labels, train[TRACK_ID], "track_name", PARAMS)
    monkeypatch.setattr(text, "CHUNK_ROWS", 97)
    assert len(text.row_chunks(len(train))) > 1, "the patched chunk size should split the training rows"
    chunked, chunked_scores = fit_text_scorer(train["track_name"], labels, train[TRACK_ID], "track_name", PARAMS)
    # Sums taken chunk by chunk round differently in the last bits, nothing more.
    np.testing.assert_array_equal(chunked.idf, whole.idf)
    np.testing.assert_allclose(chunked.log_likelihood, whole.log_likelihood, rtol=1e-6)
    np.testing.assert_allclose(chunked_scores, whole_scores, rtol=0, atol=1e-9)
    np.testing.assert_allclose(chunked.transform(test["track_name"]), whole.transform(test["track_name"]),
                               rtol=0, atol=1e-6)


def test_synthetic_names_that_say_nothing_give_finite_uninformative_scores():
    songs = synthetic_songs(2000, seed=2)
    labels = encode_labels(songs[LABEL])
    scorer, scores = fit_text_scorer(songs["track_album_name"], labels, songs[TRACK_ID], "track_album_name",
                                     PARAMS)
    new = scorer.transform(synthetic_songs(500, seed=3)["track_album_name"])
    assert np.isfinite(scores).all() and np.isfinite(new).all()
    np.testing.assert_allclose(scores.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(scores.std(axis=0), 1.0, atol=1e-6)
    assert scorer.outputs == tuple(f"track_album_name_{genre}" for genre in GENRES)


# --- the preprocessor: fit, model_inputs, the .npz ------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(splits, preprocessor_params):
    train = splits["train"]
    return fit_model_inputs(train, list(CANDIDATE_FEATURES), preprocessor_params, data_sha256=SHA,
                            groups=group_keys(train, "track_id"))


def test_model_inputs_append_the_text_scores(fitted, splits):
    pre, train_inputs = fitted
    assert pre.text_fields == ("track_name", "track_album_name")
    assert pre.output_features[-12:] == tuple(f"{field}_{genre}" for field in pre.text_fields for genre in GENRES)
    inputs = model_inputs(pre, splits["test"])
    assert inputs.dtype == np.float32 and inputs.shape == (len(splits["test"]), len(pre.output_features))
    assert train_inputs.shape == (len(splits["train"]), len(pre.output_features))
    columns = len(pre.output_features) - 12
    # The training rows' own text scores are out of fold; their other inputs are what any song would get.
    np.testing.assert_array_equal(train_inputs[:, :columns], model_inputs(pre, splits["train"])[:, :columns])
    assert not np.allclose(train_inputs[:, columns:], model_inputs(pre, splits["train"])[:, columns:])


def test_a_missing_text_column_is_named(fitted, splits):
    pre, _ = fitted
    with pytest.raises(DataError, match="column 'track_album_name' is missing; the preprocessor scores these "
                                        "columns: track_name, track_album_name$"):
        model_inputs(pre, splits["test"].drop(columns="track_album_name"))


def test_saved_and_loaded_bytes_and_inputs_are_the_same(fitted, splits, tmp_path, preprocessor_params):
    pre, _ = fitted
    save_preprocessor(tmp_path / "a/preprocessor.json", pre)
    again, _ = fit_model_inputs(splits["train"], list(CANDIDATE_FEATURES), preprocessor_params, data_sha256=SHA,
                                groups=group_keys(splits["train"], "track_id"))
    save_preprocessor(tmp_path / "b/preprocessor.json", again)
    for name in ("preprocessor.json", "preprocessor.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    loaded = load_preprocessor(tmp_path / "a/preprocessor.json")
    assert loaded == pre
    np.testing.assert_array_equal(model_inputs(loaded, splits["test"]), model_inputs(pre, splits["test"]))
    with np.load(tmp_path / "a/preprocessor.npz", allow_pickle=False) as arrays:
        text = [name for name in arrays.files if not name.startswith("known.")]
        assert sorted(text) == sorted(f"{field}.{name}" for field in pre.text_fields
                                      for name in ("idf", "log_likelihood"))
        assert all(arrays[name].dtype == np.float32 for name in text)


def test_without_text_fields_the_npz_is_empty_and_the_json_has_no_text(splits, preprocessor_params, tmp_path):
    params = preprocessor_params.model_copy(update={"text": preprocessor_params.text.model_copy(update={"fields": []})})
    pre, inputs = fit_model_inputs(splits["train"], ["tempo", "key"], params, data_sha256=SHA,
                                   groups=splits["train"][TRACK_ID])
    save_preprocessor(tmp_path / "preprocessor.json", pre)
    assert "text" not in json.loads((tmp_path / "preprocessor.json").read_text())
    with np.load(tmp_path / "preprocessor.npz", allow_pickle=False) as arrays:
        assert [name for name in arrays.files if not name.startswith("known.")] == []
    np.testing.assert_array_equal(inputs, model_inputs(load_preprocessor(tmp_path / "preprocessor.json"),
                                                       splits["train"]))


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "preprocessor.json"
    save_preprocessor(path, fitted[0])
    return path


def test_a_missing_npz_says_what_to_do(saved):
    arrays_path(saved).unlink()
    with pytest.raises(BundleError, match=r"preprocessor.npz: not found; it holds the text and id arrays of .*copy it"):
        load_preprocessor(saved)


def test_an_npz_from_another_run_is_refused(saved):
    with np.load(arrays_path(saved), allow_pickle=False) as arrays:
        content = {name: arrays[name] for name in arrays.files}
    content["track_name.idf"] = content["track_name.idf"] * np.float32(2)
    np.savez(arrays_path(saved), **content)
    with pytest.raises(BundleError, match="its sha256 is not the one .*preprocessor.json records"):
        load_preprocessor(saved)


@pytest.mark.parametrize("damage, message", [
    ("pickled object", "not a valid array archive"),
    ("float64", "must be finite float32"),
    ("wrong shape", "must be finite float32 of shape"),
])
def test_a_bad_npz_is_refused_without_running_anything(saved, damage, message):
    with np.load(arrays_path(saved), allow_pickle=False) as arrays:
        content = {name: arrays[name] for name in arrays.files}
    if damage == "pickled object":
        content["track_name.idf"] = np.array([{"a": 1}], dtype=object)
    elif damage == "float64":
        content["track_name.idf"] = content["track_name.idf"].astype(np.float64)
    else:
        content["track_name.log_likelihood"] = content["track_name.log_likelihood"][:, :-1]
    replace_preprocessor_arrays(saved, content)
    with pytest.raises(BundleError, match=message):
        load_preprocessor(saved)


@pytest.mark.parametrize("change, expected", [
    (lambda text: text["fields"].update(playlist_name=text["fields"]["track_name"]),
     r"text\.fields\.playlist_name\b.*: .*'track_name'.*\(got 'playlist_name'\)$"),
    (lambda text: text["fields"]["track_name"].update(scale=[0.0] * 6),
     r"text\.fields\.track_name\.scale\.0: .*greater than 0 \(got 0\.0\) \(and 5 more problems\)$"),
    (lambda text: text["fields"]["track_name"].update(ngram_min=9),
     r"text\.fields\.track_name: ngram_min exceeds ngram_max$"),
    (lambda text: text["fields"]["track_name"]["center"].pop(), r"text\.fields\.track_name\.center: .*at least 6"),
    (lambda text: text.update(arrays="../elsewhere.npz"), r"text\.arrays: .*'\.npz' \(got '\.\./elsewhere\.npz'\)$"),
    (lambda text: text.update(arrays_sha256="0" * 63), r"text\.arrays_sha256: .*\(got '0{63}'\)$"),
    (lambda text: text.update(fields={}), r"text\.fields: .*at least 1"),
    (lambda text: text.update(extra=1), r"text\.extra: unknown key$"),
], ids=["playlist field", "zero scale", "ngram range", "short center", "arrays elsewhere", "bad sha256", "no fields",
        "unknown key"])
def test_a_tampered_text_section_is_refused(saved, change, expected):
    data = json.loads(saved.read_text())
    change(data["text"])
    saved.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"^{re.escape(str(saved))}: not a valid preprocessor: {expected}"):
        load_preprocessor(saved)


# --- params -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    (["playlist_name"], "'playlist_name' is a playlist field"),
    (["track_album_id"], "unknown text field 'track_album_id'"),
    (["track_name", "track_name"], "a field is listed twice"),
])
def test_text_fields_are_checked_naming_the_key(fields, message):
    with pytest.raises(ParamsError, match=rf"preprocess\.text\.fields: .*{message}"):
        parse_params(with_overrides(default_params(), {"preprocess.text.fields": fields}))


def test_artist_is_opt_in():
    assert "track_artist" in TEXT_FIELDS
    assert "track_artist" not in default_params()["preprocess"]["text"]["fields"]
    parse_params(with_overrides(default_params(), {"preprocess.text.fields": ["track_artist"]}))
