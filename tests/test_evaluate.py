"""The evaluate stage: metric values, the metrics file's shape, baselines, byte-stable outputs, and the DVC CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from stages import evaluate
from stages.metrics import (confusion_counts, headline_metrics, label_metrics, per_class_metrics, rounded,
                            row_normalised)
from stages.processed import ProcessedSplit, write_processed
from stages.schema import GENRES
from tests.conftest import ROOT, SYNTHETIC_OVERRIDES, make_project, run, with_overrides

# A fixed, hand-checkable example over three classes: 8 songs, 5 right.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PROBA = np.array([
    [0.7, 0.2, 0.1],  # 0 -> 0
    [0.5, 0.4, 0.1],  # 0 -> 0
    [0.2, 0.6, 0.2],  # 0 -> 1
    [0.1, 0.8, 0.1],  # 1 -> 1
    [0.3, 0.3, 0.4],  # 1 -> 2
    [0.1, 0.1, 0.8],  # 2 -> 2
    [0.6, 0.2, 0.2],  # 2 -> 0
    [0.2, 0.2, 0.6],  # 2 -> 2
])
Y_PRED = PROBA.argmax(axis=1)


def test_headline_metrics_by_hand_and_as_scikit_learn_computes_them():
    got = headline_metrics(Y_TRUE, PROBA)

    # By hand: class 0 precision 2/3 recall 2/3; class 1 precision 1/2 recall 1/2; class 2 precision 2/3 recall 2/3.
    assert got["accuracy"] == pytest.approx(5 / 8)
    assert got["precision_macro"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert got["recall_macro"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert got["f1_macro"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert got["f1_weighted"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 3 * 2 / 3) / 8)
    true_class_proba = PROBA[np.arange(len(Y_TRUE)), Y_TRUE]
    assert got["log_loss"] == pytest.approx(-np.log(true_class_proba).mean())

    assert got == {
        "accuracy": skm.accuracy_score(Y_TRUE, Y_PRED),
        "f1_macro": skm.f1_score(Y_TRUE, Y_PRED, average="macro"),
        "f1_weighted": skm.f1_score(Y_TRUE, Y_PRED, average="weighted"),
        "precision_macro": skm.precision_score(Y_TRUE, Y_PRED, average="macro"),
        "recall_macro": skm.recall_score(Y_TRUE, Y_PRED, average="macro"),
        "log_loss": skm.log_loss(Y_TRUE, PROBA),
    }
    assert all(type(value) is float for value in got.values())


def test_per_class_metrics_match_the_classification_report():
    names = ("a", "b", "c")
    got = per_class_metrics(Y_TRUE, Y_PRED, names)
    report = skm.classification_report(Y_TRUE, Y_PRED, target_names=list(names), output_dict=True)

    assert list(got) == list(names)
    for name in names:
        assert got[name]["precision"] == pytest.approx(report[name]["precision"])
        assert got[name]["recall"] == pytest.approx(report[name]["recall"])
        assert got[name]["f1"] == pytest.approx(report[name]["f1-score"])
        assert got[name]["support"] == report[name]["support"]
        assert type(got[name]["support"]) is int
    assert got["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}


def test_a_class_never_predicted_or_absent_still_counts_in_the_macro_average():
    proba = np.hstack([PROBA, np.zeros((len(PROBA), 1))])  # a fourth class: no song, never predicted
    got = headline_metrics(Y_TRUE, proba)
    assert got["f1_macro"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 0.0) / 4)
    assert got["log_loss"] == pytest.approx(headline_metrics(Y_TRUE, PROBA)["log_loss"])
    assert per_class_metrics(Y_TRUE, Y_PRED, ("a", "b", "c", "d"))["d"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert label_metrics(Y_TRUE, Y_PRED, 4)["f1_macro"] == pytest.approx(got["f1_macro"])


def test_confusion_matrix_rows_are_actual_classes_and_normalise_to_one():
    counts = confusion_counts(Y_TRUE, Y_PRED, 4)
    assert counts.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    normalised = row_normalised(counts)
    assert normalised[:3].sum(axis=1) == pytest.approx([1, 1, 1])
    assert normalised[3].tolist() == [0, 0, 0, 0]


def test_rounded_rounds_every_float_and_leaves_the_rest():
    value = {"a": 0.1234567891, "b": [np.float64(2 / 3), 3], "c": {"d": True, "e": "x"}}
    assert rounded(value) == {"a": 0.123457, "b": [0.666667, 3], "c": {"d": True, "e": "x"}}
    assert type(rounded(np.float32(0.5))) is float


# --- the stage on a small world of its own ---------------------------------------------------------------

SHA = hashlib.sha256(b"synthetic raw data").hexdigest()
FEATURES = tuple(f"f{i}" for i in range(8))
SIZES = {"train": 900, "val": 200, "test": 200}


def _split(name: str, rng: np.random.Generator) -> ProcessedSplit:
    labels = rng.integers(0, len(GENRES), SIZES[name])
    features = rng.normal(size=(len(labels), len(FEATURES)))
    features[np.arange(len(labels)), labels] += 2.0  # each genre leans on a feature of its own
    ids = np.array([f"{name}{i:05d}" for i in range(len(labels))])
    return ProcessedSplit(features.astype(np.float32), labels.astype(np.int64), ids, FEATURES)


def _write_world(root: Path, params_overrides: dict) -> dict[str, ProcessedSplit]:
    """Every input of the evaluate stage, as the upstream stages lay them out, under `root`."""
    import torch

    from stages.model import build_mlp, save_bundle

    rng = np.random.default_rng(0)
    splits = {name: _split(name, rng) for name in SIZES}
    for name, split in splits.items():
        write_processed(root / "data" / "processed" / f"{name}.parquet", split)
        labels = pd.Series(np.asarray(GENRES)[split.labels])
        if name == "train":  # two tracks listed under a second genre
            extra = pd.DataFrame({"track_id": split.track_ids[:2], "playlist_genre": ["rock", "pop"]})
            labels = labels.where(~pd.Series(split.track_ids).isin(extra["track_id"]), "edm")
        frame = pd.DataFrame({"track_id": split.track_ids, "playlist_genre": labels})
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
    (root / "models").mkdir()
    (root / "models" / "preprocessor.json").write_text(json.dumps({
        "data_sha256": SHA, "scaler": "robust",
        "numeric": {"danceability": {"log1p": False}, "energy": {"log1p": True}},
        "categorical": {"key": {"encoding": "onehot"}}}))
    live = root / "dvclive"
    for split in ("train", "val"):
        (live / "plots" / "metrics" / split).mkdir(parents=True, exist_ok=True)
        losses = [1.6 - 0.1 * step + (0.05 * step * step / 10 if split == "val" else 0) for step in range(6)]
        pd.DataFrame({"step": range(6), "loss": losses}).to_csv(
            live / "plots" / "metrics" / split / "loss.tsv", sep="\t", index=False)
    (live / "metrics.json").write_text(json.dumps({"best_epoch": 3, "stopped_epoch": 5, "best_val_loss": 1.31}))
    (root / "reports" / "baselines.json").write_text(json.dumps(BASELINE_SCORES))

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
                class_names=GENRES, preprocessor={"classes": list(GENRES)},
                params={"lr": 0.1, "momentum": 0.9, "train": {"hidden_sizes": [16]}}, data_sha256=SHA)
    return splits


BASELINE_SCORES = {"majority": {"accuracy": 0.18, "f1_macro": 0.05},
                   "hist_gradient_boosting": {"accuracy": 0.61, "f1_macro": 0.6}}
FAST: dict = {}
OUTPUTS = (evaluate.METRICS, evaluate.PREDICTIONS, evaluate.PER_CLASS_F1, evaluate.LOSS_PNG,
           evaluate.CONFUSION_PNG, evaluate.MODEL_CARD)


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
    assert "evaluate: test accuracy" in capsys.readouterr().out

    metrics = json.loads((root / evaluate.METRICS).read_text())
    headline = ["accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "log_loss"]
    assert list(metrics) == [*headline, "per_class", "val", "baselines", "beats_baselines"]
    assert list(metrics["val"]) == headline
    assert list(metrics["per_class"]) == list(GENRES)
    assert sum(v["support"] for v in metrics["per_class"].values()) == SIZES["test"]
    assert metrics["baselines"] == BASELINE_SCORES
    assert all(list(scores) == ["accuracy", "f1_macro"] for scores in metrics["baselines"].values())
    assert metrics["beats_baselines"] == all(metrics["accuracy"] > b["accuracy"]
                                             for b in metrics["baselines"].values())
    assert metrics["accuracy"] > 0.5  # the little MLP learned: six classes, chance is 1/6
    for value in [*[metrics[key] for key in headline], *metrics["val"].values()]:
        assert value == round(value, 6)

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

    for png in (evaluate.LOSS_PNG, evaluate.CONFUSION_PNG):
        chunks = _png_chunks((root / png).read_bytes())
        assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
        assert not [kind for kind, _ in chunks if kind in (b"tEXt", b"iTXt", b"zTXt", b"tIME")]

    card = (root / evaluate.MODEL_CARD).read_text()
    assert SHA in card
    assert "Selected features (3 of 4 candidates" in card and "`danceability`, `energy`, `key`." in card
    assert "robust scaler, after log1p of `energy`." in card and "One-hot encoded: `key`." in card
    assert "2 tracks appear under more than one genre" in card
    assert "| best epoch | stopped epoch | best validation loss |" in card and "| 3 | 5 | 1.3100 |" in card
    assert f"| MLP (this model) | {metrics['accuracy']:.4f} | {metrics['f1_macro']:.4f} |" in card
    assert f"| HistGradientBoosting (scikit-learn) | {BASELINE_SCORES['hist_gradient_boosting']['accuracy']:.4f}" in card
    for genre, values in metrics["per_class"].items():
        assert f"| {genre} | {values['precision']:.4f} | {values['recall']:.4f} |" in card
    assert "playlist_subgenre" in card and "lr: 0.1" in card

    timing = json.loads((root / evaluate.TIMING).read_text())
    assert timing["total_s"] >= timing["predict_s"] >= 0


def test_stage_outputs_are_byte_identical_run_to_run(world):
    root, _ = world
    assert evaluate.main([]) == 0
    first = {path: (root / path).read_bytes() for path in OUTPUTS}
    for path in OUTPUTS:
        (root / path).unlink()
    assert evaluate.main([]) == 0
    assert {path: (root / path).read_bytes() for path in OUTPUTS} == first
    assert not any(word in (root / evaluate.MODEL_CARD).read_text().lower() for word in ("second", "elapsed"))


def test_no_baselines_means_no_verdict():
    rng = np.random.default_rng(2)
    test, val = _split("test", rng), _split("val", rng)
    proba = np.full((len(test.labels), len(GENRES)), 1 / len(GENRES))
    metrics = evaluate.evaluation_metrics(test, proba, val, proba[: len(val.labels)], {})
    assert metrics["baselines"] == {} and "beats_baselines" not in metrics
    assert metrics["log_loss"] == pytest.approx(np.log(len(GENRES)), abs=1e-6)


@pytest.mark.parametrize("broken, message", [
    ("models/model.pt", "models/model.pt: model bundle not found"),
    ("data/processed/test.parquet", "data/processed/test.parquet: not found; run `dvc repro preprocess` first"),
    ("reports/anova.json", "reports/anova.json: not found; run `dvc repro select` first"),
    ("reports/baselines.json", "reports/baselines.json: not found; run `dvc repro baselines` first"),
    ("models/preprocessor.json", "models/preprocessor.json: not found; run `dvc repro preprocess` first"),
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


def test_bad_params_fail_before_any_work(world, capsys):
    root, _ = world
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["baselines"]["models"] = ["majority", "xgboost"]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert evaluate.main([]) == 2
    assert "baselines.models" in capsys.readouterr().err
    assert not (root / evaluate.METRICS).exists()


# --- the real DVC CLI ---------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_dvc_metrics_show_and_diff_after_an_experiment(tmp_path):
    project = make_project(tmp_path / "project", SYNTHETIC_OVERRIDES)
    run(["dvc", "repro"], project)
    metrics = json.loads((project / "reports/metrics.json").read_text())

    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert json.loads(shown)[""]["data"]["reports/metrics.json"]["data"]["accuracy"] == metrics["accuracy"]
    table = run(["dvc", "metrics", "show"], project).stdout
    assert "accuracy" in table and f"{metrics['accuracy']:g}"[:5] in table
    assert "beats_baselines" in table

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "results"], project)
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    assert "up to date" in run(["dvc", "status"], project).stdout

    experiment = run(["dvc", "exp", "run", "-S", "lr=0.2"], project).stdout
    assert "Running stage 'train'" in experiment and "Running stage 'evaluate'" in experiment
    assert "Running stage 'split'" not in experiment and "Running stage 'baselines'" not in experiment
    assert yaml.safe_load((project / "params.yaml").read_text())["lr"] == 0.2

    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    changed = diff["reports/metrics.json"]
    assert changed["log_loss"]["old"] == metrics["log_loss"]
    assert changed["log_loss"]["new"] != metrics["log_loss"]
    assert "baselines.majority.accuracy" not in changed  # baselines do not depend on lr
    readable = run(["dvc", "metrics", "diff"], project).stdout
    assert "reports/metrics.json" in readable and "log_loss" in readable
