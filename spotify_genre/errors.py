"""Expected errors: one clear line on stderr and a documented exit code, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class PipelineError(Exception):
    """An expected failure the user can fix; its message is the whole story."""

    exit_code = 1


class ParamsError(PipelineError):
    """params.yaml is missing, malformed, or has an unknown key or a wrong value."""

    exit_code = 2


class DataError(PipelineError):
    """Input songs that do not match the raw-data schema, or bytes that do not match the pin."""

    exit_code = 3


class AcquisitionError(PipelineError):
    """The dataset could not be obtained through any configured channel."""

    exit_code = 4


class BundleError(PipelineError):
    """A model bundle or preprocessor that is missing, unsafe or does not match."""

    exit_code = 5


class PreprocessorMismatch(BundleError):
    """A preprocessor whose bytes are not those of the one the model was trained with (another split seed, another
    run): every input column may be scaled differently, with the same names."""

    exit_code = 6


def exits_cleanly(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a stage's main(): expected errors become one line on stderr and a non-zero exit code."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            print("interrupted: no output was left half-written", file=sys.stderr)
            return 130

    return wrapper
