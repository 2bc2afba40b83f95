"""The evaluate stage: metric values, the metrics file's shape, baselines and the paired bootstrap against them,
byte-stable outputs, and one clear line for every bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import artifacts
from pipeline.artifacts import BASELINE_PREDICTIONS, ProcessedSplit, write_baseline_predictions, write_processed
from pipeline.metrics import (confusion_counts, headline_metrics, label_metrics, per_class_metrics, rounded,
                              row_normalised)
from pipeline.mlp_predictions import MLP_PREDICTIONS, PREDICTED_SPLITS, read_mlp_predictions
from pipeline.params import parse_params
from pipeline.preprocessor_fitting import fit_model_inputs
from pipeline.report import novelty_peer_table, novelty_table, results_table
from pipeline.synthetic import synthetic_songs
from spotify_genre.errors import DataError
from spotify_genre.preprocessing.preprocessor import load_preprocessor, save_preprocessor
from spotify_genre.songs.schema import GENRES
from stages import evaluate, train
from tests.conftest import ROOT, default_params, with_overrides

# A fixed, hand-checkable example over three classes: 10 songs, 6 right. Its confusion matrix (rows actual,
# columns predicted) is not symmetric, so precision and recall differ for every class:
#     [[3, 1, 0],     actual 0: 4 songs     predicted 0: 5 songs
#      [1, 2, 0],     actual 1: 3 songs     predicted 1: 4 songs
#      [1, 1, 1]]     actual 2: 3 songs     predicted 2: 1 song
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PROBA = np.array([
    [0.7, 0.2, 0.1],  # 0 -> 0
    [0.5, 0.4, 0.1],  # 0 -> 0
    [0.6, 0.3, 0.1],  # 0 -> 0
    [0.2, 0.6, 0.2],  # 0 -> 1
    [0.1, 0.8, 0.1],  # 1 -> 1
    [0.3, 0.5, 0.2],  # 1 -> 1
    [0.5, 0.4, 0.1],  # 1 -> 0
    [0.2, 0.2, 0.6],  # 2 -> 2
    [0.6, 0.2, 0.2],  # 2 -> 0
    [0.3, 0.4, 0.3],  # 2 -> 1
])
Y_PRED = PROBA.argmax(axis=1)
CONFUSION = [[3, 1, 0], [1, 2, 0], [1, 1, 1]]
# By hand from CONFUSION: precision = diagonal / column total, recall = diagonal / row total,
# F1 = 2 * diagonal / (row total + column total).
PRECISION = (3 / 5, 2 / 4, 1 / 1)
RECALL = (3 / 4, 2 / 3, 1 / 3)
F1 = (6 / 9, 4 / 7, 2 / 4)
SUPPORT = (4, 3, 3)


def test_the_example_is_the_confusion_matrix_it_claims():
    assert confusion_counts(Y_TRUE, Y_PRED, 3).tolist() == CONFUSION
    for p, r, f in zip(PRECISION, RECALL, F1):
        assert f == pytest.approx(2 * p * r / (p + r))


def test_headline_metrics_by_hand():
    got = headline_metrics(Y_TRUE, PROBA)
    assert got == pytest.approx({
        "accuracy": 6 / 10,
        "f1_macro": (6 / 9 + 4 / 7 + 2 / 4) / 3,
        "f1_weighted": (4 * 6 / 9 + 3 * 4 / 7 + 3 * 2 / 4) / 10,
        "precision_macro": (3 / 5 + 2 / 4 + 1) / 3,
        "recall_macro": (3 / 4 + 2 / 3 + 1 / 3) / 3,
        # the probability each song's actual genre got
        "log_loss": -np.mean(np.log([0.7, 0.5, 0.6, 0.2, 0.8, 0.5, 0.4, 0.6, 0.2, 0.3])),
    }, rel=1e-12)
    assert list(got) == ["accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "log_loss"]
    assert all(type(value) is float for value in got.values())


def test_per_class_metrics_by_hand():
    names = ("a", "b", "c")
    got = per_class_metrics(Y_TRUE, Y_PRED, names)
    assert list(got) == list(names)
    for i, name in enumerate(names):
        assert got[name] == pytest.approx({"precision": PRECISION[i], "recall": RECALL[i], "f1": F1[i],
                                           "support": SUPPORT[i]}, rel=1e-12)
        assert type(got[name]["support"]) is int


def test_a_class_never_predicted_or_absent_still_counts_in_the_macro_average():
    proba = np.hstack([PROBA, np.zeros((len(PROBA), 1))])  # a fourth class: no song, never predicted
    got = headline_metrics(Y_TRUE, proba)
    assert got["f1_macro"] == pytest.approx((6 / 9 + 4 / 7 + 2 / 4 + 0.0) / 4, rel=1e-12)
    assert got["precision_macro"] == pytest.approx((3 / 5 + 2 / 4 + 1 + 0.0) / 4, rel=1e-12)
    assert got["recall_macro"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 3 + 0.0) / 4, rel=1e-12)
    assert got["f1_weighted"] == pytest.approx(headline_metrics(Y_TRUE, PROBA)["f1_weighted"], rel=1e-12)
    assert got["log_loss"] == pytest.approx(headline_metrics(Y_TRUE, PROBA)["log_loss"])
    assert per_class_metrics(Y_TRUE, Y_PRED, ("a", "b", "c", "d"))["d"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert label_metrics(Y_TRUE, Y_PRED, 4) == pytest.approx({"accuracy": 6 / 10, "f1_macro": got["f1_macro"]})


def test_confusion_matrix_rows_are_actual_classes_and_normalise_to_one():
    counts = confusion_counts(Y_TRUE, Y_PRED, 4)
    assert counts.tolist() == [[*row, 0] for row in CONFUSION] + [[0, 0, 0, 0]]
    normalised = row_normalised(counts)
    assert np.allclose(normalised[:3], [[3 / 4, 1 / 4, 0, 0], [1 / 3, 2 / 3, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0]],
                       rtol=1e-12, atol=0)
    assert normalised[3].tolist() == [0, 0, 0, 0]


def test_rounded_rounds_every_float_and_leaves_the_rest():
    value = {"a": 0.1234567891, "b": [np.float64(2 / 3), 3], "c": {"d": True, "e": "x"}}
    assert rounded(value) == {"a": 0.123457, "b": [0.666667, 3], "c": {"d": True, "e": "x"}}
    assert type(rounded(np.float32(0.5))) is float


# --- the stage on a small world of its own ---------------------------------------------------------------

SHA = hashlib.sha256(b"synthetic raw data").hexdigest()
SELECTED = ["danceability", "energy", "key"]
FEATURES = tuple(f"f{i}" for i in range(8))
SIZES = {"train": 900, "val": 200, "test": 200}


def _split(name: str, rng: np.random.Generator) -> ProcessedSplit:
    labels = rng.integers(0, len(GENRES), SIZES[name])
    features = rng.normal(size=(len(labels), len(FEATURES)))
    features[np.arange(len(labels)), labels] += 2.0  # each genre leans on a feature of its own
    ids = np.array([f"{name}{i:05d}" for i in range(len(labels))])
    return ProcessedSplit(features.astype(np.float32), labels.astype(np.int64), ids, FEATURES)


def _write_preprocessor(path: Path, *, songs_seed: int = 0) -> None:
    """A real preprocessor, fitted as the preprocess stage fits one: a robust scaler, log1p of `energy`, one-hot
    `key`, and genre scores of `track_name` (so the .npz beside it holds arrays)."""
    params = parse_params(with_overrides(default_params(), {
        "preprocess.scaler": "robust", "preprocess.log_transform": ["energy"], "preprocess.categorical": "onehot",
        "preprocess.text.fields": ["track_name"], "preprocess.text.buckets": 64, "preprocess.text.folds": 2}))
    songs = synthetic_songs(300, seed=songs_seed)
    pre, _ = fit_model_inputs(songs, SELECTED, params.preprocess, data_sha256=SHA, groups=songs["track_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_preprocessor(path, pre)


def _novelty_ids(split: ProcessedSplit) -> pd.DataFrame:
    """Albums and artists for a split's songs, the i-th song in slice i % 3: on an album of the preprocessor's
    training songs; on a new album by one of their artists; by a new artist."""
    known = synthetic_songs(300, seed=0)  # the preprocessor's training songs (_write_preprocessor)
    rows = np.arange(len(split.labels))
    albums = np.where(rows % 3 == 0, known["track_album_id"].to_numpy()[rows % len(known)], "album-new")
    artists = np.where(rows % 3 == 2, "artist-new", known["track_artist"].to_numpy()[rows % len(known)])
    return pd.DataFrame({"track_album_id": albums, "track_artist": artists})


def _write_world(root: Path, params_overrides: dict) -> dict[str, ProcessedSplit]:
    """Every input of the evaluate stage, as the upstream stages lay them out, under `root`."""
    import torch

    from spotify_genre.model import build_mlp
    from spotify_genre.model.bundle import save_bundle

    rng = np.random.default_rng(0)
    splits = {name: _split(name, rng) for name in SIZES}
    for name, split in splits.items():
        write_processed(root / "data" / "processed" / f"{name}.parquet", split)
        labels = pd.Series(np.asarray(GENRES)[split.labels])
        if name == "train":  # two tracks listed under a second genre
            extra = pd.DataFrame({"track_id": split.track_ids[:2], "playlist_genre": ["rock", "pop"]})
            labels = labels.where(~pd.Series(split.track_ids).isin(extra["track_id"]), "edm")
        frame = pd.DataFrame({"track_id": split.track_ids, "playlist_genre": labels}).join(_novelty_ids(split))
        if name == "train":
            frame = pd.concat([frame, extra], ignore_index=True)
        (root / "data" / "split").mkdir(parents=True, exist_ok=True)
        frame.to_parquet(root / "data" / "split" / f"{name}.parquet", index=False)

    (root / "reports").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "split.json").write_text(json.dumps({
        "raw_sha256": SHA, "seed": 42,
        "splits": {name: {"rows": size, "tracks": size} for name, size in SIZES.items()}}))
    (root / "reports" / "anova.json").write_text(json.dumps({
        "selected": ["danceability", "energy", "key"],
        "features": [{"feature": name} for name in ("danceability", "energy", "key", "mode")]}))
    preprocessor = root / "models" / "preprocessor.json"
    _write_preprocessor(preprocessor)
    live = root / "dvclive"
    for split in ("train", "val"):
        (live / "plots" / "metrics" / split).mkdir(parents=True, exist_ok=True)
        losses = [1.6 - 0.1 * step + (0.05 * step * step / 10 if split == "val" else 0) for step in range(6)]
        pd.DataFrame({"step": range(6), "loss": losses}).to_csv(
            live / "plots" / "metrics" / split / "loss.tsv", sep="\t", index=False)
    (live / "metrics.json").write_text(json.dumps({"best_epoch": 3, "stopped_epoch": 5, "best_val_loss": 1.31}))
    _write_baselines(root, splits["test"])

    torch.manual_seed(0)
    architecture = {"n_features": len(FEATURES), "n_classes": len(GENRES), "hidden_sizes": [16], "dropout": 0.0}
    model = build_mlp(**architecture)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.from_numpy(splits["train"].features), torch.from_numpy(splits["train"].labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only wait on each other
    try:
        for _ in range(30):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    params = with_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), params_overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    save_bundle(root / "models" / "model.pt", model.eval(), architecture=architecture, feature_names=FEATURES,
                class_names=GENRES,
                preprocessor={"path": "models/preprocessor.json",
                              "sha256": hashlib.sha256(preprocessor.read_bytes()).hexdigest()},
                params={"lr": 0.1, "momentum": 0.9, "train": {"hidden_sizes": [16]}}, data_sha256=SHA)
    with contextlib.chdir(root):  # the train stage's own step: the saved bundle's val and test probabilities
        train.write_predictions({name: splits[name] for name in PREDICTED_SPLITS})
    return splits


def _baseline_predictions(test: ProcessedSplit) -> pd.DataFrame:
    """What the baselines stage writes for the test split: a majority class, and a model right on 60% of the rows."""
    rng = np.random.default_rng(1)
    guessed = np.where(rng.random(len(test.labels)) < 0.6, test.labels, rng.integers(0, len(GENRES), len(test.labels)))
    return pd.DataFrame({"track_id": test.track_ids, "majority": np.full(len(test.labels), 2, dtype=np.int8),
                         "hist_gradient_boosting": guessed.astype(np.int8)})


def _baselines_report(test: ProcessedSplit, predictions: pd.DataFrame) -> dict:
    """reports/baselines.json for those predictions (validation scores made up: evaluate only passes them on)."""
    val = {"majority": {"accuracy": 0.2, "f1_macro": 0.05},
           "hist_gradient_boosting": {"accuracy": 0.6, "f1_macro": 0.55}}
    models = {name: {"val": val[name], "test": rounded(label_metrics(test.labels, predictions[name].to_numpy(),
                                                                     len(GENRES))),
                     "iterations": None if name == "majority" else 120}
              for name in val}
    return {"models": models, "strongest": "hist_gradient_boosting"}


def _write_baselines(root: Path, test: ProcessedSplit) -> None:
    predictions = _baseline_predictions(test)
    write_baseline_predictions(root / BASELINE_PREDICTIONS, predictions["track_id"].to_numpy(),
                               {name: predictions[name].to_numpy() for name in predictions.columns[1:]})
    (root / "reports" / "baselines.json").write_text(json.dumps(_baselines_report(test, predictions)))


FAST: dict = {}
OUTPUTS = (evaluate.METRICS, evaluate.PREDICTIONS, evaluate.PER_CLASS_F1, evaluate.LOSS_PNG,
           evaluate.CONFUSION_PNG, evaluate.MODEL_CARD, evaluate.NOVELTY_PLOT, evaluate.NOVELTY_PNG)


@pytest.fixture(scope="module")
def world_template(tmp_path_factory) -> tuple[Path, dict[str, ProcessedSplit]]:
    root = tmp_path_factory.mktemp("world")
    return root, _write_world(root, FAST)


@pytest.fixture
def world(world_template, tmp_path, monkeypatch) -> tuple[Path, dict[str, ProcessedSplit]]:
    """A fresh copy of the stage's inputs, as the current directory."""
    template, splits = world_template
    root = tmp_path / "world"
    shutil.copytree(template, root)
    monkeypatch.chdir(root)
    return root, splits


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def test_stage_writes_every_output_with_the_expected_content(world, capsys):
    root, splits = world
    assert evaluate.main([]) == 0
    out = capsys.readouterr().out.splitlines()

    metrics = json.loads((root / evaluate.METRICS).read_text())
    headline = ["accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "log_loss"]
    assert list(metrics) == [*headline, "intervals", "per_class", "val", "baselines", "strongest_baseline",
                             "bootstrap", "novelty"]
    assert list(metrics["val"]) == headline
    assert list(metrics["per_class"]) == list(GENRES)
    assert sum(v["support"] for v in metrics["per_class"].values()) == SIZES["test"]
    assert metrics["bootstrap"] == {"resamples": 2000, "confidence": 0.95, "seed": 0}  # params.yaml's
    report = json.loads((root / "reports/baselines.json").read_text())
    assert metrics["strongest_baseline"] == report["strongest"] == "hist_gradient_boosting"
    assert list(metrics["baselines"]) == list(report["models"])
    for name, scores in metrics["baselines"].items():
        given = report["models"][name]
        assert scores == {"accuracy": given["test"]["accuracy"], "f1_macro": given["test"]["f1_macro"],
                          "val_accuracy": given["val"]["accuracy"], "val_f1_macro": given["val"]["f1_macro"],
                          "difference": scores["difference"]}
        for score in ("accuracy", "f1_macro"):
            difference = scores["difference"][score]
            assert list(difference) == ["estimate", "low", "high"]
            assert difference["estimate"] == pytest.approx(metrics[score] - scores[score], abs=2e-6)
            assert difference["low"] <= difference["estimate"] <= difference["high"]
    assert metrics["baselines"]["majority"]["difference"]["accuracy"]["low"] > 0.2  # far ahead of the majority
    for score in ("accuracy", "f1_macro"):
        assert list(metrics["intervals"][score]) == ["low", "high"]
        assert metrics["intervals"][score]["low"] < metrics[score] < metrics["intervals"][score]["high"]
        # 200 test songs: the interval is several points wide (about 4 standard errors of a proportion)
        assert 0.05 < metrics["intervals"][score]["high"] - metrics["intervals"][score]["low"] < 0.2
    assert metrics["accuracy"] > 0.5  # the little MLP learned: six classes, chance is 1/6
    for value in [*[metrics[key] for key in headline], *metrics["val"].values()]:
        assert value == round(value, 6)
    assert not _lists(metrics), "dvc metrics show/diff list only numbers under nested keys, not in lists"

    def printed(values: dict, signed: str = "") -> str:
        return f"[{values['low']:{signed}.4f}, {values['high']:{signed}.4f}]"

    assert out[0] == (f"evaluate: test accuracy {metrics['accuracy']:.4f} {printed(metrics['intervals']['accuracy'])}, "
                      f"macro-F1 {metrics['f1_macro']:.4f} {printed(metrics['intervals']['f1_macro'])} "
                      "(95% bootstrap intervals, 2,000 resamples)")
    assert out[1:] == [
        f"  MLP - {name}{' (strongest)' * (name == 'hist_gradient_boosting')}: "
        f"accuracy {difference['accuracy']['estimate']:+.4f} {printed(difference['accuracy'], '+')}, "
        f"macro-F1 {difference['f1_macro']['estimate']:+.4f} {printed(difference['f1_macro'], '+')}"
        for name, difference in ((name, scores["difference"]) for name, scores in metrics["baselines"].items())]

    predictions = pd.read_csv(root / evaluate.PREDICTIONS, keep_default_na=False)
    assert list(predictions.columns) == ["track_id", "actual", "predicted", *GENRES]
    assert predictions["track_id"].tolist() == splits["test"].track_ids.tolist()
    assert predictions["actual"].tolist() == [GENRES[i] for i in splits["test"].labels]
    proba = predictions[list(GENRES)].to_numpy()
    assert proba.sum(axis=1) == pytest.approx(np.ones(len(proba)), abs=1e-5)
    assert (predictions["predicted"] == np.asarray(GENRES)[proba.argmax(axis=1)]).all()
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(metrics["accuracy"])
    # Metrics come from the same probabilities the CSV shows (to its 6 decimals).
    labels = np.array([GENRES.index(name) for name in predictions["actual"]])
    assert headline_metrics(labels, proba / proba.sum(axis=1, keepdims=True))["f1_macro"] == pytest.approx(metrics["f1_macro"], abs=1e-4)

    f1 = pd.read_csv(root / evaluate.PER_CLASS_F1, keep_default_na=False)
    assert f1["genre"].tolist() == list(GENRES)
    assert f1["f1"].tolist() == [metrics["per_class"][genre]["f1"] for genre in GENRES]

    # Novelty slices: the world's i-th test song is in slice i % 3 (_novelty_ids), scored on its own songs.
    predicted = proba.argmax(axis=1)
    for split in ("test", "val"):
        slices = metrics["novelty"][split]
        assert list(slices) == ["known_album", "new_album", "new_artist"]
        for code, entry in enumerate(slices.values()):
            rows = np.arange(SIZES[split]) % 3 == code
            assert entry["songs"] == rows.sum() and entry["share"] == round(rows.mean(), 6)
            if split == "test":
                assert entry["accuracy"] == pytest.approx((labels[rows] == predicted[rows]).mean(), abs=1e-6)
                assert entry["intervals"]["accuracy"]["low"] < entry["accuracy"] < entry["intervals"]["accuracy"]["high"]
                assert list(entry["baselines"]) == ["majority", "hist_gradient_boosting"]
                majority = entry["baselines"]["majority"]
                assert majority["accuracy"] == pytest.approx((labels[rows] == 2).mean(), abs=1e-6)
                assert majority["difference"]["accuracy"]["estimate"] == pytest.approx(
                    entry["accuracy"] - majority["accuracy"], abs=2e-6)
            else:
                assert "baselines" not in entry and set(entry) == {"songs", "share", "accuracy", "f1_macro",
                                                                    "intervals"}
    plot = pd.read_csv(root / evaluate.NOVELTY_PLOT)
    assert list(plot.columns) == ["bar", "slice", "model", "songs", "accuracy", "f1_macro"]
    assert plot["model"].tolist() == ["MLP", "HistGradientBoosting"] * 3  # the majority class is no model to plot
    assert plot["bar"].tolist()[-1] == "new artist · HistGradientBoosting"
    assert plot["accuracy"].tolist()[::2] == [entry["accuracy"] for entry in metrics["novelty"]["test"].values()]

    for png in (evaluate.LOSS_PNG, evaluate.CONFUSION_PNG, evaluate.NOVELTY_PNG):
        chunks = _png_chunks((root / png).read_bytes())
        assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
        assert not [kind for kind, _ in chunks if kind in (b"tEXt", b"iTXt", b"zTXt", b"tIME")]

    card = (root / evaluate.MODEL_CARD).read_text()
    assert SHA in card
    assert "Selected features (3 of 4 candidates" in card and "`danceability`, `energy`, `key`." in card
    assert "robust scaler, after log1p of `energy`." in card and "One-hot encoded: `key`." in card
    assert "per text field" in card and "`track_name`." in card
    assert "2 tracks appear under more than one genre" in card
    assert "| best epoch | stopped epoch | best validation loss |" in card and "| 3 | 5 | 1.3100 |" in card
    intervals = metrics["intervals"]
    assert (f"| accuracy | {metrics['accuracy']:.4f} | [{intervals['accuracy']['low']:.4f}, "
            f"{intervals['accuracy']['high']:.4f}] | {metrics['val']['accuracy']:.4f} |") in card
    assert (f"| MLP (this pipeline) | {metrics['accuracy']:.4f} [{intervals['accuracy']['low']:.4f}, "
            f"{intervals['accuracy']['high']:.4f}] | {metrics['f1_macro']:.4f} [") in card
    hgb = metrics["baselines"]["hist_gradient_boosting"]
    accuracy_difference, f1_difference = hgb["difference"]["accuracy"], hgb["difference"]["f1_macro"]
    assert (f"| HistGradientBoosting (scikit-learn), strongest | {hgb['accuracy']:.4f} | {hgb['f1_macro']:.4f} | "
            f"{accuracy_difference['estimate']:+.4f} [{accuracy_difference['low']:+.4f}, "
            f"{accuracy_difference['high']:+.4f}] | {f1_difference['estimate']:+.4f} [{f1_difference['low']:+.4f}, "
            f"{f1_difference['high']:+.4f}] |") in card
    assert "| model | test accuracy | test macro-F1 | MLP − model, accuracy | MLP − model, macro-F1 |" in card
    assert "In brackets: 95% percentile bootstrap intervals over 2,000 resamples of the test songs (seed 0)." in card
    assert "\n".join(results_table(metrics)) in card and "beat" not in card
    for genre, values in metrics["per_class"].items():
        assert f"| {genre} | {values['precision']:.4f} | {values['recall']:.4f} |" in card
    assert "playlist_subgenre" in card and "lr: 0.1" in card
    assert "\n".join(novelty_table(metrics)) in card and "\n".join(novelty_peer_table(metrics)) in card
    known = metrics["novelty"]["test"]["known_album"]
    assert (f"| album has training songs | {known['songs']} ({known['songs'] / SIZES['test']:.0%}) | {known['accuracy']:.4f} "
            f"[{known['intervals']['accuracy']['low']:.4f}, {known['intervals']['accuracy']['high']:.4f}] |") in card

    front, heading = card.split("\n---\n", 1)
    assert front.startswith("---\n") and heading.startswith("\n# Model card")
    hub = yaml.safe_load(front[4:])
    assert hub["license"] == "mit" and hub["library_name"] == "pytorch" and hub["datasets"]
    results = hub["model-index"][0]["results"]
    assert [metric["value"] for metric in results[0]["metrics"]] == [metrics["accuracy"], metrics["f1_macro"]]
    assert [result["metrics"][0]["value"] for result in results[1:]] == [
        entry["accuracy"] for entry in metrics["novelty"]["test"].values() if "accuracy" in entry]
    assert "## Intended use" in card and "2024-11-27" in card and "another extractor" in card

    timing = json.loads((root / evaluate.TIMING).read_text())
    assert timing["total_s"] >= timing["predictions_s"] + timing["metrics_s"] + timing["figures_s"]
    assert timing["figures_s"] > 0 and "startup_s" in timing


@pytest.mark.slow
def test_stage_outputs_are_byte_identical_run_to_run(world):
    root, _ = world
    assert evaluate.main([]) == 0
    first = {path: (root / path).read_bytes() for path in OUTPUTS}
    for path in OUTPUTS:
        (root / path).unlink()
    assert evaluate.main([]) == 0
    assert {path: (root / path).read_bytes() for path in OUTPUTS} == first
    assert not any(word in (root / evaluate.MODEL_CARD).read_text().lower() for word in ("second", "elapsed"))


def _lists(value) -> bool:
    if isinstance(value, dict):
        return any(_lists(item) for item in value.values())
    return isinstance(value, list)


def test_no_baselines_means_no_comparison():
    rng = np.random.default_rng(2)
    test, val = _split("test", rng), _split("val", rng)
    proba = np.full((len(test.labels), len(GENRES)), 1 / len(GENRES))
    settings = parse_params(default_params()).evaluate.bootstrap
    report = artifacts.baseline_report({"models": {}, "strongest": None})
    metrics = evaluate.evaluation_metrics(test, proba, val, proba[: len(val.labels)], report, {}, settings)
    assert metrics["baselines"] == {} and metrics["strongest_baseline"] is None
    assert metrics["log_loss"] == pytest.approx(np.log(len(GENRES)), abs=1e-6)
    # every song predicted as the first genre: the interval is that of the first genre's share of the test rows
    assert metrics["intervals"]["accuracy"]["low"] < metrics["accuracy"] < metrics["intervals"]["accuracy"]["high"]


def test_the_majority_alone_has_no_strongest_peer_and_a_peer_must_be_named():
    scores = {"val": {"accuracy": 0.2, "f1_macro": 0.05}, "test": {"accuracy": 0.2, "f1_macro": 0.05}}
    assert artifacts.baseline_report({"models": {"majority": scores}, "strongest": None}).strongest is None
    for strongest in (None, "majority"):
        with pytest.raises(DataError, match=rf"reports/baselines.json: strongest: {strongest!r} is not one of its"):
            artifacts.baseline_report({"models": {"majority": scores, "lightgbm": scores}, "strongest": strongest})


@pytest.mark.parametrize("broken, message", [
    ("models/model.pt", "models/model.pt: model bundle not found"),
    (str(MLP_PREDICTIONS), f"{MLP_PREDICTIONS}: not found; run `dvc repro train` first"),
    ("data/processed/test.parquet", "data/processed/test.parquet: not found; run `dvc repro preprocess` first"),
    ("reports/anova.json", "reports/anova.json: not found; run `dvc repro select` first"),
    ("reports/baselines.json", "reports/baselines.json: not found; run `dvc repro baselines` first"),
    (str(BASELINE_PREDICTIONS), f"{BASELINE_PREDICTIONS}: not found; run `dvc repro baselines` first"),
    ("models/preprocessor.json", "models/preprocessor.json: not found; run `dvc repro preprocess`"),
    ("models/preprocessor.npz", "models/preprocessor.npz: not found; it holds the text and id arrays of "
                                "models/preprocessor.json"),
    ("dvclive/plots/metrics/val/loss.tsv", "dvclive/plots/metrics/val/loss.tsv: not found"),
    ("data/split/val.parquet", "data/split/val.parquet: not found; run `dvc repro split` first"),
])
def test_a_missing_input_is_one_clear_line(world, capsys, broken, message):
    root, _ = world
    (root / broken).unlink()
    assert evaluate.main([]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and "Traceback" not in err
    assert not (root / evaluate.METRICS).exists()


def test_a_model_trained_on_other_data_is_refused(world, capsys):
    root, _ = world
    report = json.loads((root / "reports/split.json").read_text())
    report["raw_sha256"] = "0" * 64
    (root / "reports/split.json").write_text(json.dumps(report))
    assert evaluate.main([]) == 5
    assert "was trained on data with sha256" in capsys.readouterr().err


def test_the_predictions_are_those_of_the_model_as_it_is(world, capsys):
    """The train stage's probabilities are what evaluate scores: those of models/model.pt, bit for bit, and a
    bundle replaced since (another run's, say) is refused in one line, before any output."""
    from spotify_genre.model import load_bundle, predict_proba

    root, splits = world
    _, probabilities = read_mlp_predictions({name: splits[name].track_ids for name in PREDICTED_SPLITS})
    bundle = load_bundle(root / "models" / "model.pt")
    for name in PREDICTED_SPLITS:
        assert np.array_equal(probabilities[name], predict_proba(bundle.model, splits[name].features))
    model = root / "models" / "model.pt"
    model.write_bytes(model.read_bytes() + b"\0")
    assert evaluate.main([]) == 5
    err = capsys.readouterr().err
    assert err == f"error: models/model.pt: not the model {MLP_PREDICTIONS} holds the predictions of; " \
                  "run `dvc repro train` again\n"
    assert not (root / evaluate.METRICS).exists()


@pytest.mark.parametrize("change, message", [
    ("rows", f"{MLP_PREDICTIONS}: its test rows are not those of data/processed/test.parquet"),
    ("record", f"{MLP_PREDICTIONS}: records no model"),
])
def test_a_predictions_file_that_does_not_fit_is_one_clear_line(world, capsys, change, message):
    import pyarrow.parquet as pq

    root, _ = world
    table = pq.read_table(root / MLP_PREDICTIONS)
    if change == "rows":
        table = table.slice(0, table.num_rows - 1)
    else:
        table = table.replace_schema_metadata({})
    pq.write_table(table, root / MLP_PREDICTIONS)
    assert evaluate.main([]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (root / evaluate.METRICS).exists()


@pytest.mark.parametrize("which", ["refitted on other songs", "one number changed"])
def test_a_preprocessor_other_than_the_one_the_model_records_is_refused(world, capsys, which):
    root, _ = world
    path = root / "models" / "preprocessor.json"
    before, features = hashlib.sha256(path.read_bytes()).hexdigest(), load_preprocessor(path).output_features
    if which == "refitted on other songs":
        _write_preprocessor(path, songs_seed=1)
    else:
        pre = load_preprocessor(path)
        columns = list(pre.columns)
        columns[0] = dataclasses.replace(columns[0], center=columns[0].center + 0.5)
        save_preprocessor(path, dataclasses.replace(pre, columns=tuple(columns)))
    after = hashlib.sha256(path.read_bytes()).hexdigest()
    # A valid preprocessor for the same features: only its sha256 tells it from the one the model was trained with.
    assert after != before and load_preprocessor(path).output_features == features

    assert evaluate.main([]) == 6
    err = capsys.readouterr().err
    assert err.startswith("error: models/model.pt: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "models/preprocessor.json" in err and before[:12] in err and after[:12] in err, err
    assert not (root / evaluate.METRICS).exists()


@pytest.mark.parametrize("key, value", [
    ("confidence", 1.5), ("confidence", 0.0), ("resamples", 10), ("resamples", "2000"), ("seed", -1),
    ("samples", 100),
])
def test_bad_bootstrap_params_fail_before_any_work_in_one_line(world, capsys, key, value):
    root, _ = world
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["bootstrap"][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert evaluate.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: params.yaml: evaluate.bootstrap.{key}: ") and err.count("\n") == 1, err
    assert not (root / evaluate.METRICS).exists()


def _rewrite_predictions(root: Path, change) -> None:
    frame = pd.read_parquet(root / BASELINE_PREDICTIONS)
    change(frame).to_parquet(root / BASELINE_PREDICTIONS, index=False)


@pytest.mark.parametrize("change, message", [
    (lambda frame: frame.iloc[::-1], r"its rows are not those of data/processed/test\.parquet"),
    (lambda frame: frame.iloc[:-1], r"its rows are not those of data/processed/test\.parquet"),
    (lambda frame: frame.drop(columns="track_id"), r"no 'track_id' column"),
    (lambda frame: frame.drop(columns="majority"), r"no column for the baseline 'majority' of "
                                                   r"reports/baselines\.json"),
    (lambda frame: frame.assign(majority=np.int8(6)), r"column 'majority': expected class indices 0\.\.5 \(int8\)"),
    (lambda frame: frame.assign(hist_gradient_boosting=frame["majority"]),
     r"column 'hist_gradient_boosting' scores test accuracy 0\.\d{6}, but reports/baselines\.json says 0\.\d{6}"),
])
def test_a_baseline_predictions_file_that_does_not_fit_is_one_clear_line(world, capsys, change, message):
    root, _ = world
    _rewrite_predictions(root, change)
    assert evaluate.main([]) == 3
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: {re.escape(str(BASELINE_PREDICTIONS))}: {message}; run `dvc repro baselines` "
                        r"again\n", err), err
    assert not (root / evaluate.METRICS).exists()


@pytest.mark.parametrize("report, message", [
    ({"majority": {"accuracy": 0.18, "f1_macro": 0.05}}, "models: missing key"),  # the shape before the tuned peers
    ({"models": {"majority": {"val": {"accuracy": 0.2, "f1_macro": 0.1}, "test": {"accuracy": "0.2"}}},
      "strongest": "majority"}, "models.majority.test.accuracy: "),
    ({"models": {}, "strongest": "xgboost"}, "strongest: 'xgboost' is not one of its models"),
])
def test_a_baselines_report_of_another_shape_is_one_clear_line(world, capsys, report, message):
    root, _ = world
    (root / "reports/baselines.json").write_text(json.dumps(report))
    assert evaluate.main([]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: reports/baselines.json: {message}") and err.count("\n") == 1, err
    assert not (root / evaluate.METRICS).exists()


def test_the_readme_novelty_table_is_the_committed_metrics():
    """The README's table of the committed run is novelty_table of the committed reports/metrics.json."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- novelty:start -->")[1].split("<!-- novelty:end -->")[0].strip()
    metrics = json.loads((ROOT / "reports" / "metrics.json").read_text())
    assert block == "\n".join(novelty_table(metrics))
