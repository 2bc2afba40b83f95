"""Expected errors: one clear line on stderr and a documented exit code, never a traceback."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from typing import Any, Callable, Iterator

QUOTED_CHARACTERS = 80  # of a value quoted in a message: a sha256 whole, a 10 MB value not
LINE_CHARACTERS = 2000  # of any error line, whatever it quotes


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


class Terminated(BaseException):
    """SIGTERM arrived (`timeout`, `docker stop`, Kubernetes): a BaseException, as KeyboardInterrupt is, so that no
    `except Exception` takes it for an error of the work, and every `finally` (a temporary file's removal above all)
    runs on the way out."""


SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the cleanup it starts is not interrupted again
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread; the handler before it is restored after.
    Nothing changes where SIGTERM is ignored (a nohup-like parent) or off the main thread."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def quoted(value: Any, limit: int = QUOTED_CHARACTERS) -> str:
    """repr(value) for a message, or its first `limit` characters and how long the whole is."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, (str, bytes)):
        size = f"{len(value):,} {'characters' if isinstance(value, str) else 'bytes'}"
    elif isinstance(value, (list, tuple, dict)):
        size = f"{len(value):,} items"
    else:
        size = f"{len(text):,} characters"
    return f"{text[:limit]}... ({size})"


def bounded(line: str, limit: int = LINE_CHARACTERS) -> str:
    """A message cut to `limit` characters, saying so: the last defence against a value quoted whole."""
    return line if len(line) <= limit else f"{line[:limit]}... (cut; {len(line):,} characters in all)"


def exits_cleanly(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a stage's main(): expected errors become one line on stderr and a non-zero exit code; Ctrl-C (SIGINT)
    and SIGTERM end it as an error would, every temporary file removed on the way out, with one line and the
    shell's codes for them (130, 143)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            with sigterm_raises():
                return main(*args, **kwargs) or 0
        except PipelineError as error:
            _say(f"error: {bounded(str(error))}")
            return error.exit_code
        except KeyboardInterrupt:
            _say("interrupted: no output was left half-written")
            return 130
        except Terminated:
            _say("terminated (SIGTERM): no output was left half-written")
            return SIGTERM_EXIT_CODE

    return wrapper


def _say(line: str) -> None:
    """One line on stderr, if there is a stderr to write to."""
    try:
        print(line, file=sys.stderr or sys.__stderr__, flush=True)
    except (OSError, AttributeError, ValueError):
        pass
