"""The model bundle: the network's weights and everything needed to use them, in one file.

Saved with torch.save, loaded only with weights_only=True (tensors and plain values; nothing in the file is
run), then checked whole by BundleFile before any weight is loaded.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import nn

from spotify_genre.atomic import write_with
from spotify_genre.errors import BundleError, PreprocessorMismatch, quoted
from spotify_genre.model.network import build_mlp
from spotify_genre.validation import NonNegativeInt, Positive, PositiveInt, Sha256, Strict, validated

BUNDLE_FORMAT = 1
_PLAIN = (str, int, float, bool, type(None))


class Embedding(Strict):
    columns: Annotated[list[NonNegativeInt], Field(min_length=1)]
    frequencies: PositiveInt
    dim: PositiveInt
    sigma: Positive


class TextEncoder(Strict):
    kind: Literal["gru", "lstm"]
    fields: Annotated[list[str], Field(min_length=1)]
    max_chars: PositiveInt
    embedding_dim: PositiveInt
    hidden: PositiveInt


class SubgenreOutputs(Strict):
    names: list[str]
    genres: list[NonNegativeInt]


class Architecture(Strict):
    """build_mlp's arguments; without `embedding` (or with null) the inputs go straight into the MLP."""

    n_features: PositiveInt
    n_classes: PositiveInt
    hidden_sizes: list[PositiveInt]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    embedding: Embedding | None = None
    members: PositiveInt = 1
    text_encoder: TextEncoder | None = None
    subgenres: SubgenreOutputs | None = None

    @model_validator(mode="after")
    def _embedded_columns_exist(self) -> Architecture:
        columns = self.embedding.columns if self.embedding else []
        if len(set(columns)) != len(columns) or any(column >= self.n_features for column in columns):
            raise ValueError(f"embedding.columns must be distinct input columns below n_features ({self.n_features})")
        return self

    @model_validator(mode="after")
    def _subgenres_cover_every_class(self) -> Architecture:
        if self.subgenres is None:
            return self
        genres = self.subgenres.genres
        if len(genres) != len(self.subgenres.names) or genres != sorted(genres) or set(genres) != set(
                range(self.n_classes)):
            raise ValueError("subgenres: one genre per name, in order, and every class among them")
        return self


class PreprocessorReference(Strict):
    """The preprocessor file the model was trained on: its path then, and the sha256 of its bytes."""

    path: str
    sha256: Sha256


class BundleFile(Strict):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    format: Literal[BUNDLE_FORMAT]
    architecture: Architecture
    feature_names: list[str]
    class_names: list[str]
    preprocessor: PreprocessorReference
    params: dict[str, Any]
    data_sha256: Sha256
    state_dict: dict[str, torch.Tensor]

    @model_validator(mode="after")
    def _sizes_match_names(self) -> BundleFile:
        if self.architecture.n_features != len(self.feature_names):
            raise ValueError(f"architecture.n_features is {self.architecture.n_features}, but there are "
                             f"{len(self.feature_names)} feature names")
        if self.architecture.n_classes != len(self.class_names):
            raise ValueError(f"architecture.n_classes is {self.architecture.n_classes}, but there are "
                             f"{len(self.class_names)} class names")
        return self


@dataclass(frozen=True)
class Bundle:
    model: nn.Module  # in eval mode, on the CPU
    architecture: dict[str, Any]
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    preprocessor: PreprocessorReference
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
    validated(BundleFile, bundle, f"{path}: refusing to write an invalid model bundle", BundleError)
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


def _altered_record(path: Path) -> str | None:
    """The first record of the bundle's zip archive whose bytes do not match their CRC-32 (torch.load does not
    check them: a flipped byte in the weights would load), or None; a file that is no zip archive is torch.load's
    to describe."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except Exception:  # noqa: BLE001 - not a zip archive, or one too damaged to list: torch.load says which
        return None


def _read(path: Path) -> Any:
    if not path.is_file():
        raise BundleError(f"{path}: model bundle not found (run `dvc repro train` to make it)")
    altered = _altered_record(path)
    if altered is not None:
        raise BundleError(f"{path}: damaged or altered: the bytes of its record {altered!r} do not match their "
                          "checksum (fetch or train it again)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BundleError(f"{path}: refused: not a bundle of tensors and plain values "
                          f"({_unpickler_reason(error)}); nothing in it was run") from None
    except Exception as error:  # torch.load reports damaged files with many exception types
        raise BundleError(f"{path}: not a model bundle ({type(error).__name__}: {_first_line(error)})") from None


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
                class_names: Sequence[str] | None = None, preprocessor_sha256: str | None = None,
                preprocessor_path: str | os.PathLike = "the given preprocessor") -> Bundle:
    """Load a bundle safely, refusing anything unsafe, malformed, of another format or for other features.

    With `preprocessor_sha256` (that of the file at `preprocessor_path`), a bundle trained with another
    preprocessor file is a PreprocessorMismatch."""
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, dict) or "format" not in raw:
        raise BundleError(f"{path}: not a model bundle (no format version)")
    if raw["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {quoted(raw['format'])}, but this version reads format {BUNDLE_FORMAT} "
                          "(retrain with `dvc repro train`)")
    bundle = validated(BundleFile, raw, f"{path}: not a valid model bundle", BundleError)
    if preprocessor_sha256 is not None and bundle.preprocessor.sha256 != preprocessor_sha256:
        raise PreprocessorMismatch(
            f"{path}: the model was trained with the preprocessor of sha256 {bundle.preprocessor.sha256[:12]}… "
            f"({bundle.preprocessor.path}), not {preprocessor_path} ({preprocessor_sha256[:12]}…); pass the "
            "preprocessor made with it, or retrain with `dvc repro`")
    if feature_names is not None and list(feature_names) != bundle.feature_names:
        raise BundleError(_mismatch(path, "features", bundle.feature_names, list(feature_names)))
    if class_names is not None and list(class_names) != bundle.class_names:
        raise BundleError(_mismatch(path, "classes", bundle.class_names, list(class_names)))
    model = build_mlp(**bundle.architecture.model_dump())
    try:
        model.load_state_dict(bundle.state_dict, strict=True)
    except RuntimeError as error:
        raise BundleError(f"{path}: the weights do not fit the architecture ({_first_line(error)})") from None
    model.eval()
    return Bundle(
        model=model,
        architecture=raw["architecture"],
        feature_names=tuple(bundle.feature_names),
        class_names=tuple(bundle.class_names),
        preprocessor=bundle.preprocessor,
        params=bundle.params,
        data_sha256=bundle.data_sha256,
    )
