"""The baselines stage: seeded, deterministic reference models on the MLP's own processed features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages import baselines
from stages.params import BaselinesParams
from stages.artifacts import ProcessedSplit, write_processed
from spotify_genre.schema import GENRES
from tests.conftest import ROOT

FEATURES = tuple(f"f{i}" for i in range(8))


def _split(rows: int, rng: np.random.Generator, name: str) -> ProcessedSplit:
    labels = rng.integers(0, len(GENRES), rows)
    features = rng.normal(size=(rows, len(FEATURES)))
    features[np.arange(rows), labels] += 2.0  # each genre leans on a feature of its own
    ids = np.array([f"{name}{i:05d}" for i in range(rows)])
    return ProcessedSplit(features.astype(np.float32), labels.astype(np.int64), ids, FEATURES)


def _params(**changes) -> BaselinesParams:
    values = dict(models=["majority", "hist_gradient_boosting", "random_forest"], seed=3, rf_trees=15, threads=2,
                  max_train_rows=None)
    return BaselinesParams(**{**values, **changes})


def test_baselines_are_deterministic_and_the_majority_predicts_the_commonest_class():
    rng = np.random.default_rng(1)
    train, test = _split(900, rng, "train"), _split(200, rng, "test")
    first, seconds = baselines.fit_baselines(train, test, _params())
    again, _ = baselines.fit_baselines(train, test, _params())
    assert first == again
    assert set(seconds) == set(first)
    commonest = np.bincount(train.labels).argmax()
    assert first["majority"]["accuracy"] == pytest.approx(np.mean(test.labels == commonest))
    assert first["hist_gradient_boosting"]["accuracy"] > 2 * first["majority"]["accuracy"]
    assert first["random_forest"]["accuracy"] > 2 * first["majority"]["accuracy"]


def test_baselines_fit_on_a_seeded_sample_of_at_most_max_train_rows():
    params = _params(models=["majority"], seed=0, max_train_rows=100)
    sample = baselines.baseline_rows(1000, params)
    assert len(sample) == 100 and len(set(sample)) == 100 and (np.diff(sample) > 0).all()
    assert (baselines.baseline_rows(1000, params) == sample).all()
    assert (baselines.baseline_rows(1000, params.model_copy(update={"seed": 1})) != sample).any()
    assert (baselines.baseline_rows(80, params) == np.arange(80)).all()
    assert (baselines.baseline_rows(1000, params.model_copy(update={"max_train_rows": None})) == np.arange(1000)).all()


def test_the_stage_writes_rounded_scores_and_the_same_bytes_twice(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(2)
    for name, rows in (("train", 600), ("val", 100), ("test", 150)):
        write_processed(tmp_path / "data" / "processed" / f"{name}.parquet", _split(rows, rng, name))
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert baselines.main([]) == 0
    first = (tmp_path / baselines.BASELINES).read_bytes()
    scores = json.loads(first)
    assert list(scores) == ["majority", "hist_gradient_boosting", "random_forest"]
    assert all(value == round(value, 6) for s in scores.values() for value in s.values())
    assert "baselines: test accuracy majority" in capsys.readouterr().out
    assert baselines.main([]) == 0
    assert (tmp_path / baselines.BASELINES).read_bytes() == first


def test_a_missing_input_is_one_clear_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert baselines.main([]) == 3
    err = capsys.readouterr().err
    assert err == "error: data/processed/train.parquet: not found; run `dvc repro preprocess` first\n"
    assert not (tmp_path / baselines.BASELINES).exists()
