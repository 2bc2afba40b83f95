"""The baselines stage: seeded, deterministic peers on the MLP's own processed features, early-stopped on the
validation split and never fitted on a test row."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import yaml

from pipeline.artifacts import (BASELINE_PREDICTIONS, ProcessedSplit, read_baseline_predictions, read_processed,
                                write_baseline_predictions, write_processed)
from pipeline.metrics import label_metrics, rounded
from pipeline.params import BaselinesParams
from spotify_genre.errors import DataError
from spotify_genre.songs.schema import GENRES
from stages import baselines
from tests.conftest import ROOT, default_params

FEATURES = tuple(f"f{i}" for i in range(8))
PEERS = ["majority", "hist_gradient_boosting", "lightgbm", "xgboost"]
# Small and quick: a few dozen rounds before the validation loss stops improving.
QUICK = {
    "lightgbm": {"target": "genre", "learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 10,
                 "feature_fraction": 0.75, "bagging_fraction": 0.75, "lambda_l2": 1.0, "max_bin": 255,
                 "max_rounds": 400, "early_stopping_rounds": 10},
    "xgboost": {"target": "genre", "learning_rate": 0.1, "max_depth": 4, "min_child_weight": 1.0, "subsample": 0.8,
                "colsample_bytree": 0.8, "reg_lambda": 1.0, "max_bin": 256, "max_rounds": 400,
                "early_stopping_rounds": 10},
}


def _split(rows: int, rng: np.random.Generator, name: str) -> ProcessedSplit:
    labels = rng.integers(0, len(GENRES), rows)
    features = rng.normal(size=(rows, len(FEATURES)))
    features[np.arange(rows), labels] += 1.5  # each genre leans on a feature of its own
    ids = np.array([f"{name}{i:05d}" for i in range(rows)])
    return ProcessedSplit(features.astype(np.float32), labels.astype(np.int64), ids, FEATURES)


def _splits(seed: int = 1, rows: tuple[int, int, int] = (900, 300, 200)) -> dict[str, ProcessedSplit]:
    rng = np.random.default_rng(seed)
    return {name: _split(count, rng, name) for name, count in zip(("train", "val", "test"), rows)}


def _params(**changes) -> BaselinesParams:
    values = dict(models=PEERS, seed=3, rf_trees=15, threads=2, jobs=2, max_train_rows=None, **QUICK)
    return BaselinesParams(**{**values, **changes})


def _with_labels(split: ProcessedSplit, labels: np.ndarray) -> ProcessedSplit:
    return ProcessedSplit(split.features, labels, split.track_ids, split.feature_names)


@pytest.fixture(scope="module")
def fitted():
    splits = _splits()
    return splits, baselines.fit_baselines(splits, _params())


@pytest.mark.slow
def test_baselines_are_deterministic_and_the_majority_predicts_the_commonest_class(fitted):
    splits, (report, predictions, seconds) = fitted
    again, predicted_again, _ = baselines.fit_baselines(splits, _params())
    assert report == again
    assert all(np.array_equal(predictions[name], predicted_again[name]) for name in PEERS)
    assert list(report["models"]) == list(predictions) == list(seconds) == PEERS
    models = report["models"]
    commonest = np.bincount(splits["train"].labels).argmax()
    assert models["majority"]["test"]["accuracy"] == round(np.mean(splits["test"].labels == commonest), 6)
    assert models["majority"]["iterations"] is None
    for name in PEERS[1:]:
        assert models[name]["val"]["accuracy"] > 2 * models["majority"]["val"]["accuracy"], name
        assert models[name]["test"]["accuracy"] > 2 * models["majority"]["test"]["accuracy"], name


def test_peers_fitted_side_by_side_give_what_each_gives_alone(fitted):
    splits, (report, predictions, _) = fitted
    for jobs in (1, 4):
        again, predicted_again, _ = baselines.fit_baselines(splits, _params(jobs=jobs))
        assert again == report, jobs
        assert all(np.array_equal(predicted_again[name], predictions[name]) for name in PEERS), jobs


def test_a_failing_peer_gives_up_the_boosted_fits_beside_it_at_their_next_round(monkeypatch):
    """xgboost fails at once while lightgbm, started beside it, could run 100,000 rounds: the stage raises the
    failure as soon as lightgbm has noticed, instead of waiting for it."""
    from pipeline import peers

    real_fit = peers.fit_peer
    seen = {}
    lightgbm_started = threading.Event()

    def fit_peer(name, *args, cancelled, **kwargs):
        if name == "xgboost":
            assert lightgbm_started.wait(60)
            raise DataError("baselines.xgboost: broken on purpose")
        lightgbm_started.set()
        try:
            return real_fit(name, *args, cancelled=cancelled, **kwargs)
        except peers.Cancelled:
            seen[name] = "cancelled"
            raise

    monkeypatch.setattr(baselines, "fit_peer", fit_peer)
    endless = {**QUICK["lightgbm"], "max_rounds": 100_000, "early_stopping_rounds": 100_000}
    params = _params(models=["lightgbm", "xgboost"], lightgbm=endless, jobs=2)
    with pytest.raises(DataError, match="broken on purpose"):
        baselines.fit_baselines(_splits(), params)
    assert seen == {"lightgbm": "cancelled"}


def test_the_boosted_trees_stop_early_on_the_validation_rows(fitted):
    _, (report, _, _) = fitted
    for name in ("lightgbm", "xgboost"):
        rounds, settings = report["models"][name]["iterations"], QUICK[name]
        assert 1 <= rounds < settings["max_rounds"] - settings["early_stopping_rounds"], name


@pytest.mark.slow
def test_no_test_row_reaches_the_fit_and_the_validation_rows_do(fitted):
    """Test labels shuffled: every model, its rounds and its test predictions stay the same, so nothing was fitted
    or stopped on test rows (a fit on them, or early stopping on them, would change both). Other validation rows
    change where the boosted trees stop, so early stopping does read the validation split."""
    splits, (report, predictions, _) = fitted
    shuffled = np.random.default_rng(0).permutation(splits["test"].labels)
    poisoned_splits = {**splits, "test": _with_labels(splits["test"], shuffled)}
    poisoned, poisoned_predictions, _ = baselines.fit_baselines(poisoned_splits, _params())
    for name in PEERS:
        assert poisoned["models"][name]["iterations"] == report["models"][name]["iterations"]
        assert poisoned["models"][name]["val"] == report["models"][name]["val"]
        assert np.array_equal(poisoned_predictions[name], predictions[name]), name
    assert poisoned["models"]["lightgbm"]["test"] != report["models"]["lightgbm"]["test"]

    other_val = _split(300, np.random.default_rng(7), "val")
    moved, _, _ = baselines.fit_baselines({**splits, "val": other_val}, _params(models=["lightgbm", "xgboost"]))
    for name in ("lightgbm", "xgboost"):
        assert moved["models"][name]["iterations"] != report["models"][name]["iterations"], name


def test_the_strongest_is_chosen_on_validation_macro_f1_never_the_majority():
    def scores(val: float, test: float) -> dict:
        return {"val": {"accuracy": val, "f1_macro": val}, "test": {"accuracy": test, "f1_macro": test}}

    models = {"majority": scores(0.9, 0.9), "lightgbm": scores(0.60, 0.70), "xgboost": scores(0.62, 0.50)}
    assert baselines.strongest(models) == "xgboost"
    assert baselines.strongest({**models, "hist_gradient_boosting": scores(0.62, 0.1)}) == "hist_gradient_boosting"
    assert baselines.strongest({"majority": scores(0.2, 0.2)}) is None


def test_random_forest_still_runs_when_asked_for():
    splits = _splits()
    report, predictions, _ = baselines.fit_baselines(splits, _params(models=["majority", "random_forest"]))
    forest = report["models"]["random_forest"]
    assert forest["iterations"] is None and predictions["random_forest"].shape == (200,)
    assert forest["test"]["accuracy"] > 2 * report["models"]["majority"]["test"]["accuracy"]
    assert report["strongest"] == "random_forest"


def test_baselines_fit_on_a_seeded_sample_of_at_most_max_train_rows():
    params = _params(models=["majority"], seed=0, max_train_rows=100)
    sample = baselines.baseline_rows(1000, params)
    assert len(sample) == 100 and len(set(sample)) == 100 and (np.diff(sample) > 0).all()
    assert (baselines.baseline_rows(1000, params) == sample).all()
    assert (baselines.baseline_rows(1000, params.model_copy(update={"seed": 1})) != sample).any()
    assert (baselines.baseline_rows(80, params) == np.arange(80)).all()
    assert (baselines.baseline_rows(1000, params.model_copy(update={"max_train_rows": None})) == np.arange(1000)).all()


def _project(tmp_path, monkeypatch, **baseline_changes) -> None:
    for name, split in _splits(2, (600, 150, 150)).items():
        write_processed(tmp_path / "data" / "processed" / f"{name}.parquet", split)
    params = default_params()
    params["baselines"].update({**QUICK, **baseline_changes})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
def test_the_stage_writes_scores_that_its_test_predictions_give_and_the_same_bytes_twice(tmp_path, monkeypatch,
                                                                                        capsys):
    _project(tmp_path, monkeypatch)
    assert baselines.main([]) == 0
    report_bytes, predictions_bytes = baselines.BASELINES.read_bytes(), BASELINE_PREDICTIONS.read_bytes()
    report = json.loads(report_bytes)
    assert list(report) == ["models", "strongest"] and list(report["models"]) == PEERS
    assert report == rounded(report)
    test = read_processed("data/processed/test.parquet")
    predictions = read_baseline_predictions(test.track_ids)
    assert list(predictions) == PEERS
    for name, scores in report["models"].items():
        assert list(scores) == ["val", "test", "iterations"]
        assert scores["test"] == rounded(label_metrics(test.labels, predictions[name], len(GENRES)))
    val_f1 = {name: s["val"]["f1_macro"] for name, s in report["models"].items() if name != "majority"}
    assert report["strongest"] == max(sorted(val_f1), key=val_f1.get)
    assert capsys.readouterr().out.startswith("baselines: validation macro-F1 majority ")
    assert json.loads((tmp_path / baselines.TIMING).read_text()).keys() == set(PEERS)
    assert baselines.main([]) == 0
    assert baselines.BASELINES.read_bytes() == report_bytes
    assert BASELINE_PREDICTIONS.read_bytes() == predictions_bytes


@pytest.mark.parametrize("section, key, value, expected", [
    ("lightgbm", "num_leafs", 31, "baselines.lightgbm.num_leafs: unknown key"),
    ("lightgbm", "num_leaves", "31", "baselines.lightgbm.num_leaves: Input should be a valid integer"),
    ("xgboost", "max_depth", 6.0, "baselines.xgboost.max_depth: Input should be a valid integer"),
    ("xgboost", "subsample", 1.5, "baselines.xgboost.subsample: Input should be less than or equal to 1"),
    (None, "models", ["catboost"], "baselines.models.0: Input should be"),
])
def test_bad_baseline_params_are_one_clear_line(tmp_path, monkeypatch, capsys, section, key, value, expected):
    _project(tmp_path, monkeypatch)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (params["baselines"][section] if section else params["baselines"])[key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert baselines.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: params.yaml: {expected}") and len(err.splitlines()) == 1
    assert not baselines.BASELINES.exists() and not BASELINE_PREDICTIONS.exists()


def test_a_missing_input_is_one_clear_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert baselines.main([]) == 3
    err = capsys.readouterr().err
    assert err == "error: data/processed/train.parquet: not found; run `dvc repro preprocess` first\n"
    assert not (tmp_path / baselines.BASELINES).exists()


def test_the_predictions_reader_names_the_file_and_the_stage_to_rerun(tmp_path):
    path = tmp_path / "predictions.parquet"
    ids = np.array(["a", "b", "c"])
    with pytest.raises(DataError, match=r"predictions.parquet: not found; run `dvc repro baselines` first"):
        read_baseline_predictions(path=path)
    write_baseline_predictions(path, ids, {"lightgbm": np.array([0, 5, 2])})
    assert read_baseline_predictions(ids, path)["lightgbm"].tolist() == [0, 5, 2]
    with pytest.raises(DataError, match=r"its rows are not those of data/processed/test.parquet; run `dvc repro "
                                        r"baselines` again"):
        read_baseline_predictions(ids[::-1], path)
    write_baseline_predictions(path, ids, {"xgboost": np.array([0, 6, 2])})
    with pytest.raises(DataError, match=r"column 'xgboost': expected class indices 0..5 \(int8\)"):
        read_baseline_predictions(path=path)
