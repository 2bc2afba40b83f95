"""One way to check what a file claims to be: a strict pydantic model, and one line naming the key on failure.

params.yaml (YAML), the preprocessor and its text section (JSON, read here without NaN or Infinity) and the model
bundle's metadata (torch.load with weights_only) are all validated this way, so each refuses unknown keys and
wrong types alike and names the key that is wrong. A command-line number is checked by whole_number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spotify_genre.errors import QUOTED_CHARACTERS, PipelineError, bounded, quoted

SHA256_PATTERN = r"^[0-9a-f]{64}$"
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what numpy's legacy RandomState and scikit-learn accept
Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Model = TypeVar("Model", bound=BaseModel)
MESSAGE_CHARACTERS = 300  # of a validator's own message, which may quote the value


class Strict(BaseModel):
    """Unknown keys, coercions (the string "1" for 1, 1 for True), infinities and NaN where a float is expected, and
    later mutation are all refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _key(part: Any) -> str:
    """One part of a key's dotted path, a huge key name cut short."""
    text = str(part)
    return text if len(text) <= QUOTED_CHARACTERS else quoted(text)


def describe(error: ValidationError, source: str) -> str:
    """The first problem as `source: dotted.key: message`, and how many more there are."""
    problems = error.errors(include_url=False, include_context=False)
    first = problems[0]
    key = ".".join(_key(part) for part in first["loc"]) or "(top level)"
    message = bounded(re.sub(r"^Value error, ", "", first["msg"]), MESSAGE_CHARACTERS)
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "missing key"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        message += f" (got {quoted(first['input'])})"
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {key}: {message}{suffix}"


def validated(model: type[Model], data: Any, source: str, error: type[PipelineError]) -> Model:
    """`data` as `model`, or `error` with describe()'s line."""
    try:
        return model.model_validate(data)
    except ValidationError as problem:
        raise error(describe(problem, source)) from None


def _refuse_constant(constant: str) -> float:
    raise ValueError(f"{constant} is not a number JSON allows")


def read_bytes(path: str | os.PathLike, error: type[PipelineError], missing: str) -> bytes:
    """A file's bytes, or `error` naming it; `missing` is what to say when it is absent (`not found; run ...`)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except OSError as problem:
        raise error(f"{path}: cannot be read ({problem.strerror or problem})") from None


def parse_json(content: bytes, path: str | os.PathLike, error: type[PipelineError], invalid: str) -> Any:
    """`content` (the bytes of the file at `path`) as JSON, NaN and Infinity refused, or `error` naming the file
    and what to do (`invalid`)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; {invalid}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as problem:
        raise error(f"{path}: not valid JSON (line {problem.lineno}, column {problem.colno}: {problem.msg}); "
                    f"{invalid}") from None
    except ValueError as problem:
        raise error(f"{path}: {problem}; {invalid}") from None


def read_json(path: str | os.PathLike, error: type[PipelineError], missing: str, invalid: str) -> Any:
    """The parsed content of a JSON file, or `error` naming it: `missing` says what to do when it is absent
    (`run dvc repro select first`), `invalid` when it does not parse."""
    return parse_json(read_bytes(path, error, f"not found; {missing}"), path, error, invalid)


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `minimum` to `maximum`, or argparse's one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {quoted(text)}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected {minimum} to {maximum:,}, got {quoted(value)}")
        return value

    return parse
