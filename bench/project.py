"""Throwaway copies of the pipeline to measure in, so the repository's own workspace is never touched."""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.measure import BenchError, Run, child_env, python, run, tool
from pipeline.params import with_values
from spotify_genre.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]
# What a copy of the pipeline needs, here and in the tests' temporary projects (tests/conftest.py).
PROJECT_FILES = ("spotify_genre", "pipeline", "stages", "experiments", "dvc.yaml", "params.yaml", "tuning.yaml",
                 ".gitignore", ".dvcignore")
REAL_ROWS = 32_833
REAL_ZIP_CANDIDATES = (
    ROOT / "data" / "external" / "30000-spotify-songs.zip",
    ROOT.parent / "shared" / "data" / "spotify_songs.zip",
)
EXTERNAL_ZIP = Path("data/external/30000-spotify-songs.zip")
RAW_CSV = Path("data/raw/spotify_songs.csv")


def real_zip() -> Path | None:
    return next((path for path in REAL_ZIP_CANDIDATES if path.is_file()), None)


@dataclass(frozen=True)
class Dataset:
    """The songs a measurement runs on: the real dataset when present, else synthetic songs of the same size."""

    name: str
    zip_path: Path | None
    overrides: dict

    @classmethod
    def default(cls) -> Dataset:
        found = real_zip()
        if found is not None:
            return cls("real", found, {})
        return cls("synthetic", None, {"data.source": "synthetic", "data.synthetic_rows": REAL_ROWS})

    def describe(self) -> str:
        if self.name == "real":
            return f"the real dataset ({REAL_ROWS:,} songs)"
        return (f"synthetic songs ({REAL_ROWS:,}, the real row count): the real dataset is absent "
                f"(expected at {REAL_ZIP_CANDIDATES[0].relative_to(ROOT)} or ../shared/data/spotify_songs.zip)")


def with_overrides(params: dict, overrides: dict[str, object]) -> dict:
    """A copy of params with dotted keys replaced, e.g. {"train.max_epochs": 3}; each key must be params.yaml's."""
    try:
        return with_values(params, overrides, new_keys=False)
    except ParamsError as error:
        raise BenchError(f"{error}; the benchmark needs updating") from None


def read_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))


def plain_project(dest: Path, dataset: Dataset, overrides: dict[str, object] | None = None) -> Path:
    """The pipeline's code and params in a fresh folder, with the dataset in place; no Git, no DVC."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params = with_overrides(params, {**dataset.overrides, **(overrides or {})})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    if dataset.zip_path is not None:
        (dest / EXTERNAL_ZIP).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.zip_path, dest / EXTERNAL_ZIP)
    return dest


def dvc_project(dest: Path, dataset: Dataset, overrides: dict[str, object] | None = None) -> Path:
    """plain_project, then `git init`, `dvc init` and a first commit, as a user's clone would be."""
    plain_project(dest, dataset, overrides)
    return _committed(dest)


def floor_project(dest: Path, train_imports: str, evaluate_imports: str) -> Path:
    """A DVC project of the exp-run loop's shape and nothing else: a `train` stage that reads the top-level `lr`
    param and writes a file, and an `evaluate` stage that reads that file, each a Python process importing only
    the modules named (comma-separated; "" for none). What `dvc exp run -S lr=...` takes here, no project code
    runs at all."""
    dest.mkdir(parents=True, exist_ok=True)

    def command(imports: str, source: str, target: str) -> str:
        code = (f"import {imports}; " if imports else "") + \
            f"import shutil; shutil.copyfile('{source}', '{target}')"
        return f'python -c "{code}"'

    stages = {
        "train": {"cmd": command(train_imports, "params.yaml", "trained.txt"), "params": ["lr"],
                  "outs": ["trained.txt"]},
        "evaluate": {"cmd": command(evaluate_imports, "trained.txt", "evaluated.txt"), "deps": ["trained.txt"],
                     "outs": ["evaluated.txt"]},
    }
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False), encoding="utf-8")
    (dest / "params.yaml").write_text(f"lr: {read_params(ROOT)['lr']}\n", encoding="utf-8")
    _committed(dest)
    run([tool("dvc"), "repro"], dest)
    run(["git", "add", "-A"], dest, env=child_env())
    run(["git", "commit", "-q", "-m", "results"], dest, env=child_env())
    return dest


def _committed(dest: Path) -> Path:
    """`git init`, `dvc init` and a first commit of what is in `dest`."""
    env = child_env()
    for args in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "bench@example.invalid"],
                 ["git", "config", "user.name", "bench"], [tool("dvc"), "init", "-q"], ["git", "add", "-A"],
                 ["git", "commit", "-q", "-m", "pipeline"]):
        run(args, dest, env=env)
    return dest


def _dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _needs() -> dict[str, set[str]]:
    """For each stage of dvc.yaml, the stages whose outputs it reads."""
    stages = _dvc_stages()

    def paths(entries) -> list[str]:
        return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or []]

    outs = {name: paths(spec.get("outs")) for name, spec in stages.items()}
    needs = {name: {other for other in stages if other != name
                    for dep in paths(spec.get("deps"))
                    for out in outs[other] if dep == out or dep.startswith(out.rstrip("/") + "/")}
             for name, spec in stages.items()}
    return needs


def stage_order() -> list[str]:
    """The stages of dvc.yaml, each after every stage whose outputs it reads."""
    needs = _needs()
    order: list[str] = []
    while len(order) < len(needs):
        ready = [name for name in needs if name not in order and needs[name] <= set(order)]
        if not ready:
            raise BenchError("dvc.yaml: the stages' deps and outs form a cycle")
        order.append(ready[0])
    return order


def stage_command(stage: str) -> list[str]:
    """The stage's cmd from dvc.yaml, run by this venv's Python."""
    args = shlex.split(_dvc_stages()[stage]["cmd"])
    return python(*args[1:]) if args and args[0] in ("python", "python3") else args


def run_stage(project: Path, stage: str) -> Run:
    """One stage's command in `project`, directly (no DVC), in a fresh process; a failure is a BenchError."""
    return run(stage_command(stage), project)


def upstream(stage: str) -> set[str]:
    """`stage` and every stage it depends on, directly or not."""
    needs, found, todo = _needs(), set(), [stage]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(needs[name])
    return found
