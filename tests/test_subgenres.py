"""Playlist subgenres as a second target (pipeline/subgenres.py, train.subgenre_weight): the vocabulary of
the training rows, the genre sums, the model's mixture head, and the train stage with it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import mlp_fitting as training
from pipeline.artifacts import ProcessedSplit, read_processed, write_processed
from pipeline.params import parse_params
from pipeline.subgenres import fit_subgenres
from pipeline.synthetic import synthetic_songs
from spotify_genre.errors import DataError
from spotify_genre.model import GenreMixture, build_mlp, predict_proba
from spotify_genre.model.bundle import Architecture, load_bundle
from spotify_genre.songs.schema import GENRES
from stages import train
from tests.conftest import default_params, with_overrides
from tests.test_train import QUICK, make_inputs, run_stage, torch_globals_restored

LABELS = np.array([0, 0, 0, 1, 2, 2, 3, 4, 5, 5])
NAMES = np.array(["b", "a", "b", "x", None, "y", "z", "r", "s", "t"], dtype=object)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    with torch_globals_restored():
        yield


def test_the_vocabulary_is_the_training_pairs_by_genre_then_name():
    subgenres = fit_subgenres(LABELS, NAMES)
    assert subgenres.names == ("a", "b", "x", "", "y", "z", "r", "s", "t")
    assert subgenres.genres.tolist() == [0, 0, 1, 2, 2, 3, 4, 5, 5]
    assert subgenres.starts.tolist() == [0, 2, 3, 5, 6, 7]
    assert subgenres.fallback.tolist() == [1, 2, 3, 5, 6, 7]  # "b" is edm's most common; ties go to the first


def test_a_genre_no_training_song_has_still_gets_a_subgenre():
    subgenres = fit_subgenres(np.array([0, 1]), ["a", "b"])
    assert subgenres.genres.tolist() == [0, 1, 2, 3, 4, 5]
    assert subgenres.names == ("a", "b", "", "", "", "")


def test_codes_map_known_pairs_and_send_the_rest_to_the_genres_most_common():
    subgenres = fit_subgenres(LABELS, NAMES)
    assert subgenres.codes(LABELS, NAMES).tolist() == [1, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    # an unseen name, a name seen only under another genre, and a missing one
    assert subgenres.codes(np.array([0, 1, 4]), ["new", "a", None]).tolist() == [1, 2, 6]


def test_genre_probabilities_are_the_sums_of_each_genres_subgenres():
    subgenres = fit_subgenres(LABELS, NAMES)
    probabilities = np.random.default_rng(0).dirichlet(np.ones(len(subgenres.names)), size=5)
    by_hand = np.stack([probabilities[:, subgenres.genres == g].sum(axis=1) for g in range(len(GENRES))], axis=1)
    np.testing.assert_allclose(subgenres.genre_probabilities(probabilities), by_hand, rtol=0, atol=1e-15)


def test_the_mixture_heads_genre_log_probabilities_by_hand():
    genres = [0, 0, 1, 2, 3, 3, 3, 4, 5]
    torch.manual_seed(0)
    model = build_mlp(5, 6, [8], 0.0, subgenres={"names": list("abcdefghi"), "genres": genres}).eval()
    assert isinstance(model, GenreMixture)
    inputs = torch.randn(7, 5)
    with torch.no_grad():
        logits = model.network(inputs).double().numpy()
        genre_log_probabilities = model(inputs).double().numpy()
    subgenre_probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    by_hand = np.stack([subgenre_probabilities[:, np.array(genres) == g].sum(axis=1) for g in range(6)], axis=1)
    np.testing.assert_allclose(np.exp(genre_log_probabilities), by_hand, rtol=1e-5)
    assert predict_proba(model, inputs.numpy()).shape == (7, 6)


@pytest.mark.parametrize("subgenres", [
    {"names": ["a", "b"], "genres": [0, 1]},  # four genres without one
    {"names": ["a"] * 6, "genres": [5, 4, 3, 2, 1, 0]},  # out of order
    {"names": ["a"] * 5, "genres": [0, 1, 2, 3, 4, 5]},  # a name short
])
def test_a_bundle_refuses_subgenres_that_do_not_cover_each_class_in_order(subgenres):
    with pytest.raises(ValueError, match="subgenres"):
        Architecture.model_validate({"n_features": 3, "n_classes": 6, "hidden_sizes": [4], "dropout": 0.0,
                                     "subgenres": subgenres})


def test_processed_splits_carry_the_subgenre_as_a_label_not_a_feature(tmp_path):
    split = ProcessedSplit(np.ones((3, 2), dtype=np.float32), np.array([0, 1, 2]), np.array(["t1", "t2", "t3"]),
                           ("f1", "f2"), np.array(["a", "", "c"]))
    write_processed(tmp_path / "train.parquet", split)
    read = read_processed(tmp_path / "train.parquet")
    assert read.feature_names == ("f1", "f2")
    assert read.subgenres.tolist() == ["a", "", "c"]


@pytest.mark.slow
def test_the_train_stage_learns_subgenres_and_the_bundle_predicts_genres(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, overrides={"train.subgenre_weight": 1.0})
    code, out, err = run_stage(root, monkeypatch, capsys)
    assert code == 0, err
    val = read_processed(root / "data/processed/val.parquet")
    bundle = load_bundle(root / "models/model.pt", feature_names=val.feature_names, class_names=GENRES)
    train_split = read_processed(root / "data/processed/train.parquet")
    vocabulary = fit_subgenres(train_split.labels, train_split.subgenres)
    assert bundle.architecture["subgenres"] == {"names": list(vocabulary.names),
                                                "genres": vocabulary.genres.tolist()}
    assert len(vocabulary.names) > len(GENRES)
    probabilities = predict_proba(bundle.model, val.features)
    assert probabilities.shape == (len(val.labels), len(GENRES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert np.mean(probabilities.argmax(axis=1) == val.labels) > 0.4


def test_the_subgenre_weight_scales_the_subgenre_term_and_zero_is_the_plain_model(tmp_path):
    """The same mixture network, seed and rows under two weights: the recorded (genre) losses differ only if the
    subgenre term reaches the gradients. Weight 0 builds the six-way head, no mixture."""
    root = make_inputs(tmp_path)
    train_split = read_processed(root / "data/processed/train.parquet")
    val_split = read_processed(root / "data/processed/val.parquet")
    losses = {}
    for weight in (0.5, 2.0):
        config = parse_params(with_overrides(default_params(), {**QUICK, "train.max_epochs": 2,
                                                                "train.subgenre_weight": weight})).train
        training.seed_everything(config.seed, 1, torch.device("cpu"))
        model = build_mlp(**training.model_architecture(train_split, config))
        result = training.fit(model, training.on_device(train_split, torch.device("cpu")),
                              training.on_device(val_split, torch.device("cpu")), lr=0.05, momentum=0.9,
                              batch_size=128, config=config, n_classes=len(GENRES),
                              subgenres=training.subgenre_tensor(train_split, config, torch.device("cpu")))
        losses[weight] = [epoch.train_loss for epoch in result.history]
    assert losses[0.5] != losses[2.0]
    without = parse_params(with_overrides(default_params(), {"train.subgenre_weight": 0.0})).train
    assert training.subgenre_config(train_split, without) is None
    assert training.subgenre_tensor(train_split, without, torch.device("cpu")) is None
    assert not isinstance(build_mlp(**training.model_architecture(train_split, without)), GenreMixture)


def test_a_mixture_model_needs_the_rows_subgenres_and_a_plain_one_refuses_them():
    plain = build_mlp(3, 6, [4], 0.0)
    mixture = build_mlp(3, 6, [4], 0.0, subgenres={"names": list("abcdef"), "genres": list(range(6))})
    data = (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    config = parse_params(default_params()).train
    with pytest.raises(ValueError, match="subgenre"):
        training.fit(mixture, data, data, lr=0.1, momentum=0.9, batch_size=2, config=config, n_classes=6)
    with pytest.raises(ValueError, match="subgenre"):
        training.fit(plain, data, data, lr=0.1, momentum=0.9, batch_size=2, config=config, n_classes=6,
                     subgenres=torch.zeros(4, dtype=torch.long))


def test_subgenre_weight_without_the_column_is_one_clear_line(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, overrides={"train.subgenre_weight": 1.0})
    path = root / "data/processed/train.parquet"
    write_processed(path, dataclasses.replace(read_processed(path), subgenres=None))
    code, out, err = run_stage(root, monkeypatch, capsys)
    assert code != 0
    assert err == ("error: data/processed/train.parquet: no subgenre column, which train.subgenre_weight needs; "
                   "run `dvc repro preprocess` again\n")


@pytest.mark.parametrize("name", ["lightgbm", "xgboost"])
def test_a_boosted_peer_can_fit_the_subgenres_and_predict_genres(name):
    from pipeline.peers import fit_peer

    songs = synthetic_songs(1200, 0)
    features = np.random.default_rng(0).normal(size=(1200, 4)).astype(np.float32)
    labels = songs["playlist_genre"].map({genre: i for i, genre in enumerate(GENRES)}).to_numpy(dtype=np.int64)
    features[:, 0] += 3.0 * labels  # something to learn
    subgenres = songs["playlist_subgenre"].fillna("").to_numpy(dtype=str)
    overrides = {f"baselines.{name}.target": "subgenre", f"baselines.{name}.max_rounds": 20}
    params = parse_params(with_overrides(default_params(), overrides)).baselines
    fitted = fit_peer(name, params, features[:900], labels[:900], features[900:], labels[900:], subgenres[:900],
                      subgenres[900:])
    predicted = fitted.predict(features[900:])
    assert predicted.shape == (300,) and set(predicted) <= set(range(len(GENRES)))
    assert np.mean(predicted == labels[900:]) > 0.5
    with pytest.raises(DataError, match=f"baselines.{name}.target: subgenre needs"):
        fit_peer(name, params, features[:900], labels[:900], features[900:], labels[900:])


@pytest.mark.slow
def test_no_model_reads_the_test_rows_subgenres_and_the_mlp_not_the_validation_rows(tmp_path, monkeypatch, capsys):
    """The subgenres are labels: the MLP learns the training rows' alone, the trees' early stopping reads the
    validation rows' too (as it reads their genres), and the test rows' are never read."""
    from stages.baselines import fit_baselines

    root = make_inputs(tmp_path / "a", overrides={"train.subgenre_weight": 1.0})
    assert run_stage(root, monkeypatch, capsys)[0] == 0
    scrambled = make_inputs(tmp_path / "b", overrides={"train.subgenre_weight": 1.0})
    path = scrambled / "data/processed/val.parquet"
    val = read_processed(path)
    write_processed(path, ProcessedSplit(val.features, val.labels, val.track_ids, val.feature_names,
                                         np.random.default_rng(0).permutation(val.subgenres)))
    assert run_stage(scrambled, monkeypatch, capsys)[0] == 0
    assert (root / "models/model.pt").read_bytes() == (scrambled / "models/model.pt").read_bytes()

    train_split, val_split = (read_processed(root / f"data/processed/{name}.parquet") for name in ("train", "val"))
    params = parse_params(with_overrides(default_params(), {"baselines.models": ["xgboost"],
                                                            "baselines.xgboost.target": "subgenre",
                                                            "baselines.xgboost.max_rounds": 30})).baselines
    reports = []
    for test_subgenres in (val_split.subgenres, np.full(len(val_split.labels), "nonsense")):
        test = ProcessedSplit(val_split.features, val_split.labels, val_split.track_ids, val_split.feature_names,
                              test_subgenres)
        report, predictions, _ = fit_baselines({"train": train_split, "val": val_split, "test": test}, params)
        reports.append((report, predictions["xgboost"].tolist()))
    assert reports[0] == reports[1]


def test_a_mixture_head_refuses_subgenres_out_of_genre_order():
    with pytest.raises(ValueError, match="in order"):
        build_mlp(3, 6, [4], 0.0, subgenres={"names": list("abcdefg"), "genres": [0, 1, 0, 2, 3, 4, 5]})
