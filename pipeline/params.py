"""The typed model of params.yaml. Every stage loads it whole, first, so a typo fails before any work."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from spotify_genre.errors import ParamsError, bounded, quoted
from spotify_genre.songs.features import CANDIDATE_FEATURES, CATEGORICAL_FEATURES, ID_FIELDS, TEXT_FIELDS
from spotify_genre.songs.schema import PLAYLIST_FIELDS
from spotify_genre.validation import NonNegativeInt, PositiveInt, Seed, Sha256, Strict, validated

PARAMS_FILE = Path("params.yaml")

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
# Counts that size an allocation, a loop or a C integer are bounded, so that a typo of a few zeros is one line here
# rather than an allocation failure, an OverflowError or days of work later.
Epochs = Annotated[int, Field(ge=1, le=100_000)]
EpochCount = Annotated[int, Field(ge=0, le=100_000)]
MAX_LAYER_WIDTH = 8192
MAX_HIDDEN_WEIGHTS = 1 << 28  # between hidden layers, over every member: 1 GiB of float32, and as much again per
# copy the optimizer keeps
LayerWidth = Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]


class DataParams(Strict):
    source: Literal["auto", "kaggle", "url", "file", "synthetic"]
    external_dir: str
    path: str
    kaggle_dataset: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    sha256: Sha256 | None
    timeout_s: Annotated[float, Field(gt=0.0, le=600.0)]
    retries: Annotated[int, Field(ge=0, le=10)]
    synthetic_rows: Annotated[int, Field(ge=60, le=10_000_000)]
    synthetic_seed: Seed


class SplitParams(Strict):
    val_size: Fraction
    test_size: Fraction
    seed: Seed
    missing: Literal["drop", "impute"]
    group_by: Literal["track_id", "track_artist"]

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitParams:
        if self.val_size + self.test_size >= 0.9:
            raise ValueError("val_size + test_size must leave at least 10% of the songs for training")
        return self


class SelectParams(Strict):
    candidates: Annotated[list[str], Field(min_length=1)]
    k: Annotated[int, Field(ge=1, le=1000)] | None
    max_p_value: Annotated[float, Field(gt=0.0, le=1.0)]
    min_eta_squared: Annotated[float, Field(ge=0.0, lt=1.0)]

    @field_validator("candidates")
    @classmethod
    def _known_and_safe(cls, candidates: list[str]) -> list[str]:
        for name in candidates:
            if name in PLAYLIST_FIELDS:
                raise ValueError(f"{quoted(name)} is a playlist field: it determines the genre and must never be a "
                                 "model input")
            if name not in CANDIDATE_FEATURES:
                raise ValueError(f"unknown feature {quoted(name)}; candidates are {', '.join(CANDIDATE_FEATURES)}")
        if len(set(candidates)) != len(candidates):
            raise ValueError("a feature is listed twice")
        return candidates


def known_fields(fields: list[str], known: tuple[str, ...] = TEXT_FIELDS, kind: str = "text") -> list[str]:
    """Song fields a model may read: known, distinct, and never a playlist field."""
    for name in fields:
        if name in PLAYLIST_FIELDS:
            raise ValueError(f"{quoted(name)} is a playlist field: it determines the genre and must never be a "
                             "model input")
        if name not in known:
            raise ValueError(f"unknown {kind} field {quoted(name)}; {kind} fields are {', '.join(known)}")
    if len(set(fields)) != len(fields):
        raise ValueError("a field is listed twice")
    return fields


class TextParams(Strict):
    fields: list[str]
    buckets: Annotated[int, Field(ge=16, le=1_048_576)]
    ngram_min: Annotated[int, Field(ge=1, le=8)]
    ngram_max: Annotated[int, Field(ge=1, le=8)]
    alpha: Annotated[float, Field(gt=0.0, le=100.0)]
    folds: Annotated[int, Field(ge=2, le=20)]

    @field_validator("fields")
    @classmethod
    def _known_and_safe(cls, fields: list[str]) -> list[str]:
        return known_fields(fields)

    @model_validator(mode="after")
    def _ngram_range(self) -> TextParams:
        if self.ngram_min > self.ngram_max:
            raise ValueError("ngram_min must not exceed ngram_max")
        return self


class IdParams(Strict):
    fields: list[str]
    alpha: Annotated[float, Field(gt=0.0, le=1000.0)]
    folds: Annotated[int, Field(ge=2, le=20)]

    @field_validator("fields")
    @classmethod
    def _known_and_safe(cls, fields: list[str]) -> list[str]:
        return known_fields(fields, ID_FIELDS, "id")


class PreprocessParams(Strict):
    categorical: Literal["onehot", "ordinal"]
    scaler: Literal["standard", "robust"]
    log_transform: list[str]
    text: TextParams
    ids: IdParams

    @field_validator("log_transform")
    @classmethod
    def _known_numeric(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in CANDIDATE_FEATURES or name in CATEGORICAL_FEATURES:
                raise ValueError(f"{quoted(name)} is not a numeric candidate feature")
        return names


class EmbeddingParams(Strict):
    kind: Literal["periodic", "none"]
    frequencies: Annotated[int, Field(ge=1, le=256)]
    dim: Annotated[int, Field(ge=1, le=256)]
    sigma: Annotated[float, Field(gt=0.0, le=100.0)]


class TextEncoderParams(Strict):
    kind: Literal["none", "gru", "lstm"]
    fields: list[str]
    max_chars: Annotated[int, Field(ge=1, le=512)]
    embedding_dim: Annotated[int, Field(ge=1, le=256)]
    hidden: Annotated[int, Field(ge=1, le=512)]

    @field_validator("fields")
    @classmethod
    def _text_fields(cls, fields: list[str]) -> list[str]:
        return known_fields(fields)

    @model_validator(mode="after")
    def _fields_to_encode(self) -> TextEncoderParams:
        if self.kind != "none" and not self.fields:
            raise ValueError(f"kind {self.kind} needs at least one field to encode")
        return self


class TrainParams(Strict):
    max_epochs: Epochs
    patience: Epochs
    min_delta: Annotated[float, Field(ge=0.0)]
    optimizer: Literal["sgd", "adamw"]
    weight_decay: Annotated[float, Field(ge=0.0)]
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)]
    subgenre_weight: Annotated[float, Field(ge=0.0, le=100.0)]
    hidden_sizes: Annotated[list[LayerWidth], Field(min_length=1, max_length=16)]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    members: Annotated[int, Field(ge=1, le=64)]
    embedding: EmbeddingParams
    text_encoder: TextEncoderParams
    schedule: Literal["plateau", "cosine", "step", "none"]
    warmup_epochs: EpochCount
    step_size: Epochs
    gamma: Annotated[float, Field(gt=0.0, le=1.0)]
    plateau_patience: EpochCount
    seed: Seed
    device: Literal["auto", "cpu", "cuda"]
    threads: Annotated[int, Field(ge=1, le=1024)]

    @model_validator(mode="after")
    def _fits_in_memory(self) -> TrainParams:
        sizes = self.hidden_sizes
        weights = self.members * sum(a * b for a, b in zip(sizes, sizes[1:]))
        if weights > MAX_HIDDEN_WEIGHTS:
            raise ValueError(f"hidden_sizes {quoted(sizes)} with {self.members} members: {weights:,} weights between "
                             f"hidden layers; at most {MAX_HIDDEN_WEIGHTS:,}")
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainParams:
        if self.warmup_epochs and self.schedule == "plateau":
            raise ValueError("warmup_epochs needs schedule cosine, step or none (plateau sets the rate from the "
                             "validation loss); set warmup_epochs to 0")
        if self.warmup_epochs >= self.max_epochs:
            raise ValueError("warmup_epochs must be less than max_epochs")
        return self


SampleFraction = Annotated[float, Field(gt=0.0, le=1.0)]  # of rows or features a tree sees; 1.0: all of them
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
BoostingRounds = Annotated[int, Field(ge=1, le=100_000)]
HistogramBins = Annotated[int, Field(ge=2, le=65_535)]  # bins each feature's values are bucketed into


PeerTarget = Literal["genre", "subgenre"]  # subgenre: fit the playlist subgenres, sum them to genres


class LightGBMParams(Strict):
    target: PeerTarget
    learning_rate: LearningRate
    num_leaves: Annotated[int, Field(ge=2, le=131_072)]
    min_data_in_leaf: Annotated[int, Field(ge=1, le=1_000_000)]
    feature_fraction: SampleFraction
    bagging_fraction: SampleFraction
    lambda_l2: Annotated[float, Field(ge=0.0, le=1.0e6)]
    max_bin: HistogramBins
    max_rounds: BoostingRounds
    early_stopping_rounds: BoostingRounds


class XGBoostParams(Strict):
    target: PeerTarget
    learning_rate: LearningRate
    max_depth: Annotated[int, Field(ge=1, le=20)]
    min_child_weight: Annotated[float, Field(ge=0.0, le=1.0e6)]
    subsample: SampleFraction
    colsample_bytree: SampleFraction
    reg_lambda: Annotated[float, Field(ge=0.0, le=1.0e6)]
    max_bin: HistogramBins
    max_rounds: BoostingRounds
    early_stopping_rounds: BoostingRounds


BaselineName = Literal["majority", "hist_gradient_boosting", "lightgbm", "xgboost", "random_forest"]


class BaselinesParams(Strict):
    models: list[BaselineName]
    seed: Seed
    rf_trees: Annotated[int, Field(ge=1, le=2000)]
    threads: Annotated[int, Field(ge=1, le=256)]
    jobs: Annotated[int, Field(ge=1, le=64)]
    max_train_rows: PositiveInt | None
    lightgbm: LightGBMParams
    xgboost: XGBoostParams

    @field_validator("models")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("a baseline is listed twice")
        return names


class BootstrapParams(Strict):
    resamples: Annotated[int, Field(ge=100, le=100_000)]
    confidence: Fraction
    seed: Seed


class EvaluateParams(Strict):
    bootstrap: BootstrapParams


class Params(Strict):
    lr: Annotated[float, Field(gt=0.0, le=10.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    batch_size: Annotated[int, Field(ge=1, le=1 << 20)]
    data: DataParams
    split: SplitParams
    select: SelectParams
    preprocess: PreprocessParams
    train: TrainParams
    baselines: BaselinesParams
    evaluate: EvaluateParams

    @field_validator("batch_size")
    @classmethod
    def _two_rows_for_batch_norm(cls, size: int) -> int:
        if size < 2:
            raise ValueError("must be at least 2: BatchNorm cannot train on a batch of one row")
        return size


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys to values at the top level")
    return validated(Params, raw, source, ParamsError)


class AliasRefused(yaml.YAMLError):
    """A YAML alias (`*name`): refused where it is met, before anything is expanded."""

    def __init__(self, mark):
        super().__init__()
        self.problem_mark = mark


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing aliases: ten nested lists of ten aliases each are 10**10 values once expanded
    (a "billion laughs"), which the loader does not do, but dumping or copying the settings would."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise AliasRefused(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def read_yaml(path: str | os.PathLike, what: str = "") -> Any:
    """A YAML file's content, or one ParamsError line: missing (with `what` it is for), a folder, unreadable, not
    UTF-8, holding an alias, or where its syntax breaks."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found ({what + '; ' if what else ''}run from the repository root)") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder; expected a YAML file{' (' + what + ')' if what else ''}") from None
    except UnicodeDecodeError:
        raise ParamsError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ParamsError(f"{path}: cannot be read ({error.strerror or error})") from None
    loader = _NoAliasLoader(text)  # what yaml.safe_load does, with the safe loader that refuses aliases
    try:
        return loader.get_single_data()
    except AliasRefused as error:
        mark = error.problem_mark
        raise ParamsError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: a YAML alias (*name); aliases "
                          "are refused, as one can expand to billions of values: write the value out") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ParamsError(f"{path}: YAML syntax error{where}: {bounded(problem, 200)}") from None
    finally:
        loader.dispose()


def load_params(path: str | os.PathLike = PARAMS_FILE) -> Params:
    """Read and validate the whole of params.yaml."""
    return parse_params(read_yaml(path), str(path))


def with_values(raw_params: dict, values: dict[str, Any], *, new_keys: bool = True) -> dict:
    """A copy of params.yaml's mapping with each dotted key (`train.max_epochs`) set to its value; a key params.yaml
    lacks is added, or with `new_keys` False refused (ParamsError)."""
    params = copy.deepcopy(raw_params)
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        if not new_keys and leaf not in node:
            raise ParamsError(f"params.yaml has no key {dotted!r}")
        node[leaf] = value
    return params
