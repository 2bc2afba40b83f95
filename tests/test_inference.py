"""The numpy forward pass (spotify_genre/model/inference.py) against torch's, for every network build_mlp makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spotify_genre.model import build_mlp, log_probabilities, predict_proba
from spotify_genre.model.inference import compile_network
from spotify_genre.songs.features import with_characters

N_FEATURES, N_CLASSES = 12, 6
EMBEDDING = {"columns": [0, 1, 2, 5, 7, 8, 9], "frequencies": 4, "dim": 3, "sigma": 0.5}
SUBGENRES = {"names": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"], "genres": [0, 0, 1, 2, 2, 2, 3, 4, 5, 5]}
NETWORKS = {
    "plain": {},
    "embedded": {"embedding": EMBEDDING},
    "ensemble": {"members": 3},
    "embedded ensemble": {"embedding": EMBEDDING, "members": 3},
    "subgenre outputs": {"embedding": EMBEDDING, "subgenres": SUBGENRES},
    "subgenre outputs, ensemble": {"members": 3, "subgenres": SUBGENRES},
}


def _features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, N_FEATURES)).astype(np.float32)


def _trained(**architecture) -> torch.nn.Module:
    """A network whose batch norms have running statistics of their own, and whose dropout is on when training."""
    torch.manual_seed(0)
    model = build_mlp(N_FEATURES, N_CLASSES, [16, 8], 0.3, **architecture)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = torch.from_numpy(_features(512, seed=1) * 2.0 + 0.5)
    labels = torch.from_numpy(np.random.default_rng(2).integers(0, N_CLASSES, 512))
    model.train()
    for _ in range(20):
        optimiser.zero_grad()
        logits = model(inputs)
        logits = logits if logits.dim() == 2 else log_probabilities(logits)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimiser.step()
    return model.eval()


def _torch_probabilities(model: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.exp(log_probabilities(model(torch.from_numpy(features)).double())).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("architecture", NETWORKS.values(), ids=NETWORKS.keys())
def test_the_numpy_pass_computes_what_torch_computes(architecture):
    model = _trained(**architecture)
    features = _features(3000)
    network = compile_network(model)
    assert network is not None
    ours, theirs = network.probabilities(features), _torch_probabilities(model, features)
    assert ours.dtype == np.float64 and ours.shape == (3000, N_CLASSES)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-12)
    assert np.array_equal(ours.argmax(axis=1), theirs.argmax(axis=1))


@pytest.mark.slow
@pytest.mark.parametrize("architecture", NETWORKS.values(), ids=NETWORKS.keys())
def test_predict_proba_on_the_cpu_is_the_numpy_pass_in_batches(architecture):
    model = _trained(**architecture)
    features = _features(5000)
    network = compile_network(model)
    expected = np.concatenate([network.probabilities(features[start:start + 2048]) for start in range(0, 5000, 2048)])
    assert np.array_equal(predict_proba(model, features), expected)
    assert not model.training, "predict_proba changed the model's mode"


def test_the_weights_are_copied_at_compile_time_and_the_model_is_left_as_it_was():
    model = _trained(embedding=EMBEDDING)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    network = compile_network(model)
    features = _features(100)
    first = network.probabilities(features)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert np.array_equal(network.probabilities(features), first), "the compiled network shares the weights"


def test_a_model_with_a_text_encoder_stays_with_torch():
    encoder = {"kind": "gru", "fields": ["track_name"], "max_chars": 6, "embedding_dim": 4, "hidden": 5}
    torch.manual_seed(0)
    model = build_mlp(3, N_CLASSES, [8], 0.0, text_encoder=encoder).eval()
    assert compile_network(model) is None
    inputs = with_characters(_features(4)[:, :3], {"track_name": ["love", "war", None, "héllo"]}, encoder)
    np.testing.assert_array_equal(predict_proba(model, inputs), _torch_probabilities(model, inputs))


def test_an_unknown_layer_leaves_the_model_to_torch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()
    assert compile_network(model) is None
    features = _features(10)[:, :4]
    np.testing.assert_array_equal(predict_proba(model, features), _torch_probabilities(model, features))


def test_an_empty_batch_gives_no_rows():
    network = compile_network(_trained(embedding=EMBEDDING, members=3))
    assert network.probabilities(np.zeros((0, N_FEATURES), dtype=np.float32)).shape == (0, N_CLASSES)
