"""The project modules a stage's code imports, directly or not, found by walking the source with `ast`.

`python -m tests.imports` prints each stage's code deps as dvc.yaml should list them.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "spotify_genre")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of a project module (`stages.train` -> stages/train.py), or None if it is not one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_packages(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_modules(path: Path) -> set[str]:
    """Every project module named by an import anywhere in the file, late imports inside functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from stages import sources` imports the module stages.sources; `from stages.x import f`, stages.x.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            for module in _with_packages(name):
                if module_file(module) is not None:
                    found.add(module)
    return found


def closure(module: str) -> list[str]:
    """`module` and every project module it imports, directly or not, as repo-relative paths, sorted."""
    seen: set[str] = set()
    todo = _with_packages(module)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)) - seen)
    return sorted(module_file(name).relative_to(ROOT).as_posix() for name in seen)


def stage_modules(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, str]:
    """{stage name: the module its cmd runs}, for every `python -m <module>` stage."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    modules = {}
    for name, stage in stages.items():
        found = re.fullmatch(r"python -m ([\w.]+)(\s.*)?", stage["cmd"])
        if found:
            modules[name] = found[1]
    return modules


def declared_code_deps(stage: dict) -> list[str]:
    return sorted(dep for dep in stage.get("deps", []) if dep.endswith(".py"))


if __name__ == "__main__":
    for stage, module in stage_modules().items():
        print(f"{stage}:")
        print("".join(f"  - {path}\n" for path in closure(module)), end="")
    sys.exit(0)
