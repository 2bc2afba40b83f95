"""The train stage: it learns, stops early, keeps the best epoch, is deterministic, and tracks through DVCLive."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline import mlp_fitting as training
from pipeline.artifacts import ProcessedSplit, read_processed, write_processed
from pipeline.metrics import confusion_counts, macro_f1
from pipeline.mlp_predictions import MLP_PREDICTIONS, PREDICTED_SPLITS, read_mlp_predictions
from pipeline.params import parse_params
from pipeline.preprocessor_fitting import fit_preprocessor
from pipeline.subgenres import fit_subgenres
from pipeline.synthetic import synthetic_songs
from spotify_genre.model import build_mlp, predict_proba, resolve_device
from spotify_genre.model.bundle import load_bundle, save_bundle
from spotify_genre.preprocessing.preprocessor import Preprocessor, save_preprocessor
from spotify_genre.songs.features import candidate_features
from spotify_genre.songs.schema import GENRES
from stages import train
from tests.conftest import ROOT, default_params, with_overrides

NUMERIC = ("danceability", "energy", "loudness", "speechiness", "acousticness", "instrumentalness", "liveness",
           "valence", "tempo", "duration_ms", "track_popularity")
# Small and quick; one thread, so a busy machine does not slow the runs down by oversubscription.
QUICK = {"train.hidden_sizes": [32, 16], "train.max_epochs": 12, "train.patience": 12, "train.threads": 1,
         "batch_size": 128}
DATA_SHA = "5e" * 32
TRACKED = ("lr.tsv", "train/accuracy.tsv", "train/f1_macro.tsv", "train/loss.tsv", "val/accuracy.tsv",
           "val/f1_macro.tsv", "val/loss.tsv")


def preprocessed_splits(rows: int, seed: int = 0,
                        train_share: float = 0.75) -> tuple[ProcessedSplit, ProcessedSplit, Preprocessor]:
    """Train and val splits of synthetic songs, standardised by a real preprocessor fitted on the training rows."""
    songs = synthetic_songs(rows, seed)
    labels = songs["playlist_genre"].map({genre: i for i, genre in enumerate(GENRES)}).to_numpy(dtype=np.int64)
    cut = int(rows * train_share)
    params = parse_params(with_overrides(default_params(), {"preprocess.scaler": "standard",
                                                            "preprocess.log_transform": []})).preprocess
    pre = fit_preprocessor(candidate_features(songs.iloc[:cut], NUMERIC), params, data_sha256=DATA_SHA)
    scaled = pre.transform(candidate_features(songs, NUMERIC))
    assert pre.output_features == NUMERIC
    ids = songs["track_id"].to_numpy(dtype=str)
    subgenres = songs["playlist_subgenre"].fillna("").to_numpy(dtype=str)
    return (ProcessedSplit(scaled[:cut], labels[:cut], ids[:cut], NUMERIC, subgenres[:cut]),
            ProcessedSplit(scaled[cut:], labels[cut:], ids[cut:], NUMERIC, subgenres[cut:]), pre)


def processed_splits(rows: int, seed: int = 0, train_share: float = 0.75) -> tuple[ProcessedSplit, ProcessedSplit]:
    return preprocessed_splits(rows, seed, train_share)[:2]


def make_inputs(root: Path, rows: int = 2400, *, overrides: dict | None = None, shuffle_val_labels: bool = False,
                train_share: float = 0.75) -> Path:
    """A folder laid out like the repository, holding what the train stage reads."""
    root.mkdir(parents=True, exist_ok=True)
    train_split, val_split, preprocessor = preprocessed_splits(rows, train_share=train_share)
    if shuffle_val_labels:
        labels = np.random.default_rng(1).permutation(val_split.labels)
        val_split = ProcessedSplit(val_split.features, labels, val_split.track_ids, val_split.feature_names)
    write_processed(root / "data/processed/train.parquet", train_split)
    write_processed(root / "data/processed/val.parquet", val_split)
    # The stage predicts the test split after training, for evaluate: here the validation rows again.
    write_processed(root / "data/processed/test.parquet", val_split)
    save_preprocessor(root / "models/preprocessor.json", preprocessor)
    write_params(root, {**QUICK, **(overrides or {})})
    return root


def write_params(root: Path, overrides: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(with_overrides(default_params(), overrides), sort_keys=False))


@contextlib.contextmanager
def torch_globals_restored():
    """main() sets torch's process-wide thread count and determinism; give them back to the other tests."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    with torch_globals_restored():
        yield


def run_stage(root: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.chdir(root)
    code = train.main([])
    out, err = capsys.readouterr()
    return code, out, err


def tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def tsv_column(path: Path) -> tuple[list[int], list[float]]:
    header, *rows = path.read_text().splitlines()
    assert header.split("\t")[0] == "step", header
    steps = [int(row.split("\t")[0]) for row in rows]
    return steps, [float(row.split("\t")[1]) for row in rows]


def val_loss_and_accuracy(root: Path) -> tuple[float, float]:
    """The saved model's loss and accuracy on the validation split, recomputed from the bundle."""
    val = read_processed(root / "data/processed/val.parquet")
    bundle = load_bundle(root / "models/model.pt", feature_names=val.feature_names, class_names=GENRES)
    probabilities = predict_proba(bundle.model, val.features)
    loss = -np.mean(np.log(probabilities[np.arange(len(val.labels)), val.labels]))
    return float(loss), float(np.mean(probabilities.argmax(axis=1) == val.labels))


# --- two full runs of the stage, shared by the tests below ------------------------------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    roots = []
    with pytest.MonkeyPatch.context() as monkeypatch, torch_globals_restored():
        for name in ("first", "second"):
            root = make_inputs(tmp_path_factory.mktemp(name))
            monkeypatch.chdir(root)
            assert train.main([]) == 0
            roots.append(root)
    return roots[0], roots[1]


def test_learns_well_above_chance(two_runs):
    root, _ = two_runs
    summary = json.loads((root / "dvclive/metrics.json").read_text())
    assert summary["best_val_accuracy"] > 0.45, summary  # chance is 1/6
    assert summary["best_val_f1_macro"] > 0.4, summary
    _, val_loss = tsv_column(root / "dvclive/plots/metrics/val/loss.tsv")
    assert min(val_loss) < val_loss[0] - 0.1, "validation loss should fall as the model learns"


def test_two_runs_are_bit_identical(two_runs):
    first, second = two_runs
    raw = [torch.load(root / "models/model.pt", weights_only=True)["state_dict"] for root in (first, second)]
    assert list(raw[0]) == list(raw[1])
    for name in raw[0]:
        assert raw[0][name].numpy().tobytes() == raw[1][name].numpy().tobytes(), name
    assert (first / "models/model.pt").read_bytes() == (second / "models/model.pt").read_bytes()
    assert tree(first / "dvclive") == tree(second / "dvclive")
    assert (first / MLP_PREDICTIONS).read_bytes() == (second / MLP_PREDICTIONS).read_bytes()


def test_the_predictions_for_evaluate_are_the_saved_bundles(two_runs):
    """data/mlp/predictions.parquet: what a reader of models/model.pt predicts for the val and test rows, bit for
    bit, and a record of that bundle (its sha256 and what the model card reports)."""
    root, _ = two_runs
    splits = {name: read_processed(root / f"data/processed/{name}.parquet") for name in PREDICTED_SPLITS}
    record, probabilities = read_mlp_predictions({name: split.track_ids for name, split in splits.items()},
                                                 root / MLP_PREDICTIONS)
    bundle = load_bundle(root / "models/model.pt")
    for name, split in splits.items():
        assert np.array_equal(probabilities[name], predict_proba(bundle.model, split.features)), name
    assert record.model_sha256 == hashlib.sha256((root / "models/model.pt").read_bytes()).hexdigest()
    assert (record.feature_names, record.class_names) == (list(bundle.feature_names), list(bundle.class_names))
    assert (record.architecture, record.params, record.data_sha256) == (bundle.architecture, bundle.params,
                                                                         bundle.data_sha256)
    assert record.preprocessor_sha256 == bundle.preprocessor.sha256 == hashlib.sha256(
        (root / "models/preprocessor.json").read_bytes()).hexdigest()


def test_dvclive_writes_only_the_declared_files_every_epoch(two_runs):
    root, _ = two_runs
    files = tree(root / "dvclive")
    assert sorted(files) == ["metrics.json"] + [f"plots/metrics/{name}" for name in TRACKED]
    summary = json.loads(files["metrics.json"])
    assert set(summary) == {"best_epoch", "stopped_epoch", "best_val_loss", "best_val_accuracy",
                            "best_val_f1_macro", "step"}
    for name in TRACKED:
        steps, values = tsv_column(root / "dvclive/plots/metrics" / name)
        assert steps == list(range(1, summary["stopped_epoch"] + 1)), name
        assert all(np.isfinite(values)), name
    for content in files.values():
        assert b"timestamp" not in content and b"seconds" not in content
    _, losses = tsv_column(root / "dvclive/plots/metrics/val/loss.tsv")
    assert summary["best_val_loss"] == min(losses) == losses[summary["best_epoch"] - 1]
    assert not any(path.name.startswith(".") for path in (root / "dvclive").iterdir()), "staging left behind"
    assert not (root / "dvc.yaml").exists() and not (root / ".dvc").exists()


def test_tracked_f1_and_accuracy_agree_with_the_saved_model(two_runs):
    root, _ = two_runs
    summary = json.loads((root / "dvclive/metrics.json").read_text())
    loss, accuracy = val_loss_and_accuracy(root)
    assert accuracy == pytest.approx(summary["best_val_accuracy"], abs=1e-9)
    assert loss == pytest.approx(summary["best_val_loss"], abs=1e-5)
    val = read_processed(root / "data/processed/val.parquet")
    predicted = predict_proba(load_bundle(root / "models/model.pt").model, val.features).argmax(axis=1)
    assert macro_f1(confusion_counts(val.labels, predicted, len(GENRES))) == pytest.approx(
        summary["best_val_f1_macro"], abs=1e-9)


def test_bundle_records_what_the_model_needs(two_runs):
    root, _ = two_runs
    raw = torch.load(root / "models/model.pt", map_location="cpu", weights_only=True)
    assert raw["feature_names"] == list(NUMERIC) and raw["class_names"] == list(GENRES)
    config = default_params()["train"]["embedding"]
    train_split = read_processed(root / "data/processed/train.parquet")
    subgenres = fit_subgenres(train_split.labels, train_split.subgenres)
    assert raw["architecture"] == {
        "n_features": len(NUMERIC), "n_classes": 6, "hidden_sizes": [32, 16], "dropout": 0.2,
        "embedding": {"columns": list(range(len(NUMERIC))), "frequencies": config["frequencies"],
                      "dim": config["dim"], "sigma": config["sigma"]},
        "members": 1, "text_encoder": None, "subgenres": {"names": list(subgenres.names),
                                                          "genres": subgenres.genres.tolist()}}
    preprocessor_bytes = (root / "models/preprocessor.json").read_bytes()
    assert raw["preprocessor"] == {"path": "models/preprocessor.json",
                                   "sha256": hashlib.sha256(preprocessor_bytes).hexdigest()}
    assert raw["data_sha256"] == DATA_SHA
    params = parse_params(yaml.safe_load((root / "params.yaml").read_text()))
    assert raw["params"] == {"lr": params.lr, "momentum": params.momentum, "batch_size": params.batch_size,
                             "train": params.train.model_dump()}


def test_timing_is_reported_outside_the_tracked_files(two_runs):
    root, _ = two_runs
    timing = json.loads((root / "reports/timing/train.json").read_text())
    summary = json.loads((root / "dvclive/metrics.json").read_text())
    assert timing["epochs"] == summary["stopped_epoch"] and timing["best_epoch"] == summary["best_epoch"]
    assert timing["train_samples_per_s"] > 0 and timing["fit_seconds"] > 0 and timing["device"] == "cpu"
    assert timing["train_rows"] == 1800 and timing["val_rows"] == 600
    # the stage's other steps, for the pipeline bench's breakdown of what is not the fit
    assert timing["stage_seconds"] > timing["fit_seconds"] + timing["predictions_s"] + timing["tracking_s"]
    assert timing["predictions_s"] > 0 and timing["tracking_s"] > 0
    assert "startup_s" in timing  # a process's start is read from /proc: None where there is none


def test_progress_is_one_plain_line_per_epoch_off_a_terminal(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, rows=600, overrides={"train.max_epochs": 3, "train.patience": 3})
    code, out, err = run_stage(root, monkeypatch, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]
    assert "val loss" in lines[0] and "acc" in lines[0]
    assert lines[3].startswith("trained 3 epochs on cpu in ") and "samples/s" in lines[3]
    assert len(lines) == 4


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, rows=600, overrides={"train.max_epochs": 3, "train.patience": 3})
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run_stage(root, monkeypatch, capsys)
    assert code == 0, err
    assert "3/3" in err and "val_acc=" in err and "loss=" in err, err
    assert out.startswith("trained 3 epochs") and "epoch   1/3" not in out


def test_diverging_run_fails_without_a_model(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, rows=300)
    split = read_processed(root / "data/processed/train.parquet")
    huge = np.clip(split.features, -3, 3) * 1e38  # finite, but a layer's sum overflows
    write_processed(root / "data/processed/train.parquet",
                    dataclasses.replace(split, features=huge))
    code, _, err = run_stage(root, monkeypatch, capsys)
    assert code == 1 and err.startswith("error: training diverged at epoch 1 "), err
    assert not (root / "models/model.pt").exists() and not (root / "dvclive").exists()


# --- early stopping and the best epoch --------------------------------------------------------------------------

def test_early_stopping_keeps_the_best_epoch(tmp_path, monkeypatch, capsys):
    # Validation labels shuffled: the validation loss stops improving at once, whatever the model learns.
    # 1801 training rows and batches of 100: the last batch would hold one row, and must be folded in.
    root = make_inputs(tmp_path, rows=2401, shuffle_val_labels=True, train_share=1801 / 2401,
                       overrides={"train.max_epochs": 40, "train.patience": 3, "batch_size": 100})
    code, _, err = run_stage(root, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((root / "reports/timing/train.json").read_text())["train_rows"] == 1801
    summary = json.loads((root / "dvclive/metrics.json").read_text())
    assert summary["stopped_epoch"] < 40
    assert summary["stopped_epoch"] == summary["best_epoch"] + 3
    _, losses = tsv_column(root / "dvclive/plots/metrics/val/loss.tsv")
    assert len(losses) == summary["stopped_epoch"]
    assert losses[-1] != pytest.approx(summary["best_val_loss"], abs=1e-6)
    saved_loss, _ = val_loss_and_accuracy(root)
    assert saved_loss == pytest.approx(summary["best_val_loss"], abs=1e-5), "the saved weights are not the best"


def test_min_delta_counts_small_improvements_as_none():
    config = parse_params(with_overrides(default_params(), {"train.min_delta": 10.0, "train.patience": 2,
                                                            "train.max_epochs": 20})).train
    torch.manual_seed(0)
    train_split, val_split = processed_splits(600)
    cpu = torch.device("cpu")
    result = training.fit(build_mlp(len(NUMERIC), 6, [8], 0.0), training.on_device(train_split, cpu),
                       training.on_device(val_split, cpu), lr=0.05,
                       momentum=0.9, batch_size=64, config=config, n_classes=6)
    assert (result.best_epoch, result.stopped_epoch) == (1, 3)


def test_batch_bounds_fold_a_single_last_row():
    assert training.batch_bounds(256, 256) == [(0, 256)]
    assert training.batch_bounds(257, 256) == [(0, 257)]
    assert training.batch_bounds(300, 256) == [(0, 256), (256, 300)]
    assert training.batch_bounds(513, 256) == [(0, 256), (256, 513)]
    assert training.batch_bounds(5, 2) == [(0, 2), (2, 5)]
    assert training.batch_bounds(2, 256) == [(0, 2)]


@pytest.mark.parametrize("schedule, expected", [
    ("none", [0.1] * 6),
    ("step", [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
    ("cosine", [0.1 * (1 + np.cos(np.pi * epoch / 6)) / 2 for epoch in range(6)]),
    ("plateau", [0.1, 0.1, 0.1, 0.05, 0.05, 0.025]),
])
def test_schedules(schedule, expected):
    config = parse_params(with_overrides(default_params(), {
        "train.schedule": schedule, "train.max_epochs": 6, "train.step_size": 2, "train.gamma": 0.5,
        "train.plateau_patience": 1, "train.min_delta": 0.0})).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = training.make_scheduler(optimizer, config)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule == "plateau":
            scheduler.step(1.0)  # a validation loss that never improves
        elif scheduler is not None:
            scheduler.step()
    assert seen == pytest.approx(expected)


def test_warmup_then_cosine():
    config = parse_params(with_overrides(default_params(), {
        "train.schedule": "cosine", "train.max_epochs": 6, "train.warmup_epochs": 2})).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = training.make_scheduler(optimizer, config)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1 / 3, 0.2 / 3] + [0.1 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)])


def _optimizer(name: str) -> torch.optim.Optimizer:
    config = parse_params(with_overrides(default_params(), {"train.optimizer": name,
                                                            "train.weight_decay": 0.01})).train
    return training.make_optimizer(build_mlp(3, 6, [4], 0.0), 0.2, 0.8, config)


def test_sgd_takes_the_momentum_and_weight_decay():
    optimizer = _optimizer("sgd")
    assert type(optimizer) is training.MomentumSGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.2, 0.8, 0.01)
    assert group["nesterov"] is False and group["dampening"] == 0


@pytest.mark.parametrize("schedule, warmup", [("cosine", 2), ("step", 0), ("none", 1)])
def test_momentum_sgd_and_its_schedule_give_torch_optims_weights_to_the_bit(schedule, warmup):
    """MomentumSGD with EpochSchedule against torch.optim.SGD with LambdaLR, from the same weights, on the same
    batches, over several epochs of a small MLP with batch norm, dropout, weight decay and momentum."""
    config = parse_params(with_overrides(default_params(), {
        "train.schedule": schedule, "train.warmup_epochs": warmup, "train.max_epochs": 6, "train.step_size": 2,
        "train.weight_decay": 0.01})).train
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(64, 5)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, 64))

    def trained(ours: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_mlp(5, 3, [8], 0.2)
        if ours:
            optimizer = training.make_optimizer(model, 0.1, 0.9, config)
            scheduler = training.make_scheduler(optimizer, config)
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                          lambda epoch: training.lr_factor(epoch, config))
        for _ in range(6):
            for start in range(0, 64, 16):
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x[start:start + 16]), y[start:start + 16]).backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
        return [tensor.detach().clone() for tensor in model.state_dict().values()]

    assert all(torch.equal(a, b) for a, b in zip(trained(True), trained(False), strict=True))


def test_training_with_the_default_params_does_not_import_torchs_compiler():
    """torch.optim's optimisers and torch.use_deterministic_algorithms import torch._dynamo (and sympy), about a
    second of start-up; training with the default params needs neither. A fresh process, as a stage is."""
    code = ("import stages, sys, numpy as np, torch\n"
            "from pipeline import mlp_fitting as training\n"
            "from pipeline.params import load_params\n"
            "from spotify_genre.model.network import build_mlp\n"
            "config = load_params().train\n"
            "training.seed_everything(0, 1, torch.device('cpu'))\n"
            "assert torch.are_deterministic_algorithms_enabled()\n"
            "model = build_mlp(4, 6, [8], 0.2)\n"
            "optimizer = training.make_optimizer(model, 0.05, 0.9, config)\n"
            "scheduler = training.make_scheduler(optimizer, config)\n"
            "model(torch.randn(8, 4)).sum().backward(); optimizer.step(); scheduler.step()\n"
            "print(sorted(name for name in ('torch._dynamo', 'sympy') if name in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_adamw_has_no_momentum_but_its_default_betas_and_the_weight_decay():
    optimizer = _optimizer("adamw")
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert "momentum" not in group  # params.yaml's momentum is SGD's; AdamW's betas stay torch's defaults
    assert group["betas"] == (0.9, 0.999)
    assert (group["lr"], group["weight_decay"]) == (0.2, 0.01)


def test_embedding_takes_the_continuous_columns_and_leaves_indicators():
    features = np.array([[0.5, 1.0, 0.0, 2.0], [-1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 0.0, 2.0]], dtype=np.float32)
    assert training.continuous_columns(features) == [0, 3]
    config = parse_params(default_params()).train
    embedding = training.embedding_config(features, config)
    assert embedding == {"columns": [0, 3], "frequencies": config.embedding.frequencies,
                         "dim": config.embedding.dim, "sigma": config.embedding.sigma}
    off = config.model_copy(update={"embedding": config.embedding.model_copy(update={"kind": "none"})})
    assert training.embedding_config(features, off) is None
    assert training.embedding_config(features[:, [1, 2]], config) is None


def _cross_entropy(model: torch.nn.Module, split: ProcessedSplit, smoothing: float = 0.0) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(split.features))
    return torch.nn.functional.cross_entropy(logits.double(), torch.tensor(split.labels),
                                             label_smoothing=smoothing).item()


@pytest.mark.parametrize("lr", [1e-9, 0.05])
def test_label_smoothing_changes_the_training_loss_only(lr):
    """Smoothing raises the training loss; the validation loss is the plain cross-entropy of the model either way.

    At lr 1e-9 both runs keep (almost) the same weights and see the same batches, so what differs is the loss alone."""
    train_split, val_split = processed_splits(600)
    cpu = torch.device("cpu")
    epochs = {}
    for smoothing in (0.0, 0.2):
        config = parse_params(with_overrides(default_params(), {
            "train.label_smoothing": smoothing, "train.max_epochs": 1, "train.embedding.kind": "none"})).train
        torch.manual_seed(0)
        model = build_mlp(len(NUMERIC), 6, [8], 0.0)
        result = training.fit(model, training.on_device(train_split, cpu), training.on_device(val_split, cpu),
                              lr=lr, momentum=0.9, batch_size=64, config=config, n_classes=6)
        model.load_state_dict(result.best_state)  # the weights after epoch 1, which its val loss measured
        epoch = epochs[smoothing] = result.history[0]
        assert epoch.val_loss == pytest.approx(_cross_entropy(model, val_split), abs=1e-6)
        if smoothing:
            assert abs(epoch.val_loss - _cross_entropy(model, val_split, smoothing)) > 1e-3
    assert epochs[0.2].train_loss > epochs[0.0].train_loss + 0.01
    if lr == 1e-9:
        assert epochs[0.2].val_loss == pytest.approx(epochs[0.0].val_loss, abs=1e-6)


def test_the_epochs_val_f1_is_the_macro_f1_over_all_six_classes():
    """Each epoch's val F1 is macro_f1 of the model's validation predictions, a genre absent from the validation
    rows and never predicted counting as 0 (so it is 5/6 of the mean over the genres present)."""
    train_split, val_split = processed_splits(1200)
    absent = len(GENRES) - 1

    def without_absent(split: ProcessedSplit) -> ProcessedSplit:
        keep = split.labels != absent
        return ProcessedSplit(split.features[keep], split.labels[keep], split.track_ids[keep], split.feature_names,
                              split.subgenres[keep])

    train_split, val_split = without_absent(train_split), without_absent(val_split)
    config = parse_params(with_overrides(default_params(), {
        "train.max_epochs": 4, "train.patience": 4, "train.min_delta": 0.0, "train.embedding.kind": "none"})).train
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_mlp(len(NUMERIC), len(GENRES), [16], 0.0)
    result = training.fit(model, training.on_device(train_split, cpu), training.on_device(val_split, cpu), lr=0.05,
                          momentum=0.9, batch_size=64, config=config, n_classes=len(GENRES))
    model.load_state_dict(result.best_state)
    predicted = predict_proba(model, val_split.features).argmax(axis=1)
    confusion = confusion_counts(val_split.labels, predicted, len(GENRES))
    assert confusion[absent].sum() == 0 and confusion[:, absent].sum() == 0, "the absent genre was predicted"
    present = [2 * confusion[c, c] / (confusion[c].sum() + confusion[:, c].sum()) for c in range(absent)]
    assert result.best.val_f1_macro == pytest.approx(macro_f1(confusion), abs=1e-12)
    assert result.best.val_f1_macro == pytest.approx(sum(present) / len(GENRES), abs=1e-12)
    assert result.best.val_accuracy == pytest.approx(np.mean(predicted == val_split.labels), abs=1e-12)


# --- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, key", [
    ({"lr": 0.0}, "lr"),
    ({"lr": -0.1}, "lr"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.5}, "momentum"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 1}, "batch_size"),
    ({"train.epochs": 5}, "train.epochs: unknown key"),
    ({"train.device": "tpu"}, "train.device"),
    ({"train.schedule": "exponential"}, "train.schedule"),
    ({"train.hidden_sizes": []}, "train.hidden_sizes"),
    ({"train.dropout": 1.0}, "train.dropout"),
    ({"train.optimizer": "lbfgs"}, "train.optimizer"),
    ({"train.embedding.dim": 0}, "train.embedding.dim"),
])
def test_invalid_params_fail_before_any_work(tmp_path, monkeypatch, capsys, overrides, key):
    # No data at all: a params error must come first.
    tmp_path.joinpath("params.yaml").write_text(yaml.safe_dump(with_overrides(default_params(), overrides)))
    code, out, err = run_stage(tmp_path, monkeypatch, capsys)
    assert code == 2
    assert err.startswith(f"error: params.yaml: {key}") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_cuda_asked_for_without_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_params(tmp_path, {"train.device": "cuda"})
    code, _, err = run_stage(tmp_path, monkeypatch, capsys)
    assert code == 1 and err.startswith("error: train.device: cuda was asked for"), err


def test_missing_processed_data(tmp_path, monkeypatch, capsys):
    write_params(tmp_path, QUICK)
    code, _, err = run_stage(tmp_path, monkeypatch, capsys)
    assert code == 3
    assert err == "error: data/processed/train.parquet: not found; run `dvc repro preprocess` first\n"


def test_preprocessor_without_data_hash(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, rows=300)
    content = json.loads((root / "models/preprocessor.json").read_text())
    del content["data_sha256"]
    (root / "models/preprocessor.json").write_text(json.dumps(content))
    code, _, err = run_stage(root, monkeypatch, capsys)
    assert code == 5 and err.count("\n") == 1, err
    assert err.startswith("error: models/preprocessor.json: not a valid preprocessor: data_sha256: missing key"), err
    assert not (root / "models/model.pt").exists()


def test_missing_preprocessor(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, rows=300)
    (root / "models/preprocessor.json").unlink()
    code, _, err = run_stage(root, monkeypatch, capsys)
    assert code == 5 and err.count("\n") == 1, err
    assert err.startswith("error: models/preprocessor.json: not found; run `dvc repro preprocess`"), err
    assert not (root / "models/model.pt").exists()


def test_val_with_other_features(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, rows=300)
    val = read_processed(root / "data/processed/val.parquet")
    write_processed(root / "data/processed/val.parquet",
                    ProcessedSplit(val.features, val.labels, val.track_ids, NUMERIC[::-1]))
    code, _, err = run_stage(root, monkeypatch, capsys)
    assert code == 3 and err.count("\n") == 1, err
    assert err == ("error: data/processed/val.parquet: feature columns differ from data/processed/train.parquet's; "
                   "run `dvc repro preprocess` again\n")


def test_non_finite_feature(tmp_path, monkeypatch, capsys):
    root = make_inputs(tmp_path, rows=300)
    split = read_processed(root / "data/processed/train.parquet")
    features = split.features.copy()
    features[4, 2] = np.nan
    write_processed(root / "data/processed/train.parquet",
                    dataclasses.replace(split, features=features))
    code, _, err = run_stage(root, monkeypatch, capsys)
    assert code == 3 and "train.parquet: row 5, column 'loudness': not a finite number" in err


# --- CUDA -----------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here; this test runs where a GPU is present")
def test_trains_on_cuda_and_the_bundle_loads_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    config = parse_params(with_overrides(default_params(), {**QUICK, "train.device": "cuda"})).train
    device = resolve_device(config.device)
    training.seed_everything(config.seed, config.threads, device)
    train_split, val_split = processed_splits(2400)
    embedding = training.embedding_config(train_split.features, config)
    assert embedding is not None, "the default periodic embedding should run on the GPU too"

    def fit_once():
        torch.manual_seed(config.seed)
        model = build_mlp(len(NUMERIC), 6, config.hidden_sizes, config.dropout, embedding).to(device)
        result = training.fit(model, training.on_device(train_split, device), training.on_device(val_split, device),
                           lr=0.05, momentum=0.9, batch_size=128, config=config, n_classes=6)
        model.load_state_dict(result.best_state)
        return model, result

    model, result = fit_once()
    assert next(model.parameters()).device.type == "cuda"
    assert result.best.val_accuracy > 0.45
    _, again = fit_once()
    assert all(torch.equal(result.best_state[name], again.best_state[name]) for name in result.best_state)

    architecture = {"n_features": len(NUMERIC), "n_classes": 6, "hidden_sizes": config.hidden_sizes,
                    "dropout": config.dropout, "embedding": embedding}
    save_bundle(tmp_path / "model.pt", model, architecture=architecture, feature_names=NUMERIC, class_names=GENRES,
                preprocessor={"path": "models/preprocessor.json", "sha256": "0" * 64}, params={},
                data_sha256=DATA_SHA)
    bundle = load_bundle(tmp_path / "model.pt", feature_names=NUMERIC)
    assert next(bundle.model.parameters()).device.type == "cpu"
    on_cpu = predict_proba(bundle.model, val_split.features)
    on_cuda = predict_proba(model, val_split.features)
    assert np.allclose(on_cpu, on_cuda, atol=1e-4)
    assert np.mean(on_cpu.argmax(axis=1) == val_split.labels) == pytest.approx(result.best.val_accuracy, abs=0.01)
