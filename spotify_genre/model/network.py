"""The network: the MLP and its parts (periodic embeddings, ensembles, subgenre outputs), built by build_mlp from a
bundle's architecture, and its training loss; inference.py runs it, bundle.py saves and loads it."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from spotify_genre.errors import PipelineError
from spotify_genre.model import blas
from spotify_genre.model.text_encoder import CharacterEncoder, TextEncodedModel


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
    """A network whose outputs are subgenre logits, read as genres (pipeline/subgenres.py): forward gives each
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

    def loss(self, inputs: torch.Tensor, genres: torch.Tensor, subgenres: torch.Tensor, loss_fn: nn.Module,
             subgenre_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(genre log-probabilities, the genres' loss, the loss to minimise): the genres' loss plus
        `subgenre_weight` times the subgenres' own, each as member_loss gives it, from one pass of the network."""
        subgenre_logits = self.network(inputs)
        log_probabilities = self.genre_log_probabilities(subgenre_logits)
        genre_loss = member_loss(loss_fn, log_probabilities, genres)
        return log_probabilities, genre_loss, genre_loss + subgenre_weight * member_loss(loss_fn, subgenre_logits,
                                                                                         subgenres)


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


def member_loss(loss_fn: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of one model's logits, or the sum of each ensemble member's own loss, so that each member gets
    the gradient it would get alone (a mean would divide every member's learning rate by their number)."""
    if logits.dim() == 2:
        return loss_fn(logits, labels)
    members = logits.shape[1]
    return loss_fn(logits.flatten(0, 1), labels.repeat_interleave(members)) * members


def training_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module,
                  subgenres: torch.Tensor | None = None,
                  subgenre_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the output read as genres, the genres' loss, the loss to minimise) of a batch in training mode; a
    GenreMixture adds its subgenres' term (GenreMixture.loss)."""
    if isinstance(model, GenreMixture):
        return model.loss(inputs, labels, subgenres, loss_fn, subgenre_weight)
    logits = model(inputs)
    loss = member_loss(loss_fn, logits, labels)
    return logits, loss, loss


def _output_bias(model: nn.Module) -> torch.Tensor:
    """The last layer's bias: (classes,) for one MLP, (members, classes) for an ensemble."""
    return [module for module in model.modules() if isinstance(module, (nn.Linear, EnsembleLinear))][-1].bias


def model_members(model: nn.Module) -> int:
    """How many ensemble members the model has (1 for a single MLP)."""
    bias = _output_bias(model)
    return 1 if bias.dim() == 1 else bias.shape[0]


def n_classes(model: nn.Module) -> int:
    return model.n_classes if isinstance(model, GenreMixture) else _output_bias(model).shape[-1]
