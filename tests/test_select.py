"""The select stage: the ANOVA table is scikit-learn's, eta squared is right, the rule is applied as written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.feature_selection import f_classif

from pipeline.params import SelectParams
from pipeline.synthetic import synthetic_songs
from spotify_genre.errors import ParamsError
from spotify_genre.songs.features import CANDIDATE_FEATURES, candidate_features
from spotify_genre.songs.schema import LABEL, PLAYLIST_FIELDS, RELEASE_DATE
from stages import select
from tests.conftest import ROOT

ALL = SelectParams(candidates=list(CANDIDATE_FEATURES), k=None, max_p_value=1.0, min_eta_squared=0.0)


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    songs = synthetic_songs(4000, seed=5)
    songs.loc[songs.index[::50], RELEASE_DATE] = np.nan
    return songs


def test_table_equals_sklearn_f_classif_on_the_same_rows(train):
    features = candidate_features(train, CANDIDATE_FEATURES)
    assert features.isna().any().any(), "the fixture must have missing values, to exercise the imputation"
    imputed = features.fillna(features.median())
    f_expected, p_expected = f_classif(imputed.to_numpy(), train[LABEL].to_numpy())

    report = select.select_features(train, ALL)
    by_name = {row["feature"]: row for row in report["features"]}
    for i, name in enumerate(CANDIDATE_FEATURES):
        assert by_name[name]["f_statistic"] == select.significant(f_expected[i])
        assert by_name[name]["p_value"] == select.significant(p_expected[i])
    table = select.anova_table(imputed, train[LABEL])
    assert table["f_statistic"].to_numpy().tobytes() == f_expected.tobytes()
    assert table["p_value"].to_numpy().tobytes() == p_expected.tobytes()
    assert report["n_train_rows"] == len(train)
    assert "median" in report["rule"]["missing_values"]


@pytest.mark.parametrize("order", ["C", "F"])
def test_the_stages_f_classif_is_sklearns_to_the_bit(train, order):
    """select.f_classif repeats scikit-learn's computation (so the stage need not import it): the same bits for
    both memory layouts (a column sum runs in another order on each), a constant column's NaN included."""
    features = candidate_features(train, CANDIDATE_FEATURES)
    values = np.asarray(features.fillna(features.median()).to_numpy(dtype=np.float64), order=order)
    values[:, 3] = 2.5  # constant: F is 0/0
    labels = train[LABEL].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"), pytest.warns(UserWarning, match="are constant"):
        expected = f_classif(values, labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        got = select.f_classif(values, labels)
    for mine, theirs in zip(got, expected):
        assert mine.tobytes() == theirs.tobytes()
    assert np.isnan(got[0][3])


def test_the_stage_does_not_import_scikit_learn(tmp_path):
    """What the stage's own f_classif saves: neither scikit-learn nor scipy.stats is loaded to run it."""
    import subprocess
    import sys

    code = ("import sys, stages.select, numpy as np; stages.select.f_classif(np.arange(8.0).reshape(4, 2), "
            "np.array(['a', 'b'] * 2, dtype=object)); print(sorted({'sklearn', 'scipy.stats'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_eta_squared_by_hand():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0])
    labels = np.array(["a", "a", "a", "b", "b", "b", "c"])
    mean = values.mean()
    between = 3 * (2.0 - mean) ** 2 + 3 * (5.0 - mean) ** 2 + 1 * (10.0 - mean) ** 2
    total = ((values - mean) ** 2).sum()
    assert select.eta_squared(values, labels) == pytest.approx(between / total, rel=1e-12)
    assert select.eta_squared(np.full(4, 3.0), np.array(["a", "a", "b", "b"])) == 0.0


def test_eta_squared_agrees_with_f(train):
    """eta^2 = F (k - 1) / (F (k - 1) + n - k): a second, independent route to the same number."""
    table = select.anova_table(candidate_features(train, ["danceability", "tempo"]), train[LABEL])
    k, n = train[LABEL].nunique(), len(train)
    implied = table["f_statistic"] * (k - 1) / (table["f_statistic"] * (k - 1) + n - k)
    np.testing.assert_allclose(table["eta_squared"], implied, rtol=1e-9)


def test_ranked_by_f_and_top_k_selected(train):
    report = select.select_features(train, ALL.model_copy(update={"k": 4}))
    f_values = [row["f_statistic"] for row in report["features"]]
    assert f_values == sorted(f_values, reverse=True)
    assert [row["rank"] for row in report["features"]] == list(range(1, len(CANDIDATE_FEATURES) + 1))
    assert report["selected"] == [row["feature"] for row in report["features"][:4]]
    assert [row["selected"] for row in report["features"]] == [True] * 4 + [False] * (len(CANDIDATE_FEATURES) - 4)


def test_thresholds_then_k(train):
    table = select.anova_table(select.impute_median(candidate_features(train, CANDIDATE_FEATURES)), train[LABEL])
    p_cut, eta_cut = 1e-6, 0.01
    passing = table[(table["p_value"] <= p_cut) & (table["eta_squared"] >= eta_cut)]
    passing = passing.sort_values("f_statistic", ascending=False)["feature"].tolist()
    assert 2 < len(passing) < len(CANDIDATE_FEATURES), "the cut-offs must split the candidates for this test"

    rule = ALL.model_copy(update={"max_p_value": p_cut, "min_eta_squared": eta_cut})
    assert select.select_features(train, rule)["selected"] == passing
    assert select.select_features(train, rule.model_copy(update={"k": 2}))["selected"] == passing[:2]
    assert select.select_features(train, rule.model_copy(update={"k": 100}))["selected"] == passing


def test_no_feature_passing_is_a_params_error(train):
    rule = ALL.model_copy(update={"min_eta_squared": 0.99})
    with pytest.raises(ParamsError, match="select.min_eta_squared"):
        select.select_features(train, rule)


def test_constant_feature_scores_zero_not_nan(train):
    flat = train.assign(mode=1)
    report = select.select_features(flat, ALL)
    row = next(row for row in report["features"] if row["feature"] == "mode")
    assert (row["f_statistic"], row["p_value"], row["eta_squared"]) == (0.0, 1.0, 0.0)
    assert row["rank"] == len(CANDIDATE_FEATURES)
    json.dumps(report, allow_nan=False)


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stage_reads_only_the_training_split_and_is_deterministic(stage_dir, train):
    (stage_dir / "data/split").mkdir(parents=True)
    train.to_parquet(stage_dir / "data/split/train.parquet")

    assert select.main([]) == 0
    report_bytes = (stage_dir / "reports/anova.json").read_bytes()
    plot = pd.read_csv(stage_dir / "reports/plots/anova.csv")
    report = json.loads(report_bytes)
    assert list(plot.columns) == ["feature", "f_statistic", "eta_squared", "selected"]
    assert plot["feature"].tolist() == [row["feature"] for row in report["features"]]
    assert plot.loc[plot["selected"], "feature"].tolist() == report["selected"]
    assert report["rule"]["k"] == yaml.safe_load((ROOT / "params.yaml").read_text())["select"]["k"]

    assert select.main([]) == 0
    assert (stage_dir / "reports/anova.json").read_bytes() == report_bytes


@pytest.mark.parametrize("field", PLAYLIST_FIELDS)
def test_playlist_field_as_candidate_is_refused(tmp_path, monkeypatch, capsys, field):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["select"]["candidates"].append(field)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert select.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: params.yaml: select.candidates:")
    assert repr(field) in err and "playlist field" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()
