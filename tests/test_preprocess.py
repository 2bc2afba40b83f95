"""The preprocess stage and the shared preprocessor: fitted on training rows only, saved as checked JSON."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.feature_selection import f_classif
from sklearn.preprocessing import RobustScaler, StandardScaler

from pipeline.artifacts import SPLITS, read_processed
from pipeline.params import IdParams, PreprocessParams, TextParams, load_params
from pipeline.preprocessor_fitting import encode_labels, fit_preprocessor
from pipeline.synthetic import synthetic_songs
from spotify_genre.errors import BundleError, DataError, ParamsError
from spotify_genre.preprocessing.preprocessor import (FORMAT_VERSION, NumericColumn, Preprocessor, load_preprocessor,
                                                      save_preprocessor)
from spotify_genre.songs.features import CANDIDATE_FEATURES, candidate_features
from spotify_genre.songs.schema import (GENRES, LABEL, PLAYLIST_FIELDS, RELEASE_DATE, TRACK_ID, read_songs,
                                        validate_songs)
from stages import preprocess, select, split
from tests.conftest import ROOT, make_project, needs_real_data, real_zip, run, write_params

SHA = "ab" * 32
NUMERIC = ["danceability", "loudness", "speechiness", "tempo", "release_year", "release_month"]
NO_TEXT = TextParams(fields=[], buckets=1024, ngram_min=2, ngram_max=4, alpha=0.1, folds=5)
NO_IDS = IdParams(fields=[], alpha=1.0, folds=5)
PARAMS = PreprocessParams(categorical="onehot", scaler="standard", log_transform=["speechiness"], text=NO_TEXT,
                          ids=NO_IDS)


@pytest.fixture(scope="module")
def splits() -> dict[str, pd.DataFrame]:
    songs = synthetic_songs(3000, seed=11)
    songs.loc[songs.index[::40], RELEASE_DATE] = np.nan
    params = load_params(ROOT / "params.yaml").split.model_copy(update={"missing": "impute"})
    return split.split_songs(songs, params)[0]


@pytest.mark.parametrize("scaler, reference", [("standard", StandardScaler), ("robust", RobustScaler)])
def test_numeric_scaling_matches_sklearn_fitted_on_train(splits, scaler, reference):
    params = PARAMS.model_copy(update={"scaler": scaler})
    train = candidate_features(splits["train"], NUMERIC)
    val = candidate_features(splits["val"], NUMERIC)
    assert train["release_month"].isna().any() and val["release_month"].isna().any()
    got = fit_preprocessor(train, params, data_sha256=SHA).transform(val)
    for i, name in enumerate(NUMERIC):
        median = train[name].median()
        prepare = np.log1p if name in params.log_transform else np.asarray
        fitted = reference().fit(prepare(train[[name]].fillna(median).to_numpy()))
        expected = fitted.transform(prepare(val[[name]].fillna(median).to_numpy()))[:, 0]
        np.testing.assert_allclose(got[:, i], expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_log1p_by_hand():
    train = pd.DataFrame({"speechiness": [0.0, 0.1, 0.3, 0.6]})
    pre = fit_preprocessor(train, PARAMS, data_sha256=SHA)
    logged = np.log1p(train["speechiness"].to_numpy())
    column = pre.to_dict()["numeric"]["speechiness"]
    assert column["log1p"] is True
    assert column["center"] == pytest.approx(logged.mean()) and column["scale"] == pytest.approx(logged.std())
    new = pd.DataFrame({"speechiness": [0.2, np.nan]})
    median = np.log1p(np.median(train["speechiness"]))
    expected = (np.log1p([0.2]).tolist() + [median] - logged.mean()) / logged.std()
    np.testing.assert_allclose(pre.transform(new)[:, 0], expected.astype(np.float32), rtol=1e-6)


def test_log1p_of_a_negative_feature_is_refused_naming_the_key(splits):
    params = PARAMS.model_copy(update={"log_transform": ["loudness"]})
    with pytest.raises(ParamsError, match=r"preprocess\.log_transform: 'loudness' has negative"):
        fit_preprocessor(candidate_features(splits["train"], ["loudness"]), params, data_sha256=SHA)


def test_onehot_columns_and_unseen_category(splits):
    names = ["key", "mode", "release_date_precision"]
    pre = fit_preprocessor(candidate_features(splits["train"], names), PARAMS, data_sha256=SHA)
    train_keys = sorted(int(k) for k in splits["train"]["key"].unique())
    assert pre.output_features[: len(train_keys)] == tuple(f"key_{k}" for k in train_keys)
    assert "mode_0" in pre.output_features and "release_date_precision_2" in pre.output_features
    rows = pd.DataFrame({"key": [5.0, -1.0], "mode": [1.0, 0.0], "release_date_precision": [np.nan, 0.0]})
    out = pre.transform(rows)
    assert out[0, pre.output_features.index("key_5")] == 1.0 and out[0, : len(train_keys)].sum() == 1.0
    assert out[1, : len(train_keys)].sum() == 0.0, "a key never seen in training encodes as all zeros"
    most_frequent = int(candidate_features(splits["train"], names)["release_date_precision"].mode()[0])
    assert out[0, pre.output_features.index(f"release_date_precision_{most_frequent}")] == 1.0


def test_ordinal_encoding(splits):
    names = ["key", "mode"]
    pre = fit_preprocessor(candidate_features(splits["train"], names),
                           PARAMS.model_copy(update={"categorical": "ordinal"}), data_sha256=SHA)
    assert pre.output_features == ("key", "mode")
    out = pre.transform(pd.DataFrame({"key": [0.0, 7.0, 11.0, -1.0], "mode": [1.0, 0.0, 1.0, 0.0]}))
    np.testing.assert_array_equal(out, np.array([[0, 1], [7, 0], [11, 1], [-1, 0]], dtype=np.float32))


def test_constant_feature_gets_unit_scale_not_nan():
    pre = fit_preprocessor(pd.DataFrame({"tempo": [120.0] * 5}), PARAMS, data_sha256=SHA)
    assert pre.to_dict()["numeric"]["tempo"]["scale"] == 1.0
    assert np.isfinite(pre.transform(pd.DataFrame({"tempo": [120.0, 90.0]}))).all()


def test_labels_in_the_fixed_class_order():
    np.testing.assert_array_equal(encode_labels(pd.Series(["rock", "edm", "r&b"])), [5, 0, 3])
    with pytest.raises(DataError, match="'jazz' is not one of"):
        encode_labels(pd.Series(["pop", "jazz"]))


def test_output_is_float32_in_output_feature_order(splits):
    selected = list(CANDIDATE_FEATURES)
    pre, processed = preprocess.preprocess_splits(splits, selected, PARAMS, SHA)
    for name, data in processed.items():
        assert data.features.dtype == np.float32 and np.isfinite(data.features).all()
        assert data.features.shape == (len(splits[name]), len(pre.output_features))
        assert data.feature_names == pre.output_features
        np.testing.assert_array_equal(data.track_ids, splits[name][TRACK_ID].to_numpy(dtype=str))
        np.testing.assert_array_equal(data.labels, [GENRES.index(g) for g in splits[name][LABEL]])


# --- Nothing is learned from validation or test rows ---------------------------------------------------------

def _stage_inputs(folder, splits: dict[str, pd.DataFrame], selected: list[str]) -> None:
    (folder / "data/split").mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(folder / f"data/split/{name}.parquet")
    (folder / "reports").mkdir(exist_ok=True)
    (folder / "reports/split.json").write_text(json.dumps({"raw_sha256": SHA}))
    (folder / "reports/anova.json").write_text(json.dumps({"selected": selected}))


def _wreck(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The same rows with every feature and label changed beyond recognition."""
    wrecked = frame.copy()
    for name in ("danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence"):
        wrecked[name] = rng.random(len(frame)) ** 8
    wrecked["loudness"] = -60.0 + rng.random(len(frame))
    wrecked["tempo"] = rng.uniform(0, 300, len(frame))
    wrecked["duration_ms"] = rng.integers(1, 10_000_000, len(frame))
    wrecked["track_popularity"] = 100
    wrecked["key"] = -1
    wrecked["mode"] = 1 - frame["mode"]
    wrecked[RELEASE_DATE] = np.where(rng.random(len(frame)) < 0.5, "1901-02", None)
    for name in ("track_name", "track_album_name", "track_artist"):
        wrecked[name] = [f"zq{value}xv" for value in rng.integers(0, 10**6, len(frame))]
    wrecked[LABEL] = GENRES[0]
    return wrecked


def test_validation_and_test_rows_change_no_statistic(tmp_path, monkeypatch, splits):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    _stage_inputs(tmp_path, splits, list(CANDIDATE_FEATURES))
    assert preprocess.main([]) == 0
    fitted = ("models/preprocessor.json", "models/preprocessor.npz", "data/processed/train.parquet")
    assert load_preprocessor(tmp_path / fitted[0]).text, "the default params score text: this test must cover it"
    outputs = {path: (tmp_path / path).read_bytes() for path in (*fitted, "data/processed/val.parquet")}

    rng = np.random.default_rng(0)
    _stage_inputs(tmp_path, {**splits, "val": _wreck(splits["val"], rng), "test": _wreck(splits["test"], rng)},
                  list(CANDIDATE_FEATURES))
    assert preprocess.main([]) == 0
    for path in fitted:
        assert (tmp_path / path).read_bytes() == outputs[path], path
    assert (tmp_path / "data/processed/val.parquet").read_bytes() != outputs["data/processed/val.parquet"], \
        "the wrecked rows must change the validation output, or this test proves nothing"


def test_training_rows_do_change_the_statistics(splits):
    """The converse of the test above: the preprocessor really is fitted on what it is given as training rows."""
    selected = list(CANDIDATE_FEATURES)
    fitted = preprocess.preprocess_splits(splits, selected, PARAMS, SHA)[0].to_dict()
    moved = {**splits, "train": _wreck(splits["train"], np.random.default_rng(1))}
    assert preprocess.preprocess_splits(moved, selected, PARAMS, SHA)[0].to_dict()["numeric"] != fitted["numeric"]


def test_stage_writes_what_the_processed_format_reads(tmp_path, monkeypatch, splits):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    _stage_inputs(tmp_path, splits, ["release_year", "key", "speechiness"])
    assert preprocess.main([]) == 0
    pre = load_preprocessor("models/preprocessor.json")
    assert pre.data_sha256 == SHA and pre.input_features == ("release_year", "key", "speechiness")
    for name in SPLITS:
        data = read_processed(f"data/processed/{name}.parquet")
        assert data.feature_names == pre.output_features and len(data.labels) == len(splits[name])


def test_stage_without_anova_report_says_what_to_run(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert preprocess.main([]) == 3
    assert "reports/anova.json: not found; run `dvc repro select` first" in capsys.readouterr().err


# --- The JSON on disk ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(splits) -> Preprocessor:
    return fit_preprocessor(candidate_features(splits["train"], list(CANDIDATE_FEATURES)), PARAMS, data_sha256=SHA)


def test_json_round_trip(tmp_path, fitted, splits):
    path = tmp_path / "models/preprocessor.json"
    save_preprocessor(path, fitted)
    data = json.loads(path.read_text())
    assert data["format_version"] == FORMAT_VERSION and data["classes"] == list(GENRES)
    assert data["output_features"] == list(fitted.output_features)
    loaded = load_preprocessor(path)
    assert loaded == fitted
    # What the model bundle records and load_bundle checks: the sha256 of the JSON's bytes.
    assert fitted.sha256 is None and loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    features = candidate_features(splits["test"], list(CANDIDATE_FEATURES))
    np.testing.assert_array_equal(loaded.transform(features), fitted.transform(features))
    assert sorted(p.name for p in path.parent.iterdir()) == ["preprocessor.json", "preprocessor.npz"], \
        "no temporary file left behind"


def _tamper(data: dict, change: str) -> None:
    if change == "version":
        data["format_version"] = 2
    elif change == "missing key":
        del data["numeric"]
    elif change == "extra key":
        data["pickle"] = "cos\nsystem\n"
    elif change == "scale as text":
        data["numeric"]["tempo"]["scale"] = "1.0"
    elif change == "zero scale":
        data["numeric"]["tempo"]["scale"] = 0
    elif change == "log1p as text":
        data["numeric"]["tempo"]["log1p"] = "yes"
    elif change == "categories":
        data["categorical"]["key"]["categories"] = [0, 1.5]
    elif change == "categories repeated":
        data["categorical"]["key"]["categories"] = [0, 0, 1]
    elif change == "no categories":
        data["categorical"]["key"]["categories"] = []
    elif change == "encoding":
        data["categorical"]["key"]["encoding"] = "hash"
    elif change == "classes":
        data["classes"] = list(reversed(data["classes"]))
    elif change == "outputs":
        data["output_features"] = data["output_features"][:-1]
    elif change == "playlist input":
        data["input_features"].append(PLAYLIST_FIELDS[0])
    elif change == "hash":
        data["data_sha256"] = "not a hash"


# Each refusal is one line: the file, then the dotted key that is wrong, then what was expected (and what was found).
@pytest.mark.parametrize("change, expected", [
    ("version", r"format_version: .*1 \(got 2\)$"),
    ("missing key", r"numeric: missing key$"),
    ("extra key", r"pickle: unknown key$"),
    ("scale as text", r"numeric\.tempo\.scale: .*number \(got '1\.0'\)$"),
    ("zero scale", r"numeric\.tempo\.scale: .*greater than 0 \(got 0\)$"),
    ("log1p as text", r"numeric\.tempo\.log1p: .*boolean \(got 'yes'\)$"),
    ("categories", r"categorical\.key\.categories\.1: .*integer \(got 1\.5\)$"),
    ("categories repeated", r"categorical\.key: categories must be distinct integers, in order$"),
    ("no categories", r"categorical\.key\.categories: .*at least 1"),
    ("encoding", r"categorical\.key\.encoding: .*'onehot' or 'ordinal' \(got 'hash'\)$"),
    ("classes", r"\(top level\): classes are \[.*\]; expected \['edm', "),
    ("outputs", r"output_features do not match the features and categories described$"),
    ("playlist input", r"input_features\.\d+: .*\(got 'playlist_name'\)$"),
    ("hash", r"data_sha256: .*\(got 'not a hash'\)$"),
])
def test_tampered_json_is_refused_clearly(tmp_path, fitted, change, expected):
    data = copy.deepcopy(fitted.to_dict())
    _tamper(data, change)
    path = tmp_path / "preprocessor.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError) as error:
        load_preprocessor(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not a valid preprocessor: ")
    assert re.match(expected, message.removeprefix(f"{path}: not a valid preprocessor: ")), message


@pytest.mark.parametrize("text, expected", [
    ('{"format_version": 1,', r"not valid JSON \(line 1"),
    ('{"format_version": NaN}', r"NaN is not a number JSON allows"),
    ("[1, 2]", r"not a valid preprocessor: \(top level\): .*dictionary"),
])
def test_malformed_json_is_refused_clearly(tmp_path, text, expected):
    path = tmp_path / "preprocessor.json"
    path.write_text(text)
    with pytest.raises(BundleError, match=rf"^{re.escape(str(path))}: {expected}[^\n]*$"):
        load_preprocessor(path)


def test_missing_preprocessor_says_what_to_run(tmp_path):
    with pytest.raises(BundleError, match="not found; run `dvc repro preprocess`"):
        load_preprocessor(tmp_path / "absent.json")


# --- The pipeline, with the real dvc CLI ---------------------------------------------------------------------

def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _stages_skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))


def _locked_outs(repo, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for out in lock["stages"][stage]["outs"]}


@pytest.mark.e2e
def test_params_changes_rerun_exactly_the_dependent_stages(tmp_path):
    repo = make_project(tmp_path / "project", {"data.source": "synthetic", "data.synthetic_rows": 3000})
    first = run(["dvc", "repro", "preprocess"], repo).stdout
    assert _stages_run(first) == {"download", "split", "select", "preprocess"}
    assert "up to date" in run(["dvc", "status", "preprocess"], repo).stdout
    processed_before = _locked_outs(repo, "preprocess")

    k = len(json.loads((repo / "reports/anova.json").read_text())["selected"]) - 2
    write_params(repo, {"select.k": k})
    dry = run(["dvc", "repro", "--dry", "preprocess"], repo).stdout
    assert _stages_run(dry) == {"select"} and _stages_skipped(dry) >= {"download", "split"}
    again = run(["dvc", "repro", "preprocess"], repo).stdout
    assert _stages_run(again) == {"select", "preprocess"} and _stages_skipped(again) == {"download", "split"}
    assert len(load_preprocessor(repo / "models/preprocessor.json").input_features) == k
    # train and evaluate depend on preprocess's outputs, which changed, so dvc repro would re-run them too.
    assert _locked_outs(repo, "preprocess") != processed_before
    for stage in ("train", "evaluate"):
        assert "preprocess" in run(["dvc", "dag", stage], repo).stdout

    write_params(repo, {"split.seed": 7})
    dry = run(["dvc", "repro", "--dry", "preprocess"], repo).stdout
    assert _stages_run(dry) == {"split"} and "download" in _stages_skipped(dry)
    again = run(["dvc", "repro", "preprocess"], repo).stdout
    assert _stages_run(again) == {"split", "select", "preprocess"} and _stages_skipped(again) == {"download"}
    assert "up to date" in run(["dvc", "status", "preprocess"], repo).stdout


# --- The real data -------------------------------------------------------------------------------------------

@needs_real_data
@pytest.mark.realdata
def test_split_select_preprocess_on_the_real_data(tmp_path):
    params = load_params(ROOT / "params.yaml")
    with zipfile.ZipFile(real_zip()) as archive:
        data = archive.read("spotify_songs.csv")
    songs = validate_songs(read_songs(io.BytesIO(data), "spotify_songs.csv"), "spotify_songs.csv")
    assert len(songs) == 32_833

    splits, report = split.split_songs(songs, params.split)
    ids = {name: set(frame[TRACK_ID]) for name, frame in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert sum(len(frame) for frame in splits.values()) == len(songs) - report["missing"]["rows_dropped"]
    whole = songs[LABEL].value_counts(normalize=True)
    for name, frame in splits.items():
        gap = (frame[LABEL].value_counts(normalize=True) - whole).abs().max()
        assert gap <= 0.02, f"{name}: class proportions {gap:.3f} from the whole"

    anova = select.select_features(splits["train"], params.select)
    features = candidate_features(splits["train"], params.select.candidates)
    f_expected, _ = f_classif(features.fillna(features.median()).to_numpy(), splits["train"][LABEL].to_numpy())
    by_name = {row["feature"]: row["f_statistic"] for row in anova["features"]}
    assert [by_name[name] for name in params.select.candidates] == [select.significant(f) for f in f_expected]
    assert not set(anova["selected"]) & set(PLAYLIST_FIELDS)

    pre, processed = preprocess.preprocess_splits(splits, anova["selected"], params.preprocess,
                                                  hashlib.sha256(data).hexdigest())
    train = processed["train"].features
    numeric = [pre.output_features.index(c.name) for c in pre.columns if isinstance(c, NumericColumn)]
    if params.preprocess.scaler == "standard":
        np.testing.assert_allclose(train[:, numeric].mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(train[:, numeric].std(axis=0), 1.0, atol=1e-3)
    assert all(np.isfinite(split_data.features).all() for split_data in processed.values())
