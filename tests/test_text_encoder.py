"""The character-level recurrent encoder of song text (train.text_encoder): its codes, its model, the train stage
with it, the safe bundle, and predict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.artifacts import ProcessedSplit, read_processed, write_processed
from pipeline.artifacts import read_model_inputs, read_split_texts
from spotify_genre.model import build_mlp, predict_proba
from spotify_genre.model.bundle import load_bundle
from spotify_genre.songs.features import OTHER, PADDING, VOCABULARY, encode_characters, with_characters
from spotify_genre.songs.schema import GENRES
from tests.test_train import make_inputs, run_stage

GRU = {"train.text_encoder.kind": "gru", "train.text_encoder.max_chars": 12, "train.text_encoder.hidden": 8,
       "train.text_encoder.embedding_dim": 4, "train.max_epochs": 8, "train.patience": 8}


def test_codes_fold_case_and_accents_pad_and_cut():
    codes = encode_characters(["Beyoncé", "BEYONCE", "", None, "ab☃", "abcdefgh"], max_chars=5)
    assert codes.shape == (6, 5) and codes.dtype == np.float32
    np.testing.assert_array_equal(codes[0], codes[1])
    assert codes[0, 0] == ord("b") - 32 + 2
    assert (codes[2] == PADDING).all() and (codes[3] == PADDING).all()
    np.testing.assert_array_equal(codes[4], [ord("a") - 30, ord("b") - 30, OTHER, PADDING, PADDING])
    np.testing.assert_array_equal(codes[5], [ord(c) - 30 for c in "abcde"])
    assert codes.max() < VOCABULARY


def test_with_characters_appends_each_field_after_the_features():
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    texts = {"track_name": ["ab", "c"], "track_album_name": ["x", ""]}
    encoder = {"fields": ["track_name", "track_album_name"], "max_chars": 2}
    matrix = with_characters(features, texts, encoder)
    assert matrix.shape == (2, 3 + 2 * 2)
    np.testing.assert_array_equal(matrix[:, :3], features)
    np.testing.assert_array_equal(matrix[:, 3:5], encode_characters(texts["track_name"], 2))
    np.testing.assert_array_equal(matrix[:, 5:], encode_characters(texts["track_album_name"], 2))
    assert with_characters(features, texts, None) is features


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_the_text_changes_the_prediction_and_padding_does_not_leak(kind):
    torch.manual_seed(0)
    encoder = {"kind": kind, "fields": ["track_name"], "max_chars": 6, "embedding_dim": 4, "hidden": 5}
    model = build_mlp(3, 6, [8], 0.0, text_encoder=encoder).eval()
    features = np.zeros((3, 3), dtype=np.float32)
    inputs = with_characters(features, {"track_name": ["love", "war", "love"]}, encoder)
    probabilities = predict_proba(model, inputs)
    assert probabilities.shape == (3, 6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(probabilities[0], probabilities[2])
    assert not np.allclose(probabilities[0], probabilities[1])
    # The code is a mean over the characters present: extra padding columns would change nothing.
    longer = {**encoder, "max_chars": 9}
    wider = build_mlp(3, 6, [8], 0.0, text_encoder=longer).eval()
    wider.load_state_dict(model.state_dict())
    np.testing.assert_allclose(predict_proba(wider, with_characters(features, {"track_name": ["love", "war", "love"]},
                                                                    longer)), probabilities, rtol=1e-5)


def _with_texts(root, rng: np.random.Generator) -> None:
    """data/split files with the processed rows' track ids and a title that hints at the genre."""
    words = {0: "drop", 1: "amor", 2: "baby", 3: "soul", 4: "yo", 5: "riff"}
    for name in ("train", "val", "test"):
        split = read_processed(root / f"data/processed/{name}.parquet")
        titles = [f"{words[label]} {rng.integers(100)}" for label in split.labels]
        songs = pd.DataFrame({"track_id": split.track_ids, "track_name": titles,
                              "track_album_name": ["album"] * len(titles)})
        (root / "data/split").mkdir(parents=True, exist_ok=True)
        songs.to_parquet(root / f"data/split/{name}.parquet", index=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_inputs(tmp_path_factory.mktemp("gru"), rows=800, overrides=GRU)
    _with_texts(root, np.random.default_rng(0))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        from stages import train
        from tests.test_train import torch_globals_restored

        with torch_globals_restored():
            assert train.main([]) == 0
    return root


def test_the_train_stage_trains_it_and_the_safe_bundle_reloads_it(trained, monkeypatch):
    monkeypatch.chdir(trained)
    raw = torch.load(trained / "models/model.pt", map_location="cpu", weights_only=True)
    assert raw["architecture"]["text_encoder"] == {"kind": "gru", "fields": ["track_name", "track_album_name"],
                                                   "max_chars": 12, "embedding_dim": 4, "hidden": 8}
    assert any(".encoder.recurrent" in f".{name}" for name in raw["state_dict"])
    val = read_processed(trained / "data/processed/val.parquet")
    bundle = load_bundle(trained / "models/model.pt", feature_names=val.feature_names, class_names=GENRES)
    inputs = read_model_inputs("val", val, bundle.architecture["text_encoder"])
    first, second = predict_proba(bundle.model, inputs), predict_proba(load_bundle(
        trained / "models/model.pt").model, inputs)
    np.testing.assert_array_equal(first, second)
    # The titles name the genre: the model is reading them if blanking them costs it accuracy.
    texts = read_split_texts("val", val, ["track_name", "track_album_name"])
    blank = with_characters(val.features, {field: [""] * len(val.labels) for field in texts},
                            bundle.architecture["text_encoder"])
    accuracy = np.mean(first.argmax(axis=1) == val.labels)
    assert accuracy > np.mean(predict_proba(bundle.model, blank).argmax(axis=1) == val.labels) + 0.1


def test_rows_of_another_split_are_refused_in_one_line(tmp_path, monkeypatch):
    root = make_inputs(tmp_path, rows=200, overrides=GRU)
    _with_texts(root, np.random.default_rng(0))
    monkeypatch.chdir(root)
    val = read_processed(root / "data/processed/val.parquet")
    shuffled = ProcessedSplit(val.features[::-1].copy(), val.labels[::-1].copy(), val.track_ids[::-1].copy(),
                              val.feature_names)
    write_processed(root / "data/processed/val.parquet", shuffled)
    from spotify_genre.errors import DataError

    with pytest.raises(DataError, match=r"data/split/val.parquet: its rows are not those of data/processed/val"):
        read_split_texts("val", shuffled, ["track_name"])


@pytest.mark.slow
def test_spotify_genre_predict_reads_the_characters_the_model_was_trained_on(trained, tmp_path):
    import subprocess
    import sys

    from pipeline.synthetic import synthetic_songs
    from spotify_genre.preprocessing.preprocessor import load_preprocessor
    from spotify_genre.preprocessing.preprocessor import model_inputs as preprocessed

    songs = synthetic_songs(40, seed=3)
    songs.to_csv(tmp_path / "songs.csv", index=False)
    args = [sys.executable, "-m", "spotify_genre.predict.cli", "predict", str(tmp_path / "songs.csv"), "-o",
            str(tmp_path / "out.csv"), "--model", str(trained / "models/model.pt"),
            "--preprocessor", str(trained / "models/preprocessor.json")]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
    predicted = pd.read_csv(tmp_path / "out.csv")
    bundle = load_bundle(trained / "models/model.pt")
    inputs = with_characters(preprocessed(load_preprocessor(trained / "models/preprocessor.json"), songs),
                             songs, bundle.architecture["text_encoder"])
    expected = predict_proba(bundle.model, inputs)
    np.testing.assert_allclose(predicted[list(GENRES)].to_numpy(), expected, atol=1e-6)

    songs.drop(columns=["track_album_name"]).to_csv(tmp_path / "no_album.csv", index=False)
    result = subprocess.run([*args[:4], str(tmp_path / "no_album.csv"), *args[5:]], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"error: column 'track_album_name' is missing; the model {trained / 'models/model.pt'} reads the "
        "characters of track_name, track_album_name"]
