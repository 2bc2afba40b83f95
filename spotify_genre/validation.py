"""One way to read what a file claims to be: strict JSON, then a strict pydantic model, then one line on failure.

params.yaml, the preprocessor, the text scorer and the model bundle's metadata are all read this way, so each
refuses unknown keys and wrong types alike and names the key that is wrong.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from spotify_genre.errors import PipelineError

SHA256_PATTERN = r"^[0-9a-f]{64}$"
Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys, coercions (the string "1" for 1, 1 for True) and later mutation are all refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def describe(error: ValidationError, source: str) -> str:
    """The first problem as `source: dotted.key: message`, and how many more there are."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = re.sub(r"^Value error, ", "", first["msg"])
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "missing key"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        message += f" (got {first['input']!r})"
    more = len(error.errors()) - 1
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


def read_json(path: str | os.PathLike, error: type[PipelineError], missing: str, invalid: str = "") -> Any:
    """The parsed content of a JSON file (NaN and Infinity refused), or `error` naming the file.

    `missing` is what to do when the file is absent (`run dvc repro select first`); `invalid`, when it does not
    parse (default: the same advice)."""
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise error(f"{path}: not found; {missing}") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{path}: cannot be read as UTF-8 text ({type(problem).__name__}); {invalid or missing}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as problem:
        raise error(f"{path}: not valid JSON (line {problem.lineno}, column {problem.colno}: {problem.msg}); "
                    f"{invalid or missing}") from None
    except ValueError as problem:
        raise error(f"{path}: {problem}; {invalid or missing}") from None
