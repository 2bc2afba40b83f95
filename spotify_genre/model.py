"""The MLP and batched prediction; bundle.py saves and loads it."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from spotify_genre import blas
from spotify_genre.errors import PipelineError
from spotify_genre.numerics import inference_threads
from spotify_genre.text_encoder import CharacterEncoder, TextEncodedModel


class _Dropout(nn.Dropout):
    """nn.Dropout, with the mask drawn by torch.rand: the same distribution, about twice as fast on CPU."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return inputs
        scale = torch.rand_like(inputs).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return inputs * scale


class PeriodicEmbedding(nn.Module):
    """Each input x_i -> ReLU(W_i [sin(2π c_i x_i), cos(2π c_i x_i)] + b_i), with `frequencies` learned c_i drawn
    from N(0, sigma²) and a linear map of its own per input: the "PLR" embedding of Gorishniy et al. (2022), "On
    Embeddings for Numerical Features in Tabular Deep Learning". It lets the MLP cut a feature into ranges, as a
    tree does, where a plain linear layer only sees it as a slope.

    With `members` > 1, each ensemble member has embeddings of its own: (rows, inputs) -> (rows, members, width)."""

    def __init__(self, n_inputs: int, frequencies: int, dim: int, sigma: float, members: int = 1):
        super().__init__()
        shape = (n_inputs,) if members == 1 else (members, n_inputs)
        self.frequencies = nn.Parameter(torch.randn(*shape, frequencies) * sigma)
        bound = 1.0 / math.sqrt(2 * frequencies)
        self.weight = nn.Parameter(torch.empty(*shape, 2 * frequencies, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(*shape, dim).uniform_(-bound, bound))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        single = self.frequencies.dim() == 2
        frequencies, weight, bias = (p.unsqueeze(0) if single else p for p in (self.frequencies, self.weight, self.bias))
        # Members and inputs lead, so each input's products are one batch of the matmul: (m, inputs, rows, k).
        angles = (2.0 * math.pi) * inputs.t()[None, :, :, None] * frequencies.unsqueeze(2)
        periodic = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        embedded = torch.relu(blas.matmul(periodic, weight) + bias.unsqueeze(2))
        out = embedded.permute(2, 0, 1, 3).flatten(2)  # (rows, m, inputs * dim)
        return out[:, 0] if single else out


class EmbeddedMLP(nn.Module):
    """The embedded columns through a PeriodicEmbedding, the other columns as they are, then the MLP."""

    def __init__(self, n_features: int, columns: Sequence[int], embedding: PeriodicEmbedding, mlp: nn.Sequential):
        super().__init__()
        self.embedding, self.mlp = embedding, mlp
        passed = [i for i in range(n_features) if i not in set(columns)]
        self.register_buffer("embedded", torch.tensor(list(columns), dtype=torch.long), persistent=False)
        self.register_buffer("passed", torch.tensor(passed, dtype=torch.long), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        embedded, passed = self.embedding(inputs[:, self.embedded]), inputs[:, self.passed]
        if embedded.dim() == 3:  # one embedding per ensemble member
            passed = passed.unsqueeze(1).expand(-1, embedded.shape[1], -1)
        return self.mlp(torch.cat([embedded, passed], dim=-1))


class Linear(nn.Linear):
    """nn.Linear, multiplying through blas.matmul (numpy's BLAS on the CPU)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return blas.linear(inputs, self.weight, self.bias)


class EnsembleLinear(nn.Module):
    """`members` independent nn.Linear layers applied side by side: (rows, members, in) -> (rows, members, out).

    Each member is initialised as nn.Linear would be; a 2-D input (rows, in) is shared by all members."""

    def __init__(self, in_features: int, out_features: int, members: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, out_features).uniform_(-bound, bound))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        members_first = inputs.unsqueeze(0) if inputs.dim() == 2 else inputs.transpose(0, 1)  # (m or 1, rows, in)
        return blas.matmul(members_first, self.weight).transpose(0, 1) + self.bias


class EnsembleBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d of each member's units on their own: (rows, members, units) normalised over the rows."""

    def __init__(self, units: int, members: int):
        super().__init__(units * members)
        self.shape = (members, units)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(inputs.flatten(1)).view(-1, *self.shape)


class GenreMixture(nn.Module):
    """A network whose outputs are subgenre logits, read as genres (spotify_genre/subgenres.py): forward gives each
    genre's log-probability, the log of the sum of its subgenres' probabilities, so whatever reads logits (the
    loss, log_probabilities, argmax) reads genres. `genres`: each output's genre, non-decreasing."""

    def __init__(self, network: nn.Module, genres: Sequence[int], n_classes: int):
        super().__init__()
        if list(genres) != sorted(genres) or set(genres) != set(range(n_classes)):
            raise ValueError(f"subgenres' genres must be in order and hold every class 0..{n_classes - 1}")
        self.network, self.n_classes = network, n_classes
        bounds = [list(genres).index(g) for g in range(n_classes)] + [len(genres)]
        self.spans = list(zip(bounds, bounds[1:]))  # each genre's outputs, start and stop

    def genre_log_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(…, subgenres) logits -> (…, genres) log-probabilities."""
        log_probs = torch.log_softmax(logits, dim=-1)
        return torch.stack([torch.logsumexp(log_probs[..., start:stop], dim=-1) for start, stop in self.spans],
                           dim=-1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.genre_log_probabilities(self.network(inputs))


def build_mlp(n_features: int, n_classes: int, hidden_sizes: Sequence[int], dropout: float,
              embedding: dict[str, Any] | None = None, members: int = 1,
              text_encoder: dict[str, Any] | None = None, subgenres: dict[str, Any] | None = None) -> nn.Module:
    """Each hidden layer Linear → BatchNorm1d → ReLU → Dropout; a final Linear gives the logits.

    `embedding` ({columns, frequencies, dim, sigma}): those input columns go through a PeriodicEmbedding first.
    `members` > 1: that many such MLPs side by side on the same (embedded) inputs, each with its own weights, a
    deep ensemble trained in one pass; the logits are then (rows, members, classes), see `log_probabilities`.
    `text_encoder` ({kind, fields, max_chars, embedding_dim, hidden}): the input matrix also carries the
    character codes of those text fields (text_encoder.with_characters), read by a recurrent encoder whose
    output joins the features.
    `subgenres` ({names, genres}): the network learns one output per subgenre, read as genres by GenreMixture."""
    if subgenres is not None:
        network = build_mlp(n_features, len(subgenres["names"]), hidden_sizes, dropout, embedding, members,
                            text_encoder)
        return GenreMixture(network, subgenres["genres"], n_classes)
    if text_encoder is not None:
        encoder = CharacterEncoder(text_encoder["kind"], text_encoder["embedding_dim"], text_encoder["hidden"])
        fields = len(text_encoder["fields"])
        inner = build_mlp(n_features + fields * text_encoder["hidden"], n_classes, hidden_sizes, dropout,
                          embedding, members)
        return TextEncodedModel(n_features, fields, text_encoder["max_chars"], encoder, inner)
    width = n_features
    if embedding is not None:
        width += len(embedding["columns"]) * (embedding["dim"] - 1)
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        if members == 1:
            layers += [Linear(width, size), nn.BatchNorm1d(size)]
        else:
            layers += [EnsembleLinear(width, size, members), EnsembleBatchNorm(size, members)]
        layers += [nn.ReLU(), _Dropout(dropout)]
        width = size
    layers.append(Linear(width, n_classes) if members == 1 else EnsembleLinear(width, n_classes, members))
    mlp = nn.Sequential(*layers)
    if embedding is None:
        return mlp
    periodic = PeriodicEmbedding(len(embedding["columns"]), embedding["frequencies"], embedding["dim"],
                                 embedding["sigma"], members)
    return EmbeddedMLP(n_features, embedding["columns"], periodic, mlp)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when available, else the CPU; asking for CUDA where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise PipelineError(f"train.device: cuda was asked for, but torch ({build}) sees no GPU; "
                                "use `auto` or `cpu`")
        return torch.device("cuda")
    raise PipelineError(f"train.device: unknown device {name!r}; expected auto, cpu or cuda")


def log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Log class probabilities (rows × classes) from a model's output; an ensemble's members (rows × members ×
    classes) are combined as the mean of their probabilities."""
    if logits.dim() == 2:
        return torch.log_softmax(logits, dim=1)
    return torch.logsumexp(torch.log_softmax(logits, dim=2), dim=1) - math.log(logits.shape[1])


def _output_bias(model: nn.Module) -> torch.Tensor:
    """The last layer's bias: (classes,) for one MLP, (members, classes) for an ensemble."""
    return [module for module in model.modules() if isinstance(module, (nn.Linear, EnsembleLinear))][-1].bias


def model_members(model: nn.Module) -> int:
    """How many ensemble members the model has (1 for a single MLP)."""
    bias = _output_bias(model)
    return 1 if bias.dim() == 1 else bias.shape[0]


def _n_classes(model: nn.Module) -> int:
    return model.n_classes if isinstance(model, GenreMixture) else _output_bias(model).shape[-1]


def predict_proba(model: nn.Module, features: np.ndarray, device: torch.device | None = None,
                  batch_size: int = 2048) -> np.ndarray:
    """Softmax probabilities (float64, rows × classes) in eval mode; the model moves to `device` if given.

    On the CPU through its numpy forward pass (inference.py) where it has one, else through torch under the
    numerics pin, on a fixed number of threads (numerics.py); in batches of `batch_size` rows either way."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features should be a 2-D array, got shape {features.shape}")
    if device is None:
        device = next(model.parameters()).device
    else:
        model.to(device)
    rows = np.ascontiguousarray(features, dtype=np.float32)
    probabilities = np.empty((len(rows), _n_classes(model)), dtype=np.float64)
    if device.type == "cpu":
        from spotify_genre.inference import compile_network

        network = compile_network(model)
        if network is not None:
            for start in range(0, len(rows), batch_size):
                probabilities[start:start + batch_size] = network.probabilities(rows[start:start + batch_size])
            return probabilities
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
