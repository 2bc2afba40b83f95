"""Atomic writes: every output appears whole under its final name, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        pass
    return True


# `.<name>.<pid>.<random>.tmp`: what atomic_path names its temporary files (mkstemp's random part is 8 characters).
LEFTOVER = re.compile(r"\..+\.(\d+)\.[a-z0-9_]{8}\.tmp")


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes into `folder` by processes now dead (killed by SIGKILL mid-write, or
    by a power cut) left there, whatever their target; a live writer's file is spared. Returns what was deleted."""
    removed = []
    for leftover in Path(folder).glob(".*.tmp"):
        found = LEFTOVER.fullmatch(leftover.name)
        if found and int(found[1]) != os.getpid() and not _alive(int(found[1])):
            with contextlib.suppress(OSError):  # gone already, or not ours to delete
                leftover.unlink()
                removed.append(leftover)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only if the block succeeds.

    The temporary file is named `.<name>.<pid>.<random>.tmp`, so that a later write of any target in the same
    folder can tell the leftovers of a killed writer from a live writer's file, and removes them.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> None:
    """Call `writer(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_parquet(path: str | os.PathLike, frame) -> None:
    """Parquet with fixed settings, so the same frame gives the same bytes."""
    write_with(path, lambda tmp: frame.to_parquet(tmp, index=False, compression="zstd", engine="pyarrow"))
