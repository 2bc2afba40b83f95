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
Text field (preprocess.text.fields): one standardised genre score per genre, `track_name_rock`, from a naive
Bayes model of the field's character n-grams (stages/text.py); its two arrays per field are too large for JSON
and go to an .npz beside it (`<name>.npz`, read with allow_pickle=False), whose sha256 the JSON records.

model_inputs(pre, songs) turns raw songs into the model's inputs; fit_model_inputs fits a preprocessor on the
training songs and returns their inputs too, with text scored out of fold (see stages/text.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from stages.errors import BundleError, DataError, ParamsError
from stages.features import CANDIDATE_FEATURES, CATEGORICAL_FEATURES, candidate_features
from stages.files import write_json, write_with
from stages.params import PreprocessParams
from stages.schema import GENRES, LABEL
from stages.text import TEXT_FIELDS, TextScorer, fit_text_scorer, scorer_from_dict

FORMAT_VERSION = 1
ARRAYS_SUFFIX = ".npz"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = ("format_version", "data_sha256", "input_features", "output_features", "classes", "scaler",
             "numeric", "categorical")
_TEXT_KEYS = ("arrays", "arrays_sha256", "fields")  # under the optional "text" key
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
    text: tuple[TextScorer, ...] = ()

    @property
    def input_features(self) -> tuple[str, ...]:
        """The candidate features it reads (see features.py); the text fields it reads are `text_fields`."""
        return tuple(column.name for column in self.columns)

    @property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(scorer.field for scorer in self.text)

    @property
    def output_features(self) -> tuple[str, ...]:
        return (tuple(name for column in self.columns for name in column.outputs)
                + tuple(name for scorer in self.text for name in scorer.outputs))

    def transform(self, features: pd.DataFrame) -> np.ndarray:
        """The candidate features' part of the model inputs (float32): all of them unless there are text fields.

        Use model_inputs(pre, songs) to turn songs into the model's inputs."""
        absent = [name for name in self.input_features if name not in features.columns]
        if absent:
            needed = ", ".join(self.input_features)
            raise DataError(f"feature {absent[0]!r} is missing; the preprocessor needs {needed}")
        blocks = [column.transform(features[column.name].to_numpy(dtype=np.float64, na_value=np.nan))
                  for column in self.columns]
        return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)

    def to_dict(self, arrays_sha256: str | None = None) -> dict[str, Any]:
        """The JSON content; with text fields, `arrays_sha256` is the sha256 of the .npz holding their arrays."""
        data = {
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
        if self.text:
            data["text"] = {"arrays": ARRAYS_SUFFIX, "arrays_sha256": arrays_sha256,
                            "fields": {scorer.field: scorer.to_dict() for scorer in self.text}}
        return data

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: array for scorer in self.text for name, array in scorer.arrays().items()}

    @classmethod
    def from_dict(cls, data: Any, arrays: dict[str, np.ndarray] | None = None) -> Preprocessor:
        """Rebuild from to_dict()'s output (and arrays()'s, with text fields), refusing anything else with a
        ValueError that says what is wrong."""
        top = {key: value for key, value in data.items() if key != "text"} if isinstance(data, dict) else data
        _expect_keys(top, _TOP_KEYS, "the preprocessor")
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
        pre = cls(data_sha256=data["data_sha256"], scaler=data["scaler"], columns=tuple(columns),
                  text=_text_scorers(data.get("text"), arrays or {}))
        if data["output_features"] != list(pre.output_features):
            raise ValueError("output_features do not match the features and categories described")
        return pre


def _text_scorers(text: Any, arrays: dict[str, np.ndarray]) -> tuple[TextScorer, ...]:
    if text is None:
        return ()
    _expect_keys(text, _TEXT_KEYS, "text")
    fields = text["fields"]
    if not isinstance(fields, dict) or not fields:
        raise ValueError("text.fields must be a non-empty mapping of text fields to their statistics")
    unknown = [field for field in fields if field not in TEXT_FIELDS]
    if unknown:
        raise ValueError(f"text field {unknown[0]!r} is not one of {', '.join(TEXT_FIELDS)}")
    return tuple(scorer_from_dict(field, statistics, arrays) for field, statistics in fields.items())


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


def model_inputs(pre: Preprocessor, songs: pd.DataFrame) -> np.ndarray:
    """The model's inputs (float32, one column per output feature) for raw songs: what the model sees."""
    absent = [field for field in pre.text_fields if field not in songs.columns]
    if absent:
        raise DataError(f"column {absent[0]!r} is missing; the preprocessor scores the text of "
                        f"{', '.join(pre.text_fields)}")
    features = pre.transform(candidate_features(songs, pre.input_features))
    if not pre.text:
        return features
    scores = [scorer.transform(songs[scorer.field]) for scorer in pre.text]
    return np.ascontiguousarray(np.hstack([features, *scores]), dtype=np.float32)


def fit_model_inputs(train: pd.DataFrame, selected: list[str], params: PreprocessParams, *, data_sha256: str,
                     groups: pd.Series) -> tuple[Preprocessor, np.ndarray]:
    """Fit on the training songs alone; return the preprocessor and those songs' model inputs.

    The text scores of these songs are out of fold, by `groups` (see stages/text.py): for any other songs,
    model_inputs gives the scores of the model of all training songs."""
    pre = fit_preprocessor(candidate_features(train, selected), params, data_sha256=data_sha256)
    labels = encode_labels(train[LABEL])
    fitted = [fit_text_scorer(train[field], labels, groups, field, params.text) for field in params.text.fields]
    pre = Preprocessor(data_sha256=data_sha256, scaler=pre.scaler, columns=pre.columns,
                       text=tuple(scorer for scorer, _ in fitted))
    inputs = np.hstack([pre.transform(candidate_features(train, selected)), *(scores for _, scores in fitted)])
    return pre, np.ascontiguousarray(inputs, dtype=np.float32)


def encode_labels(genres: pd.Series) -> np.ndarray:
    """Each genre's index in GENRES (int64); an unknown genre is a DataError."""
    codes = pd.Index(GENRES).get_indexer(genres).astype(np.int64)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise DataError(f"row {row}: genre {genres.iloc[row]!r} is not one of {', '.join(GENRES)}")
    return codes


def arrays_path(path: str | os.PathLike) -> Path:
    """Where the .npz of the preprocessor at `path` lives: beside it, `preprocessor.json` -> `preprocessor.npz`."""
    return Path(path).with_suffix(ARRAYS_SUFFIX)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()  # np.savez stamps no time and no file name: the same arrays give the same bytes
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_preprocessor(path: str | os.PathLike, pre: Preprocessor) -> None:
    """Write the JSON and, beside it, the .npz of the text arrays (empty without text fields, so the file a
    pipeline declares always exists)."""
    content = _npz_bytes(pre.arrays())
    write_with(arrays_path(path), lambda tmp: tmp.write_bytes(content))
    write_json(path, pre.to_dict(hashlib.sha256(content).hexdigest()))


def _read_arrays(path: Path, text: Any) -> dict[str, np.ndarray]:
    """The .npz the JSON's text section names, checked against its recorded sha256; {} without text."""
    if not isinstance(text, dict):
        return {}
    if text.get("arrays") != ARRAYS_SUFFIX:
        raise BundleError(f"{path}: not a valid preprocessor: text.arrays must be {ARRAYS_SUFFIX!r}")
    where = arrays_path(path)
    try:
        content = where.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{where}: not found; it holds the text arrays of {path} "
                          "(run `dvc repro preprocess`, or copy it beside the JSON)") from None
    if hashlib.sha256(content).hexdigest() != text.get("arrays_sha256"):
        raise BundleError(f"{where}: its sha256 is not the one {path} records; the two come from different runs "
                          "(run `dvc repro preprocess`)")
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError) as error:
        raise BundleError(f"{where}: not a valid array archive ({error})") from None


def load_preprocessor(path: str | os.PathLike) -> Preprocessor:
    """Read and check a preprocessor JSON (and its .npz with text fields); anything missing, malformed or of
    another version is a BundleError."""
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
    arrays = _read_arrays(Path(path), data.get("text") if isinstance(data, dict) else None)
    try:
        return Preprocessor.from_dict(data, arrays)
    except (ValueError, TypeError) as error:
        raise BundleError(f"{path}: not a valid preprocessor: {error}") from None


def _refuse_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not a number JSON allows")
