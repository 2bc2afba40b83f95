"""The fitted preprocessor: imputation, encoding and scaling learned on training rows, stored as plain JSON.

The pipeline's preprocess stage fits it (pipeline/preprocessor_fitting.py) and saves it with save_preprocessor;
everything that later turns songs into model inputs loads it with load_preprocessor. The JSON holds only numbers
and names, never code, so loading an untrusted file cannot execute anything; every field is checked on load
(PreprocessorFile).

Numeric feature: missing -> training median; optional log1p (values below 0 are clipped to 0 first);
then (x - center) / scale, center/scale being mean/std (standard) or median/IQR (robust) of the transformed
training values, scale 1 where the training values do not vary.
Categorical feature (key, mode, release_date_precision): missing -> the most frequent training category; then
onehot (one column per training category, `key_5`; an unseen category gives all zeros) or ordinal (the
category's position among the sorted training categories; an unseen category gives -1).
Text field (preprocess.text.fields): one standardised genre score per genre, `track_name_rock`, from a naive
Bayes model of the field's character n-grams (text_scores.py).
Id field (preprocess.ids.fields): one standardised score per genre, `track_album_id_rock`, and
`track_album_id_songs`, from the genres of the training songs with the same id (id_scores.py).
Known ids: the training songs' albums and artists, which tell how new a song is (novelty.py); no model input.
The arrays of text and id fields and the known ids are too large for JSON and go to an .npz beside it
(`<name>.npz`, read with allow_pickle=False), whose sha256 each section that has arrays records.

model_inputs(pre, songs) turns raw songs into the model's inputs.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from spotify_genre.atomic import write_json, write_with
from spotify_genre.errors import BundleError, DataError
from spotify_genre.preprocessing.id_scores import IdScorer
from spotify_genre.preprocessing.novelty import FIELDS as KNOWN_FIELDS
from spotify_genre.preprocessing.novelty import KnownIds
from spotify_genre.preprocessing.text_scores import TextScorer
from spotify_genre.songs.features import (CANDIDATE_FEATURES, CATEGORICAL_FEATURES, ID_FIELDS, TEXT_FIELDS,
                                          candidate_features)
from spotify_genre.songs.schema import GENRES
from spotify_genre.validation import Finite, Positive, PositiveInt, Sha256, Strict, parse_json, read_bytes, validated

FORMAT_VERSION = 1
ARRAYS_SUFFIX = ".npz"
PerGenre = Annotated[list[Finite], Field(min_length=len(GENRES), max_length=len(GENRES))]


class NumericStats(Strict):
    impute: Finite
    log1p: bool
    center: Finite
    scale: Positive


class CategoricalStats(Strict):
    impute: int
    categories: Annotated[list[int], Field(min_length=1)]
    encoding: Literal["onehot", "ordinal"]

    @model_validator(mode="after")
    def _sorted_and_known(self) -> CategoricalStats:
        if self.categories != sorted(set(self.categories)):
            raise ValueError("categories must be distinct integers, in order")
        if self.impute not in self.categories:
            raise ValueError(f"impute must be one of its categories, not {self.impute!r}")
        return self


class TextFieldStats(Strict):
    buckets: PositiveInt
    ngram_min: PositiveInt
    ngram_max: PositiveInt
    log_prior: PerGenre
    center: PerGenre
    scale: Annotated[list[Positive], Field(min_length=len(GENRES), max_length=len(GENRES))]

    @model_validator(mode="after")
    def _ngram_range(self) -> TextFieldStats:
        if self.ngram_min > self.ngram_max:
            raise ValueError("ngram_min exceeds ngram_max")
        return self


class TextSection(Strict):
    arrays: Literal[ARRAYS_SUFFIX]
    arrays_sha256: Sha256
    fields: Annotated[dict[Literal[TEXT_FIELDS], TextFieldStats], Field(min_length=1)]


class IdFieldStats(Strict):
    alpha: Positive
    prior: Annotated[list[Positive], Field(min_length=len(GENRES), max_length=len(GENRES))]
    center: Annotated[list[Finite], Field(min_length=len(GENRES) + 1, max_length=len(GENRES) + 1)]
    scale: Annotated[list[Positive], Field(min_length=len(GENRES) + 1, max_length=len(GENRES) + 1)]


class IdSection(Strict):
    arrays: Literal[ARRAYS_SUFFIX]
    arrays_sha256: Sha256
    fields: Annotated[dict[Literal[ID_FIELDS], IdFieldStats], Field(min_length=1)]


class KnownSection(Strict):
    arrays: Literal[ARRAYS_SUFFIX]
    arrays_sha256: Sha256
    fields: list[str]

    @model_validator(mode="after")
    def _the_known_fields(self) -> KnownSection:
        if self.fields != list(KNOWN_FIELDS):
            raise ValueError(f"known fields are {self.fields!r}; expected {list(KNOWN_FIELDS)!r}")
        return self


class PreprocessorFile(Strict):
    """The JSON file, as to_dict() writes it."""

    format_version: Literal[FORMAT_VERSION]
    data_sha256: Sha256
    input_features: Annotated[list[Literal[CANDIDATE_FEATURES]], Field(min_length=1)]
    output_features: list[str]
    classes: list[str]
    scaler: Literal["standard", "robust"]
    numeric: dict[str, NumericStats]
    categorical: dict[str, CategoricalStats]
    text: TextSection | None = None
    ids: IdSection | None = None
    known: KnownSection | None = None  # absent from files written before the known ids were kept

    @property
    def arrays_sha256(self) -> str | None:
        """The sha256 of the .npz beside the file; None where it has no arrays."""
        section = self.text or self.ids or self.known
        return None if section is None else section.arrays_sha256

    @model_validator(mode="after")
    def _each_input_described_once(self) -> PreprocessorFile:
        if self.classes != list(GENRES):
            raise ValueError(f"classes are {self.classes!r}; expected {list(GENRES)!r}")
        if len(set(self.input_features)) != len(self.input_features):
            raise ValueError("input_features are not distinct")
        for name in self.input_features:
            categorical = name in CATEGORICAL_FEATURES
            under, other = (self.categorical, self.numeric) if categorical else (self.numeric, self.categorical)
            if name not in under or name in other:
                raise ValueError(f"input feature {name!r} must be described once, under "
                                 f"{'categorical' if categorical else 'numeric'}")
        if len(self.numeric) + len(self.categorical) != len(self.input_features):
            raise ValueError("numeric and categorical describe features that are not in input_features")
        named = {section.arrays_sha256 for section in (self.text, self.ids, self.known) if section is not None}
        if len(named) > 1:
            raise ValueError("text, ids and known name different arrays (their arrays_sha256 differ)")
        return self


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
    ids: tuple[IdScorer, ...] = ()
    known: KnownIds | None = None
    # The sha256 of the JSON file it was loaded from (None if fitted in this process): the model bundle records
    # the one it was trained with.
    sha256: str | None = field(default=None, compare=False)

    @property
    def input_features(self) -> tuple[str, ...]:
        """The candidate features it reads (see features.py); the text fields it reads are `text_fields`."""
        return tuple(column.name for column in self.columns)

    @property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(scorer.field for scorer in self.text)

    @property
    def id_fields(self) -> tuple[str, ...]:
        return tuple(scorer.field for scorer in self.ids)

    @property
    def song_fields(self) -> tuple[str, ...]:
        """The song columns it reads besides the candidate features: its text fields, then its id fields."""
        return self.text_fields + tuple(field for field in self.id_fields if field not in self.text_fields)

    @property
    def output_features(self) -> tuple[str, ...]:
        return (tuple(name for column in self.columns for name in column.outputs)
                + tuple(name for scorer in self.text for name in scorer.outputs)
                + tuple(name for scorer in self.ids for name in scorer.outputs))

    def transform(self, features: pd.DataFrame) -> np.ndarray:
        """The candidate features' part of the model inputs (float32): all of them unless there are text or id
        fields.

        Use model_inputs(pre, songs) to turn songs into the model's inputs."""
        absent = [name for name in self.input_features if name not in features.columns]
        if absent:
            needed = ", ".join(self.input_features)
            raise DataError(f"feature {absent[0]!r} is missing; the preprocessor needs {needed}")
        blocks = [column.transform(features[column.name].to_numpy(dtype=np.float64, na_value=np.nan))
                  for column in self.columns]
        return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)

    def to_dict(self, arrays_sha256: str | None = None) -> dict[str, Any]:
        """The JSON content; with text or id fields or known ids, `arrays_sha256` is the sha256 of the .npz
        holding their arrays."""
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
        if self.ids:
            data["ids"] = {"arrays": ARRAYS_SUFFIX, "arrays_sha256": arrays_sha256,
                           "fields": {scorer.field: scorer.to_dict() for scorer in self.ids}}
        if self.known is not None:
            data["known"] = {"arrays": ARRAYS_SUFFIX, "arrays_sha256": arrays_sha256, "fields": list(KNOWN_FIELDS)}
        return data

    def arrays(self) -> dict[str, np.ndarray]:
        """The text and id fields' arrays, each named `<field>.<array>`, and the known ids (`known.<field>`); a field
        both scores (track_artist) keeps its text arrays and its id arrays apart by their names."""
        arrays = {name: array for scorer in (*self.text, *self.ids) for name, array in scorer.arrays().items()}
        return arrays if self.known is None else {**arrays, **self.known.arrays()}

    @classmethod
    def from_file(cls, data: PreprocessorFile, arrays: dict[str, np.ndarray],
                  sha256: str | None = None) -> Preprocessor:
        """Rebuild from a validated file and its arrays (with text or id fields); ValueError if they do not
        agree."""
        columns = tuple(
            NumericColumn(name, **data.numeric[name].model_dump()) if name in data.numeric
            else CategoricalColumn(name, data.categorical[name].impute, tuple(data.categorical[name].categories),
                                   data.categorical[name].encoding)
            for name in data.input_features)
        text = () if data.text is None else tuple(
            _text_scorer(name, stats, arrays) for name, stats in data.text.fields.items())
        ids = () if data.ids is None else tuple(
            _id_scorer(name, stats, arrays) for name, stats in data.ids.fields.items())
        known = None if data.known is None else KnownIds.from_arrays(arrays)
        pre = cls(data_sha256=data.data_sha256, scaler=data.scaler, columns=columns, text=text, ids=ids, known=known,
                  sha256=sha256)
        if data.output_features != list(pre.output_features):
            raise ValueError("output_features do not match the features and categories described")
        return pre


def _text_scorer(name: str, stats: TextFieldStats, arrays: dict[str, np.ndarray]) -> TextScorer:
    shapes = {f"{name}.idf": (stats.buckets,), f"{name}.log_likelihood": (len(GENRES), stats.buckets)}
    for key, shape in shapes.items():
        array = arrays.get(key)
        if array is None or array.dtype != np.float32 or array.shape != shape or not np.isfinite(array).all():
            raise ValueError(f"array {key!r} must be finite float32 of shape {shape}")
    return TextScorer(name, stats.buckets, stats.ngram_min, stats.ngram_max, arrays[f"{name}.idf"],
                      arrays[f"{name}.log_likelihood"], tuple(stats.log_prior), tuple(stats.center),
                      tuple(stats.scale))


def _id_scorer(name: str, stats: IdFieldStats, arrays: dict[str, np.ndarray]) -> IdScorer:
    keys, counts = arrays.get(f"{name}.keys"), arrays.get(f"{name}.counts")
    if keys is None or keys.dtype.kind != "U" or keys.ndim != 1 or (keys[1:] <= keys[:-1]).any():
        raise ValueError(f"array {name + '.keys'!r} must be distinct strings in sorted order")
    if (counts is None or counts.dtype != np.int32 or counts.shape != (len(keys), len(GENRES))
            or (counts < 0).any()):
        raise ValueError(f"array {name + '.counts'!r} must be non-negative int32 of shape {(len(keys), len(GENRES))}")
    return IdScorer(name, keys, counts, tuple(stats.prior), stats.alpha, tuple(stats.center), tuple(stats.scale))


def model_inputs(pre: Preprocessor, songs: pd.DataFrame) -> np.ndarray:
    """The model's inputs (float32, one column per output feature) for raw songs: what the model sees."""
    absent = [field for field in pre.song_fields if field not in songs.columns]
    if absent:
        raise DataError(f"column {absent[0]!r} is missing; the preprocessor scores these columns: "
                        f"{', '.join(pre.song_fields)}")
    features = pre.transform(candidate_features(songs, pre.input_features))
    scores = [scorer.transform(songs[scorer.field]) for scorer in (*pre.text, *pre.ids)]
    if not scores:
        return features
    return np.ascontiguousarray(np.hstack([features, *scores]), dtype=np.float32)


def arrays_path(path: str | os.PathLike) -> Path:
    """Where the .npz of the preprocessor at `path` lives: beside it, `preprocessor.json` -> `preprocessor.npz`."""
    return Path(path).with_suffix(ARRAYS_SUFFIX)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()  # np.savez stamps no time and no file name: the same arrays give the same bytes
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_preprocessor(path: str | os.PathLike, pre: Preprocessor) -> None:
    """Write the JSON and, beside it, the .npz of the text and id arrays (empty without such fields, so the file
    a pipeline declares always exists)."""
    content = _npz_bytes(pre.arrays())
    write_with(arrays_path(path), lambda tmp: tmp.write_bytes(content))
    write_json(path, pre.to_dict(hashlib.sha256(content).hexdigest()))


def _read_arrays(path: Path, sha256: str | None) -> dict[str, np.ndarray]:
    """The .npz the JSON's text and id sections name, checked against their recorded sha256; {} without them."""
    if sha256 is None:
        return {}
    where = arrays_path(path)
    try:
        content = where.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{where}: not found; it holds the text and id arrays of {path} "
                          "(run `dvc repro preprocess`, or copy it beside the JSON)") from None
    if hashlib.sha256(content).hexdigest() != sha256:
        raise BundleError(f"{where}: its sha256 is not the one {path} records; the two come from different runs "
                          "(run `dvc repro preprocess`)")
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError) as error:
        raise BundleError(f"{where}: not a valid array archive ({error})") from None


def load_preprocessor(path: str | os.PathLike) -> Preprocessor:
    """Read and check a preprocessor JSON (and its .npz with text or id fields); anything missing, malformed or of
    another version is a BundleError."""
    path = Path(path)
    content = read_bytes(path, BundleError, "not found; run `dvc repro preprocess` to create it")
    parsed = parse_json(content, path, BundleError, "run `dvc repro preprocess` again")
    data = validated(PreprocessorFile, parsed, f"{path}: not a valid preprocessor", BundleError)
    try:
        return Preprocessor.from_file(data, _read_arrays(path, data.arrays_sha256), hashlib.sha256(content).hexdigest())
    except ValueError as error:
        raise BundleError(f"{path}: not a valid preprocessor: {error}") from None
