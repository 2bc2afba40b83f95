"""The library's model and bundle (spotify_genre/model/network.py, bundle.py): the MLP, device choice, the bundle's safe
loading and its checks, batched prediction."""

from __future__ import annotations

import builtins
import io
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from spotify_genre import model as model_module
from spotify_genre.errors import BundleError, PipelineError, PreprocessorMismatch
from spotify_genre.model import build_mlp, predict_proba, resolve_device
from spotify_genre.model.bundle import BUNDLE_FORMAT, load_bundle, save_bundle

FEATURES = ("danceability", "energy", "loudness", "tempo")
CLASSES = ("edm", "latin", "pop", "r&b", "rap", "rock")
ARCHITECTURE = {"n_features": len(FEATURES), "n_classes": len(CLASSES), "hidden_sizes": [8, 5], "dropout": 0.1}


def _trained_model(seed: int = 0) -> nn.Module:
    """A small MLP with a few optimizer steps behind it, so BatchNorm's running statistics are not the defaults."""
    torch.manual_seed(seed)
    model = build_mlp(**ARCHITECTURE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    features = torch.randn(64, len(FEATURES))
    labels = torch.randint(0, len(CLASSES), (64,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()
    return model.eval()


PREPROCESSOR = {"path": "models/preprocessor.json", "sha256": "ab" * 32}


def _save(path, model=None, **overrides):
    fields = dict(architecture=ARCHITECTURE, feature_names=FEATURES, class_names=CLASSES, preprocessor=PREPROCESSOR,
                  params={"lr": 0.05, "train": {"hidden_sizes": [8, 5]}}, data_sha256="cd" * 32)
    fields.update(overrides)
    save_bundle(path, model if model is not None else _trained_model(), **fields)


def _rewrite(path, change) -> None:
    """Load a bundle's raw dict, let `change` edit it, and save it back with torch.save."""
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)


def _refused_naming(path, key: str, expected: str):
    """pytest.raises for a BundleError whose one line is `path: not a valid model bundle: key: ...expected...`."""
    return pytest.raises(BundleError, match=rf"^{re.escape(str(path))}: not a valid model bundle: {re.escape(key)}: "
                                            rf"[^\n]*{re.escape(expected)}[^\n]*$")


class _CreatesFile:
    """Unpickling this object opens (and so creates) a file: what a malicious checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return builtins.open, (self.target, "w")


# --- the network and the device -------------------------------------------------------------------------------

def test_build_mlp_layers_in_order():
    net = build_mlp(n_features=7, n_classes=6, hidden_sizes=[16, 4], dropout=0.25)
    kinds = [type(layer) for layer in net]
    assert [issubclass(kind, expected) for kind, expected in zip(kinds, [
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear,
    ])] == [True] * 9 and len(kinds) == 9
    assert (net[0].in_features, net[0].out_features, net[4].out_features, net[8].out_features) == (7, 16, 4, 6)
    assert net[3].p == 0.25
    assert net(torch.randn(5, 7)).shape == (5, 6)


EMBEDDED = {**ARCHITECTURE, "embedding": {"columns": [0, 2, 3], "frequencies": 4, "dim": 3, "sigma": 0.1}}


def test_periodic_embedding_by_hand():
    torch.manual_seed(0)
    embedding = model_module.PeriodicEmbedding(n_inputs=2, frequencies=3, dim=4, sigma=0.5)
    inputs = torch.randn(5, 2)
    out = embedding(inputs)
    assert out.shape == (5, 2 * 4)
    for i in range(2):
        angles = 2 * np.pi * inputs[:, i:i + 1] * embedding.frequencies[i]
        periodic = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        expected = torch.relu(periodic @ embedding.weight[i] + embedding.bias[i])
        assert torch.allclose(out[:, 4 * i:4 * (i + 1)], expected, atol=1e-6)


def test_embedded_mlp_embeds_only_the_named_columns():
    torch.manual_seed(0)
    net = build_mlp(**EMBEDDED)
    assert net.mlp[0].in_features == len(FEATURES) - 3 + 3 * 3
    inputs = torch.randn(6, len(FEATURES))
    net.eval()
    changed = inputs.clone()
    changed[:, 1] += 1.0  # the passed-through column enters the first layer as it is
    first = net.mlp[0]
    delta = first(torch.cat([net.embedding(changed[:, [0, 2, 3]]), changed[:, [1]]], dim=1)) - \
        first(torch.cat([net.embedding(inputs[:, [0, 2, 3]]), inputs[:, [1]]], dim=1))
    assert torch.allclose(delta, first.weight[:, -1].expand_as(delta), atol=1e-5)
    assert net(inputs).shape == (6, len(CLASSES))


def test_bundle_with_an_embedding_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_mlp(**EMBEDDED).eval()
    _save(tmp_path / "model.pt", model, architecture=EMBEDDED)
    bundle = load_bundle(tmp_path / "model.pt", feature_names=FEATURES)
    assert bundle.architecture == EMBEDDED
    features = np.random.default_rng(4).normal(size=(30, len(FEATURES))).astype(np.float32)
    assert np.array_equal(predict_proba(bundle.model, features), predict_proba(model, features))


@pytest.mark.parametrize("embedding, key, expected", [
    ({"columns": [0, 9], "frequencies": 4, "dim": 3, "sigma": 0.1}, "architecture",
     "embedding.columns must be distinct input columns below n_features (4)"),
    ({"columns": [0, 0], "frequencies": 4, "dim": 3, "sigma": 0.1}, "architecture",
     "embedding.columns must be distinct input columns below n_features (4)"),
    ({"columns": [0], "frequencies": 0, "dim": 3, "sigma": 0.1}, "architecture.embedding.frequencies",
     "greater than or equal to 1 (got 0)"),
    ({"columns": [0], "frequencies": 4, "dim": 3}, "architecture.embedding.sigma", "missing key"),
    ({"columns": [0], "frequencies": 4, "dim": 3, "sigma": 0.1, "kind": "lstm"}, "architecture.embedding.kind",
     "unknown key"),
    ("periodic", "architecture.embedding", "(got 'periodic')"),
], ids=["column out of range", "column twice", "no frequencies", "no sigma", "unknown key", "not a mapping"])
def test_a_bad_embedding_entry_is_refused(tmp_path, embedding, key, expected):
    _save(tmp_path / "model.pt")
    _rewrite(tmp_path / "model.pt", lambda raw: raw["architecture"].update(embedding=embedding))
    with _refused_naming(tmp_path / "model.pt", key, expected):
        load_bundle(tmp_path / "model.pt")


def test_dropout_keeps_the_expected_share_and_rescales():
    torch.manual_seed(0)
    layer = build_mlp(n_features=2, n_classes=2, hidden_sizes=[2], dropout=0.3)[3]
    ones = torch.ones(200_000)
    out = layer.train()(ones)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert torch.equal(layer.eval()(ones), ones)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(PipelineError, match="train.device: cuda was asked for"):
        resolve_device("cuda")
    with pytest.raises(PipelineError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


# --- the bundle -------------------------------------------------------------------------------------------------

def test_bundle_round_trip_reproduces_predictions(tmp_path):
    model = _trained_model()
    path = tmp_path / "model.pt"
    _save(path, model)

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == BUNDLE_FORMAT
    assert set(raw["state_dict"]) == set(model.state_dict())
    assert all(torch.equal(raw["state_dict"][name], value) for name, value in model.state_dict().items())

    bundle = load_bundle(path, feature_names=list(FEATURES), class_names=CLASSES)
    assert not bundle.model.training
    assert all(value.device.type == "cpu" for value in bundle.model.state_dict().values())
    assert (bundle.feature_names, bundle.class_names) == (FEATURES, CLASSES)
    assert bundle.architecture == ARCHITECTURE
    assert (bundle.preprocessor.path, bundle.preprocessor.sha256) == (PREPROCESSOR["path"], PREPROCESSOR["sha256"])
    assert bundle.params == {"lr": 0.05, "train": {"hidden_sizes": [8, 5]}}
    assert bundle.data_sha256 == "cd" * 32
    features = np.random.default_rng(1).normal(size=(50, len(FEATURES))).astype(np.float32)
    assert np.array_equal(predict_proba(bundle.model, features), predict_proba(model, features))


def test_bundle_bytes_are_reproducible(tmp_path):
    _save(tmp_path / "a.pt", _trained_model())
    _save(tmp_path / "b.pt", _trained_model())
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write left its temporary file behind"


def test_bundle_holds_only_plain_values(tmp_path):
    with pytest.raises(TypeError, match=r"params.lr: float32"):
        _save(tmp_path / "model.pt", params={"lr": np.float32(0.1)})
    assert not (tmp_path / "model.pt").exists()


# --- refusals ---------------------------------------------------------------------------------------------------

def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match=r"model.pt: model bundle not found \(run `dvc repro train`"):
        load_bundle(tmp_path / "model.pt")


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running(tmp_path, how):
    marker = tmp_path / "was-run"
    path = tmp_path / "model.pt"
    if how == "torch.save":
        torch.save({"format": BUNDLE_FORMAT, "state_dict": _CreatesFile(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_CreatesFile(marker)))

    with pytest.raises(BundleError, match=r"model.pt: refused: not a bundle of tensors and plain values"):
        load_bundle(path)
    assert not marker.exists()

    # The same file does run code when loaded the unsafe way: the refusal above is what protects us.
    unsafe_marker = tmp_path / "unsafe-load-ran"
    payload = pickle.dumps(_CreatesFile(unsafe_marker))
    pickle.loads(payload)
    assert unsafe_marker.exists()


def test_refusal_names_the_unsafe_global(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"payload": _CreatesFile(tmp_path / "x")}, path)
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "open" in message and "nothing in it was run" in message
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content", [b"", b"hello, not a model", bytes(range(256)) * 4],
                         ids=["empty", "text", "binary"])
def test_damaged_file_is_refused(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(BundleError, match=r"model.pt: (not a model bundle|refused)") as caught:
        load_bundle(path)
    assert "\n" not in str(caught.value)


def test_truncated_bundle_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    _save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(BundleError, match="model.pt: not a model bundle"):
        load_bundle(path)


def test_wrong_format_version_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    _save(path)
    _rewrite(path, lambda raw: raw.update(format=BUNDLE_FORMAT + 1))
    with pytest.raises(BundleError, match=rf"bundle format {BUNDLE_FORMAT + 1}, but this version reads "
                                          rf"format {BUNDLE_FORMAT}"):
        load_bundle(path)


def test_plain_tensor_file_is_not_a_bundle(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_trained_model().state_dict(), path)
    with pytest.raises(BundleError, match="not a model bundle \\(no format version\\)"):
        load_bundle(path)


@pytest.mark.parametrize("given, expected", [
    (("danceability", "energy", "loudness"), "the model needs tempo"),
    (FEATURES + ("valence",), "it does not know valence"),
    (("energy", "danceability", "loudness", "tempo"), "the same names in another order"),
])
def test_feature_list_mismatch_is_refused(tmp_path, given, expected):
    path = tmp_path / "model.pt"
    _save(path)
    with pytest.raises(BundleError, match=f"the model's features do not match the data's: {expected}"):
        load_bundle(path, feature_names=given)


def test_class_list_mismatch_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    _save(path)
    with pytest.raises(BundleError, match="the model's classes do not match the data's: the model needs rock"):
        load_bundle(path, class_names=CLASSES[:-1])


@pytest.mark.parametrize("change, key, expected", [
    (lambda raw: raw.pop("class_names"), "class_names", "missing key"),
    (lambda raw: raw.update(feature_names="danceability"), "feature_names", "list (got 'danceability')"),
    (lambda raw: raw["feature_names"].__setitem__(1, 7), "feature_names.1", "string (got 7)"),
    (lambda raw: raw["architecture"].update(n_features=3), "(top level)",
     "architecture.n_features is 3, but there are 4 feature names"),
    (lambda raw: raw["architecture"].update(n_classes=7), "(top level)",
     "architecture.n_classes is 7, but there are 6 class names"),
    (lambda raw: raw["architecture"].update(activation="gelu"), "architecture.activation", "unknown key"),
    (lambda raw: raw["architecture"].update(dropout=1.0), "architecture.dropout", "less than 1 (got 1.0)"),
    (lambda raw: raw.update(smuggled="x"), "smuggled", "unknown key"),
    (lambda raw: raw.update(preprocessor="models/preprocessor.json"), "preprocessor",
     "(got 'models/preprocessor.json')"),
    (lambda raw: raw["preprocessor"].pop("path"), "preprocessor.path", "missing key"),
    (lambda raw: raw["preprocessor"].update(sha256="AB" * 32), "preprocessor.sha256", f"(got '{'AB' * 32}')"),
    (lambda raw: raw["preprocessor"].update(sha256="ab" * 31), "preprocessor.sha256", f"(got '{'ab' * 31}')"),
    (lambda raw: raw["state_dict"].update({"0.weight": [[0.0]]}), "state_dict.0.weight", "Tensor"),
], ids=["no class names", "feature names not a list", "feature name not a string", "n_features", "n_classes",
        "unknown architecture key", "dropout 1", "unknown top-level key", "preprocessor as a path",
        "preprocessor without path", "preprocessor sha256 upper case", "preprocessor sha256 short", "weight a list"])
def test_malformed_bundle_is_refused_naming_the_key(tmp_path, change, key, expected):
    path = tmp_path / "model.pt"
    _save(path)
    _rewrite(path, change)
    with _refused_naming(path, key, expected):
        load_bundle(path)


@pytest.mark.parametrize("change", [
    lambda raw: raw["state_dict"].pop("0.weight"),
    lambda raw: raw["state_dict"].update({"0.weight": torch.zeros(3, 3)}),
], ids=["weight missing", "weight of another shape"])
def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, change):
    path = tmp_path / "model.pt"
    _save(path)
    _rewrite(path, change)
    with pytest.raises(BundleError, match=rf"^{re.escape(str(path))}: the weights do not fit the architecture \("
                                          r"[^\n]*\)$"):
        load_bundle(path)


def test_a_bundle_trained_with_another_preprocessor_is_refused(tmp_path):
    """The preprocessor's sha256 the bundle records must be the one given: a mismatch is exit code 6."""
    path = tmp_path / "model.pt"
    _save(path)
    other = "ef" * 32
    with pytest.raises(PreprocessorMismatch) as caught:
        load_bundle(path, feature_names=FEATURES, class_names=CLASSES, preprocessor_sha256=other)
    message = str(caught.value)
    assert isinstance(caught.value, BundleError) and caught.value.exit_code == 6
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert PREPROCESSOR["sha256"][:12] in message and other[:12] in message and PREPROCESSOR["path"] in message

    bundle = load_bundle(path, feature_names=FEATURES, class_names=CLASSES,
                         preprocessor_sha256=PREPROCESSOR["sha256"])
    assert bundle.preprocessor.sha256 == PREPROCESSOR["sha256"]
    features = np.random.default_rng(5).normal(size=(10, len(FEATURES))).astype(np.float32)
    assert np.array_equal(predict_proba(bundle.model, features), predict_proba(load_bundle(path).model, features))


def test_model_loading_in_the_code_is_weights_only():
    """Every torch.load in the library and the stages asks for weights_only=True (safe loading, docs/guarantees.md)."""
    from pathlib import Path

    root = Path(model_module.__file__).parents[2]
    calls = [(path.relative_to(root).as_posix(), line.strip())
             for package in ("spotify_genre", "pipeline", "stages", "experiments")
             for path in sorted((root / package).rglob("*.py"))
             for line in path.read_text(encoding="utf-8").splitlines() if "torch.load(" in line]
    assert "spotify_genre/model/bundle.py" in {name for name, _ in calls}, \
        "expected the bundle loader's torch.load call"
    assert all("weights_only=True" in line for _, line in calls), calls


# --- prediction ---------------------------------------------------------------------------------------------------

def test_predict_proba_is_softmax_of_logits():
    model = _trained_model()
    features = np.random.default_rng(2).normal(size=(300, len(FEATURES)))
    probabilities = predict_proba(model, features, batch_size=64)
    assert probabilities.dtype == np.float64 and probabilities.shape == (300, len(CLASSES))
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor(features, dtype=torch.float32)).double(), dim=1).numpy()
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert np.allclose(predict_proba(model, features, batch_size=7), probabilities, atol=1e-6)


def test_predict_proba_uses_eval_mode_and_restores_the_mode():
    model = _trained_model().train()
    features = np.random.default_rng(3).normal(size=(20, len(FEATURES))).astype(np.float32)
    first = predict_proba(model, features)
    assert model.training, "the caller's mode should be restored"
    assert np.array_equal(first, predict_proba(model, features)), "dropout or batch statistics leaked in"


def test_predict_proba_of_no_rows():
    out = predict_proba(_trained_model(), np.zeros((0, len(FEATURES)), dtype=np.float32))
    assert out.shape == (0, len(CLASSES)) and out.dtype == np.float64


def test_predict_proba_rejects_a_vector():
    with pytest.raises(ValueError, match="2-D"):
        predict_proba(_trained_model(), np.zeros(len(FEATURES)))


def test_bundle_file_is_a_zip_with_a_fixed_archive_name(tmp_path):
    path = tmp_path / "model.pt"
    _save(path)
    names = zipfile.ZipFile(io.BytesIO(path.read_bytes())).namelist()
    assert names and all(name.startswith("archive/") for name in names), "the temp file's name leaked in"


# --- the ensemble (train.members) ------------------------------------------------------------------------------

def _member(ensemble: nn.Module, k: int, architecture: dict = EMBEDDED) -> nn.Module:
    """Member k of an embedded ensemble, copied into a single MLP of `architecture`."""
    single = build_mlp(**architecture)
    for name in ("frequencies", "weight", "bias"):
        getattr(single.embedding, name).data.copy_(getattr(ensemble.embedding, name).data[k])
    for layer, member_layer in zip(single.mlp, ensemble.mlp):
        if isinstance(layer, nn.Linear):
            layer.weight.data.copy_(member_layer.weight.data[k].T)
            layer.bias.data.copy_(member_layer.bias.data[k])
        elif isinstance(layer, nn.BatchNorm1d):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(layer, name).data.copy_(getattr(member_layer, name).data.view(*member_layer.shape)[k])
    return single


def test_an_ensemble_is_its_members_side_by_side_with_their_probabilities_averaged():
    torch.manual_seed(0)
    members = 3
    ensemble = build_mlp(**EMBEDDED, members=members).eval()
    features = torch.randn(40, len(FEATURES))
    with torch.no_grad():
        logits = ensemble(features)
    assert logits.shape == (40, members, len(CLASSES))
    singles = [_member(ensemble, k).eval() for k in range(members)]
    with torch.no_grad():
        for k, single in enumerate(singles):
            torch.testing.assert_close(logits[:, k], single(features), rtol=1e-5, atol=1e-5)
    expected = np.mean([torch.softmax(single(features).double(), 1).detach().numpy() for single in singles], axis=0)
    np.testing.assert_allclose(predict_proba(ensemble, features.numpy()), expected, rtol=1e-5)


def test_batch_norm_normalises_each_member_on_its_own():
    norm = model_module.EnsembleBatchNorm(units=2, members=3).train()
    inputs = torch.randn(50, 3, 2) * torch.tensor([1.0, 10.0, 100.0])[None, :, None] + 5.0
    out = norm(inputs)
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=0, unbiased=False), torch.ones(3, 2), atol=1e-3, rtol=0)


def test_each_member_learns_as_it_would_alone():
    """The ensemble's loss is the sum of the members' own losses: each member's gradient is what it would be on
    its own (a mean over members would shrink every member's step)."""
    from spotify_genre.model import member_loss

    torch.manual_seed(1)
    members = 2
    architecture = {**EMBEDDED, "dropout": 0.0}
    ensemble = build_mlp(**architecture, members=members)
    features, labels = torch.randn(16, len(FEATURES)), torch.randint(0, len(CLASSES), (16,))
    member_loss(nn.CrossEntropyLoss(), ensemble(features), labels).backward()
    for k in range(members):
        single = _member(ensemble, k, architecture)
        nn.functional.cross_entropy(single(features), labels).backward()
        torch.testing.assert_close(ensemble.embedding.weight.grad[k], single.embedding.weight.grad, rtol=1e-4,
                                   atol=1e-6)
        torch.testing.assert_close(ensemble.mlp[0].weight.grad[k], single.mlp[0].weight.grad.T, rtol=1e-4,
                                   atol=1e-6)


def test_an_ensemble_round_trips_through_the_safe_bundle(tmp_path):
    torch.manual_seed(0)
    architecture = {**EMBEDDED, "members": 4}
    model = build_mlp(**architecture).eval()
    _save(tmp_path / "model.pt", model, architecture=architecture)
    bundle = load_bundle(tmp_path / "model.pt", feature_names=FEATURES)
    assert bundle.architecture["members"] == 4
    features = np.random.default_rng(4).normal(size=(30, len(FEATURES))).astype(np.float32)
    assert np.array_equal(predict_proba(bundle.model, features), predict_proba(model, features))
