"""The fitted preprocessor: imputation, encoding and scaling learned on training rows, stored as plain JSON.

Shared by the preprocess stage, which fits and applies it, and by everything that later turns songs into
model inputs (evaluate, predict), which load it with load_preprocessor. The JSON holds only numbers and names,
never code, so loading an untrusted file cannot execute anything; every field is checked on load.

Numeric feature: missing -> training median; optional log1p (values below 0 are clipped to 0 first);
then (x - center) / scale, center/scale being mean/std (standard) or median/IQR (robust) of the transformed
training values, scale 1 where the training values do not vary.
Categorical feature (key, mode, release_date_precision): missing -> the most frequent training category; then
onehot (one column per training category, `key_5`; an unseen category gives all zeros) or ordinal (the
category's position among the sorted training categories; an unseen category gives -1).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from stages.errors import BundleError, DataError, ParamsError
from stages.features import CANDIDATE_FEATURES, CATEGORICAL_FEATURES
from stages.files import write_json
from stages.params import PreprocessParams
from stages.schema import GENRES

FORMAT_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = ("format_version", "data_sha256", "input_features", "output_features", "classes", "scaler",
             "numeric", "categorical")
_NUMERIC_KEYS = ("impute", "log1p", "center", "scale")
_CATEGORICAL_KEYS = ("impute", "categories", "encoding")


@dataclass(frozen=True)
class NumericColumn:
    name: str
    impute: float
    log1p: bool
    center: float
    scale: float

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)

    def transform(self, values: np.ndarray) -> np.ndarray:
        values = np.where(np.isnan(values), self.impute, values)
        if self.log1p:
            values = np.log1p(np.maximum(values, 0.0))
        return ((values - self.center) / self.scale)[:, None]


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    impute: int
    categories: tuple[int, ...]
    encoding: Literal["onehot", "ordinal"]

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.encoding == "ordinal":
            return (self.name,)
        return tuple(f"{self.name}_{category}" for category in self.categories)

    def transform(self, values: np.ndarray) -> np.ndarray:
        values = np.where(np.isnan(values), self.impute, values)
        known = np.asarray(self.categories, dtype=np.float64)
        if self.encoding == "onehot":
            return (values[:, None] == known[None, :]).astype(np.float64)
        position = np.searchsorted(known, values)
        found = (position < len(known)) & (known[np.minimum(position, len(known) - 1)] == values)
        return np.where(found, position, -1).astype(np.float64)[:, None]


Column = NumericColumn | CategoricalColumn


@dataclass(frozen=True)
class Preprocessor:
    data_sha256: str
    scaler: Literal["standard", "robust"]
    columns: tuple[Column, ...]
    classes: tuple[str, ...] = GENRES

    @property
    def input_features(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def output_features(self) -> tuple[str, ...]:
        return tuple(name for column in self.columns for name in column.outputs)

    def transform(self, features: pd.DataFrame) -> np.ndarray:
        """Model inputs (float32, one column per output feature) from candidate features (see features.py)."""
        absent = [name for name in self.input_features if name not in features.columns]
        if absent:
            needed = ", ".join(self.input_features)
            raise DataError(f"feature {absent[0]!r} is missing; the preprocessor needs {needed}")
        blocks = [column.transform(features[column.name].to_numpy(dtype=np.float64, na_value=np.nan))
                  for column in self.columns]
        return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "data_sha256": self.data_sha256,
            "input_features": list(self.input_features),
            "output_features": list(self.output_features),
            "classes": list(self.classes),
            "scaler": self.scaler,
            "numeric": {c.name: {"impute": c.impute, "log1p": c.log1p, "center": c.center, "scale": c.scale}
                        for c in self.columns if isinstance(c, NumericColumn)},
            "categorical": {c.name: {"impute": c.impute, "categories": list(c.categories), "encoding": c.encoding}
                            for c in self.columns if isinstance(c, CategoricalColumn)},
        }

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessor:
        """Rebuild from to_dict()'s output, refusing anything else with a ValueError that says what is wrong."""
        _expect_keys(data, _TOP_KEYS, "the preprocessor")
        if type(data["format_version"]) is not int or data["format_version"] != FORMAT_VERSION:
            raise ValueError(f"format_version is {data['format_version']!r}; this code reads version {FORMAT_VERSION}")
        if not isinstance(data["data_sha256"], str) or not _SHA256.match(data["data_sha256"]):
            raise ValueError("data_sha256 must be 64 lowercase hex digits")
        if data["classes"] != list(GENRES):
            raise ValueError(f"classes are {data['classes']!r}; expected {list(GENRES)!r}")
        if data["scaler"] not in ("standard", "robust"):
            raise ValueError(f"scaler is {data['scaler']!r}; expected 'standard' or 'robust'")
        inputs = data["input_features"]
        if (not isinstance(inputs, list) or not inputs or not all(isinstance(name, str) for name in inputs)
                or len(set(inputs)) != len(inputs)):
            raise ValueError("input_features must be a non-empty list of distinct names")
        numeric, categorical = data["numeric"], data["categorical"]
        for section in ("numeric", "categorical"):
            if not isinstance(data[section], dict):
                raise ValueError(f"{section} must be a mapping of feature names to their statistics")
        columns = []
        for name in inputs:
            if name not in CANDIDATE_FEATURES:
                raise ValueError(f"input feature {name!r} is not a candidate feature")
            if (name in numeric) == (name in categorical) or (name in categorical) != (name in CATEGORICAL_FEATURES):
                raise ValueError(f"input feature {name!r} must be described once, under "
                                 f"{'categorical' if name in CATEGORICAL_FEATURES else 'numeric'}")
            if name in numeric:
                columns.append(_numeric_column(name, numeric[name]))
            else:
                columns.append(_categorical_column(name, categorical[name]))
        if len(numeric) + len(categorical) != len(inputs):
            raise ValueError("numeric and categorical describe features that are not in input_features")
        pre = cls(data_sha256=data["data_sha256"], scaler=data["scaler"], columns=tuple(columns))
        if data["output_features"] != list(pre.output_features):
            raise ValueError("output_features do not match the features and categories described")
        return pre


def _expect_keys(data: Any, keys: tuple[str, ...], what: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object")
    missing = [key for key in keys if key not in data]
    extra = [key for key in data if key not in keys]
    if missing:
        raise ValueError(f"{what} has no {missing[0]!r}")
    if extra:
        raise ValueError(f"{what} has an unknown key {extra[0]!r}")


def _finite(value: Any, where: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, not {value!r}")
    return float(value)


def _numeric_column(name: str, data: Any) -> NumericColumn:
    _expect_keys(data, _NUMERIC_KEYS, f"numeric.{name}")
    if type(data["log1p"]) is not bool:
        raise ValueError(f"numeric.{name}.log1p must be true or false, not {data['log1p']!r}")
    scale = _finite(data["scale"], f"numeric.{name}.scale")
    if scale <= 0.0:
        raise ValueError(f"numeric.{name}.scale must be positive, not {scale!r}")
    return NumericColumn(name, _finite(data["impute"], f"numeric.{name}.impute"), data["log1p"],
                         _finite(data["center"], f"numeric.{name}.center"), scale)


def _categorical_column(name: str, data: Any) -> CategoricalColumn:
    _expect_keys(data, _CATEGORICAL_KEYS, f"categorical.{name}")
    categories = data["categories"]
    if (not isinstance(categories, list) or not categories or any(type(c) is not int for c in categories)
            or categories != sorted(set(categories))):
        raise ValueError(f"categorical.{name}.categories must be a non-empty list of distinct integers, in order")
    if type(data["impute"]) is not int or data["impute"] not in categories:
        raise ValueError(f"categorical.{name}.impute must be one of its categories, not {data['impute']!r}")
    if data["encoding"] not in ("onehot", "ordinal"):
        raise ValueError(f"categorical.{name}.encoding is {data['encoding']!r}; expected 'onehot' or 'ordinal'")
    return CategoricalColumn(name, data["impute"], tuple(categories), data["encoding"])


def _scale_guard(scale: float, center: float) -> float:
    """1 where the training values (nearly) do not vary, so a constant feature becomes 0, not inf or NaN."""
    return scale if math.isfinite(scale) and scale > 1e-12 * max(1.0, abs(center)) else 1.0


def _fit_numeric(name: str, values: pd.Series, log1p: bool, scaler: str) -> NumericColumn:
    impute = float(values.median())
    filled = values.fillna(impute).to_numpy(dtype=np.float64)
    if log1p:
        if filled.min() < 0.0:
            raise ParamsError(f"params.yaml: preprocess.log_transform: {name!r} has negative training values "
                              f"(min {filled.min():g}); log1p applies only to non-negative features")
        filled = np.log1p(filled)
    if scaler == "standard":
        center, scale = float(filled.mean()), float(filled.std())
    else:
        q25, center, q75 = (float(q) for q in np.quantile(filled, [0.25, 0.5, 0.75]))
        scale = q75 - q25
    return NumericColumn(name, impute, log1p, center, _scale_guard(scale, center))


def _fit_categorical(name: str, values: pd.Series, encoding: str) -> CategoricalColumn:
    present = values.dropna()
    if (present != present.round()).any():
        raise DataError(f"categorical feature {name!r} has non-integer values in the training split")
    counts = present.astype(np.int64).value_counts()
    categories = tuple(int(c) for c in sorted(counts.index))
    impute = int(counts.sort_index(kind="stable").idxmax())
    return CategoricalColumn(name, impute, categories, encoding)


def fit_preprocessor(features: pd.DataFrame, params: PreprocessParams, *, data_sha256: str) -> Preprocessor:
    """Learn every statistic from `features` (training rows only; its columns are the input features, in order)."""
    if features.empty or features.shape[1] == 0:
        raise DataError("cannot fit the preprocessor: no training rows or no features")
    columns: list[Column] = []
    for name in features.columns:
        values = features[name].astype(np.float64)
        if values.isna().all():
            raise DataError(f"feature {name!r} has no value in any training row")
        if name in CATEGORICAL_FEATURES:
            columns.append(_fit_categorical(name, values, params.categorical))
        else:
            columns.append(_fit_numeric(name, values, name in params.log_transform, params.scaler))
    return Preprocessor(data_sha256=data_sha256, scaler=params.scaler, columns=tuple(columns))


def encode_labels(genres: pd.Series) -> np.ndarray:
    """Each genre's index in GENRES (int64); an unknown genre is a DataError."""
    codes = pd.Index(GENRES).get_indexer(genres).astype(np.int64)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise DataError(f"row {row}: genre {genres.iloc[row]!r} is not one of {', '.join(GENRES)}")
    return codes


def save_preprocessor(path: str | os.PathLike, pre: Preprocessor) -> None:
    write_json(path, pre.to_dict())


def load_preprocessor(path: str | os.PathLike) -> Preprocessor:
    """Read and check a preprocessor JSON; anything missing, malformed or of another version is a BundleError."""
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise BundleError(f"{path}: not found; run `dvc repro preprocess` to create it") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: cannot be read as UTF-8 text ({error.__class__.__name__})") from None
    try:
        data = json.loads(text, parse_constant=lambda constant: _refuse_constant(constant))
    except json.JSONDecodeError as error:
        raise BundleError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except ValueError as error:
        raise BundleError(f"{path}: {error}") from None
    try:
        return Preprocessor.from_dict(data)
    except (ValueError, TypeError) as error:
        raise BundleError(f"{path}: not a valid preprocessor: {error}") from None


def _refuse_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not a number JSON allows")
