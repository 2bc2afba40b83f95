"""The MLP, its on-disk bundle (loaded only with weights_only=True) and batched prediction.

Shared by the train and evaluate stages and the predict command.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from stages.errors import BundleError, PipelineError
from stages.files import write_with
from stages.numerics import inference_threads

BUNDLE_FORMAT = 1
ARCHITECTURE_KEYS = ("n_features", "n_classes", "hidden_sizes", "dropout")
# Optional: absent or None, the inputs go straight into the MLP.
EMBEDDING_KEY = "embedding"
EMBEDDING_KEYS = ("columns", "frequencies", "dim", "sigma")
_PLAIN = (str, int, float, bool, type(None))


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
    tree does, where a plain linear layer only sees it as a slope."""

    def __init__(self, n_inputs: int, frequencies: int, dim: int, sigma: float):
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_inputs, frequencies) * sigma)
        bound = 1.0 / math.sqrt(2 * frequencies)
        self.weight = nn.Parameter(torch.empty(n_inputs, 2 * frequencies, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_inputs, dim).uniform_(-bound, bound))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        angles = (2.0 * math.pi) * inputs.unsqueeze(-1) * self.frequencies
        periodic = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        return torch.relu(torch.einsum("rik,ikd->rid", periodic, self.weight) + self.bias).flatten(1)


class EmbeddedMLP(nn.Module):
    """The embedded columns through a PeriodicEmbedding, the other columns as they are, then the MLP."""

    def __init__(self, n_features: int, columns: Sequence[int], embedding: PeriodicEmbedding, mlp: nn.Sequential):
        super().__init__()
        self.embedding, self.mlp = embedding, mlp
        passed = [i for i in range(n_features) if i not in set(columns)]
        self.register_buffer("embedded", torch.tensor(list(columns), dtype=torch.long), persistent=False)
        self.register_buffer("passed", torch.tensor(passed, dtype=torch.long), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.embedding(inputs[:, self.embedded]), inputs[:, self.passed]], dim=1))


def build_mlp(n_features: int, n_classes: int, hidden_sizes: Sequence[int], dropout: float,
              embedding: dict[str, Any] | None = None) -> nn.Module:
    """Each hidden layer Linear → BatchNorm1d → ReLU → Dropout; a final Linear gives the logits.

    `embedding` ({columns, frequencies, dim, sigma}): those input columns go through a PeriodicEmbedding first."""
    width = n_features
    if embedding is not None:
        width += len(embedding["columns"]) * (embedding["dim"] - 1)
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(), _Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_classes))
    mlp = nn.Sequential(*layers)
    if embedding is None:
        return mlp
    periodic = PeriodicEmbedding(len(embedding["columns"]), embedding["frequencies"], embedding["dim"],
                                 embedding["sigma"])
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


@dataclass(frozen=True)
class Bundle:
    model: nn.Module  # in eval mode, on the CPU
    architecture: dict[str, Any]
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    preprocessor: dict[str, Any]
    params: dict[str, Any]
    data_sha256: str


def _plain(value: Any, where: str) -> Any:
    """`value` as str/int/float/bool/None, lists and str-keyed dicts, so weights_only loading accepts it."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"{where}: {type(value).__name__} cannot go into a model bundle")


def save_bundle(path: str | os.PathLike, model: nn.Module, *, architecture: dict, feature_names: Sequence[str],
                class_names: Sequence[str], preprocessor: dict, params: dict, data_sha256: str) -> None:
    """Write the weights (on the CPU) and everything needed to use them, atomically and reproducibly."""
    bundle = {
        "format": BUNDLE_FORMAT,
        "architecture": _plain(architecture, "architecture"),
        "feature_names": _plain(list(feature_names), "feature_names"),
        "class_names": _plain(list(class_names), "class_names"),
        "preprocessor": _plain(preprocessor, "preprocessor"),
        "params": _plain(params, "params"),
        "data_sha256": _plain(data_sha256, "data_sha256"),
        "state_dict": {name: tensor.detach().to("cpu", copy=True).contiguous()
                       for name, tensor in model.state_dict().items()},
    }
    # Saved through a buffer: torch names the archive's records after the file, and the file is a random temp name.
    buffer = io.BytesIO()
    torch.save(bundle, buffer)
    write_with(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\.? Please|\n|$)",
                      str(error), re.DOTALL)
    return found.group(1).strip() if found else _first_line(error)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise BundleError(f"{path}: model bundle not found (run `dvc repro train` to make it)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BundleError(f"{path}: refused: not a bundle of tensors and plain values "
                          f"({_unpickler_reason(error)}); nothing in it was run") from None
    except Exception as error:  # torch.load reports damaged files with many exception types
        raise BundleError(f"{path}: not a model bundle ({type(error).__name__}: {_first_line(error)})") from None


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_types(path: Path, raw: dict) -> None:
    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise BundleError(f"{path}: {key} should be {expected}")

    for key in ("architecture", "feature_names", "class_names", "preprocessor", "params", "data_sha256",
                "state_dict"):
        need(key in raw, key, "present")
    need(_names(raw["feature_names"]), "feature_names", "a list of names")
    need(_names(raw["class_names"]), "class_names", "a list of names")
    need(isinstance(raw["preprocessor"], dict), "preprocessor", "a mapping")
    need(isinstance(raw["params"], dict), "params", "a mapping")
    need(isinstance(raw["data_sha256"], str), "data_sha256", "a string")
    state = raw["state_dict"]
    need(isinstance(state, dict) and all(isinstance(value, torch.Tensor) for value in state.values()),
         "state_dict", "a mapping of names to tensors")
    arch = raw["architecture"]
    need(isinstance(arch, dict) and set(ARCHITECTURE_KEYS) <= set(arch) <= {*ARCHITECTURE_KEYS, EMBEDDING_KEY},
         "architecture", f"a mapping with exactly {', '.join(ARCHITECTURE_KEYS)} (and optionally {EMBEDDING_KEY})")
    need(isinstance(arch["n_features"], int) and arch["n_features"] == len(raw["feature_names"]),
         "architecture.n_features", f"the number of feature names ({len(raw['feature_names'])})")
    need(isinstance(arch["n_classes"], int) and arch["n_classes"] == len(raw["class_names"]),
         "architecture.n_classes", f"the number of class names ({len(raw['class_names'])})")
    need(isinstance(arch["hidden_sizes"], list) and all(isinstance(size, int) and size > 0
                                                        for size in arch["hidden_sizes"]),
         "architecture.hidden_sizes", "a list of positive integers")
    need(isinstance(arch["dropout"], (int, float)) and not isinstance(arch["dropout"], bool)
         and 0.0 <= arch["dropout"] < 1.0, "architecture.dropout",
         "a number in [0, 1)")
    embedding = arch.get(EMBEDDING_KEY)
    if embedding is not None:
        positive = isinstance(embedding, dict) and all(
            type(embedding.get(key)) is int and embedding[key] > 0 for key in ("frequencies", "dim"))
        columns = embedding.get("columns") if isinstance(embedding, dict) else None
        need(positive and set(embedding) == set(EMBEDDING_KEYS) and isinstance(columns, list) and columns
             and all(type(i) is int and 0 <= i < arch["n_features"] for i in columns)
             and len(set(columns)) == len(columns)
             and type(embedding["sigma"]) in (int, float) and embedding["sigma"] > 0,
             "architecture.embedding", f"null or a mapping of {', '.join(EMBEDDING_KEYS)}: distinct input columns, "
             "positive sizes")


def _mismatch(path: Path, what: str, bundle: Sequence[str], given: Sequence[str]) -> str:
    missing = [name for name in bundle if name not in given]
    extra = [name for name in given if name not in bundle]
    if not missing and not extra:
        detail = "the same names in another order"
    else:
        parts = []
        if missing:
            parts.append(f"the model needs {', '.join(missing)}")
        if extra:
            parts.append(f"it does not know {', '.join(extra)}")
        detail = "; ".join(parts)
    return f"{path}: the model's {what} do not match the data's: {detail} (retrain with `dvc repro`)"


def load_bundle(path: str | os.PathLike, *, feature_names: Sequence[str] | None = None,
                class_names: Sequence[str] | None = None) -> Bundle:
    """Load a bundle safely, refusing anything unsafe, malformed, of another format or for other features."""
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, dict) or "format" not in raw:
        raise BundleError(f"{path}: not a model bundle (no format version)")
    if raw["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {raw['format']!r}, but this version reads format {BUNDLE_FORMAT} "
                          "(retrain with `dvc repro train`)")
    _check_types(path, raw)
    if feature_names is not None and list(feature_names) != raw["feature_names"]:
        raise BundleError(_mismatch(path, "features", raw["feature_names"], list(feature_names)))
    if class_names is not None and list(class_names) != raw["class_names"]:
        raise BundleError(_mismatch(path, "classes", raw["class_names"], list(class_names)))
    model = build_mlp(**raw["architecture"])
    try:
        model.load_state_dict(raw["state_dict"], strict=True)
    except RuntimeError as error:
        raise BundleError(f"{path}: the weights do not fit the architecture ({_first_line(error)})") from None
    model.eval()
    return Bundle(
        model=model,
        architecture=raw["architecture"],
        feature_names=tuple(raw["feature_names"]),
        class_names=tuple(raw["class_names"]),
        preprocessor=raw["preprocessor"],
        params=raw["params"],
        data_sha256=raw["data_sha256"],
    )


def _n_classes(model: nn.Module) -> int:
    return [module for module in model.modules() if isinstance(module, nn.Linear)][-1].out_features


def predict_proba(model: nn.Module, features: np.ndarray, device: torch.device | None = None,
                  batch_size: int = 8192) -> np.ndarray:
    """Softmax probabilities (float64, rows × classes) in eval mode; the model moves to `device` if given.

    On the CPU under the numerics pin, on a fixed number of threads (stages/numerics.py)."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features should be a 2-D array, got shape {features.shape}")
    if device is None:
        device = next(model.parameters()).device
    else:
        model.to(device)
    rows = np.ascontiguousarray(features, dtype=np.float32)
    probabilities = np.empty((len(rows), _n_classes(model)), dtype=np.float64)
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    if device.type == "cpu" and inference_threads() is not None:
        torch.set_num_threads(inference_threads())
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = torch.from_numpy(rows[start:start + batch_size]).to(device)
                logits = model(batch).to(torch.float64)
                probabilities[start:start + len(batch)] = torch.softmax(logits, dim=1).cpu().numpy()
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return probabilities
