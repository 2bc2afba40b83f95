"""tuning.yaml: the settings of `python -m experiments.tune` and its search space, checked against params.yaml whole
before any trial runs, so an unknown key, an empty range or a value params.yaml would refuse fails first."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from pipeline.params import Params, parse_params, read_yaml, with_values
from spotify_genre.errors import ParamsError, quoted
from spotify_genre.validation import NonNegativeInt, PositiveInt, Seed, Strict, validated

TUNING_FILE = Path("tuning.yaml")
TUNED_ROOTS = ("lr", "momentum", "batch_size", "train")  # what changes a fit on data/processed/, and nothing before it

Number = int | float


class RangeSpec(Strict):
    low: Number
    high: Number
    log: bool = False
    step: Number | None = None


class ChoiceSpec(Strict):
    choices: Annotated[list[Any], Field(min_length=1)]


class PrunerSettings(Strict):
    kind: Literal["median", "none"]
    startup_trials: NonNegativeInt
    warmup_epochs: NonNegativeInt


class TuningSettings(Strict):
    study: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
    trials: Annotated[int, Field(ge=1, le=1_000_000)]
    seed: Seed
    storage: Annotated[str, Field(min_length=1)]
    heartbeat_seconds: Annotated[int, Field(ge=1, le=3600)]
    pruner: PrunerSettings
    space: Annotated[dict[str, dict[str, Any]], Field(min_length=1)]  # each checked by search_space()


@dataclass(frozen=True)
class Dimension:
    """One tuned key of params.yaml: a float or integer range, or a list of choices."""

    name: str  # dotted, as `dvc exp run -S` takes it
    kind: Literal["float", "int", "choice"]
    low: Number = 0
    high: Number = 0
    log: bool = False
    step: Number | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """The value an Optuna trial draws; a choice that is a list (hidden_sizes) travels as its JSON text."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        label = trial.suggest_categorical(self.name, [choice_label(choice) for choice in self.choices])
        return self.decode(label)

    def decode(self, value: Any) -> Any:
        """A value as Optuna stores it (trial.params), as params.yaml holds it."""
        if self.kind != "choice":
            return value
        return next(choice for choice in self.choices if choice_label(choice) == value)


def choice_label(choice: Any) -> Any:
    return json.dumps(choice) if isinstance(choice, (list, dict)) else choice


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]

    def suggest(self, trial) -> dict[str, Any]:
        return {dimension.name: dimension.suggest(trial) for dimension in self.dimensions}

    def decode(self, optuna_params: dict[str, Any]) -> dict[str, Any]:
        return {dimension.name: dimension.decode(optuna_params[dimension.name])
                for dimension in self.dimensions if dimension.name in optuna_params}

    @property
    def names(self) -> list[str]:
        return [dimension.name for dimension in self.dimensions]


def load_settings(path: str | os.PathLike = TUNING_FILE) -> TuningSettings:
    path = Path(path)
    raw = read_yaml(path, "the search space of `python -m experiments.tune`")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values at the top level")
    return validated(TuningSettings, raw, str(path), ParamsError)


def trial_params(raw_params: dict, values: dict[str, Any], source: str = "params.yaml") -> Params:
    """params.yaml with a trial's values, validated whole as every stage validates it."""
    return parse_params(with_values(raw_params, values), source)


def _leaf(raw_params: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = raw_params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _dimension(name: str, spec: RangeSpec | ChoiceSpec, current: Any, where: str) -> Dimension:
    if isinstance(spec, ChoiceSpec):
        labels = [choice_label(choice) for choice in spec.choices]
        if len(set(map(str, labels))) != len(labels):
            raise ParamsError(f"{where}: a choice is listed twice")
        return Dimension(name, "choice", choices=tuple(spec.choices))
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise ParamsError(f"{where}: params.yaml holds {quoted(current)} there, not a number: give {{choices: [...]}}")
    kind = "int" if isinstance(current, int) else "float"
    low, high, step = spec.low, spec.high, spec.step
    if kind == "int" and not all(isinstance(v, int) for v in (low, high, step or 1)):
        raise ParamsError(f"{where}: an integer parameter needs whole-number low, high and step")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ParamsError(f"{where}: low and high must be finite numbers")
    if low > high:
        raise ParamsError(f"{where}: low {low} is above high {high}: an empty range")
    if low == high:
        raise ParamsError(f"{where}: low and high are both {low}: a fixed value belongs in params.yaml")
    if spec.log and low <= 0:
        raise ParamsError(f"{where}: a log range needs low above 0, got {low}")
    if spec.log and step is not None:
        raise ParamsError(f"{where}: give log or step, not both")
    if step is not None and step <= 0:
        raise ParamsError(f"{where}: step must be above 0, got {step}")
    if kind == "float":
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return Dimension(name, kind, low=low, high=high, log=spec.log, step=step)


def _extremes(dimension: Dimension) -> list[tuple[str, Any]]:
    if dimension.kind == "choice":
        return [(f"choice {quoted(choice)}", choice) for choice in dimension.choices]
    return [(f"low {dimension.low}", dimension.low), (f"high {dimension.high}", dimension.high)]


def search_space(settings: TuningSettings, raw_params: dict, source: str = str(TUNING_FILE)) -> SearchSpace:
    """The space of tuning.yaml, each key a leaf of params.yaml under lr, momentum, batch_size or train, and each
    bound and choice a value params.yaml accepts there."""
    dimensions = []
    for name, raw_spec in settings.space.items():
        where = f"{source}: space.{name}"
        spec = validated(ChoiceSpec if "choices" in raw_spec else RangeSpec, raw_spec, f"{source}: space.{name}",
                         ParamsError)
        if name.split(".")[0] not in TUNED_ROOTS:
            raise ParamsError(f"{where}: not tuned in-process (tunable: {', '.join(TUNED_ROOTS[:-1])} and any key "
                              f"under train; earlier stages' params need `dvc exp run` instead)")
        found, current = _leaf(raw_params, name)
        if not found:
            raise ParamsError(f"{where}: not a key of params.yaml")
        if isinstance(current, dict):
            raise ParamsError(f"{where}: a section of params.yaml; name one of its keys ({', '.join(current)})")
        dimension = _dimension(name, spec, current, where)
        for label, value in _extremes(dimension):
            try:
                trial_params(raw_params, {name: value})
            except ParamsError as error:
                reason = str(error).split(": ", 1)[-1]
                raise ParamsError(f"{where}: {label}: params.yaml would refuse it ({reason})") from None
        dimensions.append(dimension)
    return SearchSpace(tuple(dimensions))


def dvc_overrides(values: dict[str, Any]) -> list[str]:
    """`dvc exp run -S` arguments that set params.yaml to `values`: key=value in Hydra's override grammar, floats
    with a decimal point so that every YAML loader reads them back as floats, to the last bit."""
    return [f"{name}={_override_value(value)}" for name, value in values.items()]


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}e{exponent}" if exponent else mantissa
    if isinstance(value, list):
        return "[" + ",".join(_override_value(item) for item in value) + "]"
    return str(value)
