"""Predicting with a trained network: predict_proba, and the network's eval-mode forward pass in numpy, which is how
it runs on the CPU.

Under the numerics pin (numerics.py) torch's matrix products run on oneMKL's COMPATIBLE branch, about a third as
fast as the Haswell kernels OpenBLAS, numpy's BLAS, is pinned to; a forward pass is mostly matrix products. So
`compile_network` copies the weights of a model built by network.build_mlp into numpy arrays, and `Network` computes
what the torch modules compute in eval mode (batch norm folded into a scale and a shift, dropout left out),
rounded otherwise: the probabilities agree with torch's to about 1e-6 (tests/test_inference.py), and are the
same bytes on every x86-64 CPU (tests/test_portability.py). OpenBLAS splits a product by thread count, so the
pass runs on numerics.INFERENCE_THREADS BLAS threads, as torch's inference does (the count is the process's, for
as long as the pass runs). A model with a part this module lacks (the recurrent text encoder) compiles to None
and stays with torch, as does any model off the CPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from spotify_genre.model import blas
from spotify_genre.model.network import (EmbeddedMLP, EnsembleBatchNorm, EnsembleLinear, GenreMixture, Linear,
                                         PeriodicEmbedding, log_probabilities, n_classes)
from spotify_genre.numerics import inference_threads

Layer = Callable[[np.ndarray], np.ndarray]


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy().copy()


@dataclass(frozen=True)
class Embedding:
    """PeriodicEmbedding's parameters, members first (1 for a single MLP): frequencies (m, inputs, k), weight
    (m, inputs, 2k, dim), bias (m, inputs, dim); and which input columns it embeds, which pass through."""

    embedded: np.ndarray
    passed: np.ndarray
    frequencies: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """(rows, features) -> (members, rows, inputs * dim + passed)."""
        members, n_inputs, dim = self.bias.shape
        rows = len(inputs)
        columns = np.ascontiguousarray(inputs[:, self.embedded].T)  # (inputs, rows)
        angles = (np.float32(2.0 * math.pi) * columns)[None, :, :, None] * self.frequencies[:, :, None, :]
        periodic = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)  # (m, inputs, rows, 2k)
        embedded = np.matmul(periodic, self.weight)  # (m, inputs, rows, dim)
        embedded += self.bias[:, :, None, :]
        out = np.empty((members, rows, n_inputs * dim + len(self.passed)), dtype=np.float32)
        np.maximum(embedded.transpose(0, 2, 1, 3), 0.0, out=out[:, :, :n_inputs * dim].reshape(members, rows,
                                                                                                n_inputs, dim))
        out[:, :, n_inputs * dim:] = inputs[:, self.passed]
        return out


def _linear(weight: np.ndarray, bias: np.ndarray) -> Layer:
    """weight (in, out) or (members, in, out), bias (out,) or (members, 1, out)."""

    def apply(hidden: np.ndarray) -> np.ndarray:
        out = np.matmul(hidden, weight)
        out += bias
        return out

    return apply


def _affine(scale: np.ndarray, shift: np.ndarray) -> Layer:
    def apply(hidden: np.ndarray) -> np.ndarray:
        hidden *= scale
        hidden += shift
        return hidden

    return apply


def _relu(hidden: np.ndarray) -> np.ndarray:
    return np.maximum(hidden, 0.0, out=hidden)


def _batch_norm(module: nn.BatchNorm1d, members: int | None) -> Layer:
    """Eval-mode batch norm, (x - mean) / sqrt(var + eps) * weight + bias, as x * scale + shift.

    Folded here in numpy, whose square root, like its division, is the correctly rounded one on every CPU;
    torch's CPU square root is not (it differs in the last digit between this AVX-512 CPU and qemu's Haswell)."""
    weight, bias, mean, variance = (_array(t) for t in (module.weight, module.bias, module.running_mean,
                                                        module.running_var))
    scale = weight / np.sqrt(variance + np.float32(module.eps))
    shift = bias - mean * scale
    if members is not None:
        return _affine(scale.reshape(members, 1, -1), shift.reshape(members, 1, -1))
    return _affine(scale, shift)


def _layer(module: nn.Module) -> Layer | None:
    if type(module) in (nn.Linear, Linear):
        return _linear(_array(module.weight).T.copy(), _array(module.bias))
    if type(module) is EnsembleLinear:
        return _linear(_array(module.weight), _array(module.bias)[:, None, :])
    if type(module) is nn.BatchNorm1d and module.track_running_stats:
        return _batch_norm(module, None)
    if type(module) is EnsembleBatchNorm:
        return _batch_norm(module, module.shape[0])
    if type(module) is nn.ReLU:
        return _relu
    return None


@dataclass(frozen=True)
class Network:
    """A compiled model: logits (rows, outputs) for a single MLP, (members, rows, outputs) for an ensemble. With
    `genre_starts` the outputs are subgenres, ordered by genre, each genre's starting where given."""

    embedding: Embedding | None
    layers: tuple[Layer, ...]
    ensemble: bool
    genre_starts: np.ndarray | None = None

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        hidden = np.ascontiguousarray(inputs, dtype=np.float32)
        with blas.fixed_threads():
            if self.embedding is not None:
                hidden = self.embedding(hidden)
                if not self.ensemble:
                    hidden = hidden[0]
            for layer in self.layers:
                hidden = layer(hidden)
        return hidden

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Softmax probabilities (float64, rows × classes); an ensemble's are the mean of its members'."""
        log_probabilities = _log_softmax(self.logits(inputs).astype(np.float64))
        if self.ensemble:
            log_probabilities = _log_mean_exp(log_probabilities)
        probabilities = np.exp(log_probabilities)
        if self.genre_starts is not None:
            probabilities = np.add.reduceat(probabilities, self.genre_starts, axis=-1)
        return probabilities


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _log_mean_exp(values: np.ndarray) -> np.ndarray:
    """log(mean(exp(values), axis=0)), computed without overflow."""
    top = values.max(axis=0)
    return top + np.log(np.exp(values - top).sum(axis=0)) - math.log(len(values))


def _embedding(model: EmbeddedMLP) -> Embedding:
    periodic: PeriodicEmbedding = model.embedding
    frequencies, weight, bias = (_array(p) for p in (periodic.frequencies, periodic.weight, periodic.bias))
    if frequencies.ndim == 2:  # a single MLP: members first, one of them
        frequencies, weight, bias = frequencies[None], weight[None], bias[None]
    return Embedding(model.embedded.numpy().copy(), model.passed.numpy().copy(), frequencies, weight, bias)


def compile_network(model: nn.Module) -> Network | None:
    """The numpy forward pass of a network.build_mlp network, or None where it has a part this module lacks."""
    if type(model) is GenreMixture:
        network = compile_network(model.network)
        if network is None:
            return None
        starts = np.array([start for start, _ in model.spans], dtype=np.intp)
        return dataclasses.replace(network, genre_starts=starts)
    embedding, mlp = (_embedding(model), model.mlp) if type(model) is EmbeddedMLP else (None, model)
    if type(mlp) is not nn.Sequential:
        return None
    layers = []
    for module in mlp:
        if isinstance(module, nn.Dropout):
            continue
        layer = _layer(module)
        if layer is None:
            return None
        layers.append(layer)
    ensemble = any(type(module) is EnsembleLinear for module in mlp)
    return Network(embedding, tuple(layers), ensemble)


class Classifier:
    """A trained network ready to predict, on `device` (the model's own if None): on the CPU compiled once into
    its numpy forward pass where it has one, else through torch under the numerics pin, on a fixed number of
    threads (numerics.py). The model must not change while this holds it."""

    def __init__(self, model: nn.Module, device: torch.device | None = None):
        if device is None:
            device = next(model.parameters()).device
        else:
            model.to(device)
        self.model, self.device = model, device
        self.network = compile_network(model) if device.type == "cpu" else None

    def probabilities(self, features: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Softmax probabilities (float64, rows × classes) in eval mode, in batches of `batch_size` rows."""
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"features should be a 2-D array, got shape {features.shape}")
        rows = np.ascontiguousarray(features, dtype=np.float32)
        probabilities = np.empty((len(rows), n_classes(self.model)), dtype=np.float64)
        if self.network is not None:
            for start in range(0, len(rows), batch_size):
                probabilities[start:start + batch_size] = self.network.probabilities(rows[start:start + batch_size])
            return probabilities
        model, device = self.model, self.device
        was_training, threads = model.training, torch.get_num_threads()
        model.eval()
        if device.type == "cpu" and inference_threads() is not None:
            torch.set_num_threads(inference_threads())
        try:
            with torch.no_grad(), blas.fixed_threads():
                for start in range(0, len(rows), batch_size):
                    batch = torch.from_numpy(rows[start:start + batch_size]).to(device)
                    logits = model(batch).to(torch.float64)
                    probabilities[start:start + len(batch)] = torch.exp(log_probabilities(logits)).cpu().numpy()
        finally:
            model.train(was_training)
            torch.set_num_threads(threads)
        return probabilities


def predict_proba(model: nn.Module, features: np.ndarray, device: torch.device | None = None,
                  batch_size: int = 2048) -> np.ndarray:
    """Softmax probabilities (float64, rows × classes) in eval mode; the model moves to `device` if given.

    A Classifier for one call: a caller that predicts many times with one model keeps a Classifier instead,
    compiled once."""
    return Classifier(model, device).probabilities(features, batch_size)
