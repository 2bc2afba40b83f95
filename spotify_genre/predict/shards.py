"""A catalogue in many files: a folder (searched recursively) or a glob of input shards, predicted into a folder of
output shards of the same names, each written atomically.

A shard whose output exists is done and is skipped, so a re-run after an interruption predicts only the rest. The
output folder records the model, preprocessor and --top-k its shards were made with (MANIFEST); a re-run with others
is refused rather than mixing two models' predictions in one folder.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePath

from spotify_genre.atomic import write_json
from spotify_genre.errors import DataError, ParamsError, PipelineError
from spotify_genre.predict.sinks import CSV, CSV_GZ, PARQUET, SUFFIXES
from spotify_genre.songs.csv_reader import INPUT_SUFFIXES, songs_suffix

MANIFEST = "_predictions.json"
MANIFEST_FORMAT = 1
_SETTING = {"format": "manifest format", "model_sha256": "model", "preprocessor_sha256": "preprocessor",
            "top_k": "--top-k", "novelty": "--novelty"}


@dataclass(frozen=True)
class Shard:
    source: str
    target: str
    fmt: str


def is_catalogue(path: str) -> bool:
    """Whether INPUT names many files: a folder, or a glob pattern that is not itself a file's name."""
    return Path(path).is_dir() or (glob.has_magic(path) and not Path(path).exists())


def _hidden(relative: PurePath) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def _sources(pattern: str, output: Path) -> tuple[Path, list[Path]]:
    """The folder names are relative to, and the input files in it, in name order; outputs excluded."""
    if Path(pattern).is_dir():
        base = Path(pattern)
        found = [path for path in base.rglob("*") if path.is_file() and songs_suffix(path)
                 and not _hidden(path.relative_to(base))]
    else:
        parts = PurePath(pattern).parts
        literal = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        base = Path(*parts[:literal]) if literal else Path(".")
        found = [Path(name) for name in glob.glob(pattern, recursive=True) if Path(name).is_file()]
    inside = output.resolve()
    if inside != base.resolve():  # predictions kept in a subfolder of the catalogue are not inputs on a re-run
        found = [path for path in found if not path.resolve().is_relative_to(inside)]
    return base, sorted(found)


def _default_format(source: Path) -> str:
    suffix = songs_suffix(source) or ""
    if suffix in (".parquet", ".pq"):
        return PARQUET
    return CSV if suffix in ("", ".csv") else CSV_GZ


def find_shards(pattern: str, output: str, output_format: str | None) -> list[Shard]:
    """Every input shard and its output (the same relative name, the output format's suffix), checked: at least
    one input, no two inputs with one output, no output that is an input."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"{output}: not a folder; for a folder or glob of shards, -o names the folder the "
                            "predictions go to")
    base, sources = _sources(pattern, folder)
    if not sources:
        kinds = ", ".join(INPUT_SUFFIXES)
        what = "holds no input shards" if Path(pattern).is_dir() else "matches no files"
        raise DataError(f"{pattern}: {what} (songs files end in {kinds})")
    shards, by_target = [], {}
    inputs = {path.resolve() for path in sources}
    for source in sources:
        fmt = output_format or _default_format(source)
        relative = source.relative_to(base) if source.is_relative_to(base) else Path(source.name)
        suffix = songs_suffix(source)
        stem = relative.name[: len(relative.name) - len(suffix)] if suffix else relative.name
        target = folder / relative.parent / f"{stem}{SUFFIXES[fmt]}"
        if target in by_target:
            raise ParamsError(f"{by_target[target]} and {source} would both be predicted into {target}; rename one, "
                              "or pass another --output-format")
        if target.resolve() in inputs:
            raise ParamsError(f"{source}: its predictions would overwrite an input ({target}); pass another -o")
        by_target[target] = source
        shards.append(Shard(str(source), str(target), fmt))
    return shards


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def claim(output: str, model: str, preprocessor_sha256: str, top_k: int, novelty: bool = False) -> None:
    """Record in the output folder what its shards are predicted with; refuse a folder made with anything else."""
    wanted = {"format": MANIFEST_FORMAT, "model_sha256": _sha256(model), "preprocessor_sha256": preprocessor_sha256,
              "top_k": top_k, **({"novelty": True} if novelty else {})}
    path = Path(output) / MANIFEST
    if path.exists():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != wanted:
            differs = [_SETTING[key] for key in wanted if not isinstance(found, dict) or found.get(key) != wanted[key]]
            raise PipelineError(f"{output}: holds predictions made with another {' and '.join(differs)} (see {path}); "
                                "pass another -o, or delete the folder to start over")
        return
    try:
        write_json(path, wanted)
    except OSError as error:
        raise PipelineError(f"{output}: cannot write the predictions ({error.strerror or error})") from None


def pending(shards: list[Shard]) -> list[Shard]:
    """The shards whose output does not exist yet."""
    return [shard for shard in shards if not Path(shard.target).exists()]
