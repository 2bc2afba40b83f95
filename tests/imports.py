"""The project modules a module imports, directly or not, found by walking the source with `ast`: a stage's code
deps, and the import graph the layering tests check.

A stage's code deps are the files it imports, except that a subpackage of the library (spotify_genre/model, ...)
counts as one dep, its folder: a concept changes as a whole, and every file listed costs DVC time on each run (see
docs/pipeline.md). `python -m tests.imports` prints each stage's code deps as dvc.yaml should list them.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# The project's code, in the order imports point: the library, the fit-side code, the stages and the experiment
# tools (side by side, neither importing the other), bench.
LIBRARY, FIT_SIDE, STAGES, EXPERIMENTS, BENCH = "spotify_genre", "pipeline", "stages", "experiments", "bench"
LAYERS = {LIBRARY: 0, FIT_SIDE: 1, STAGES: 2, EXPERIMENTS: 2, BENCH: 3}
PACKAGES = tuple(LAYERS)


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
            # `from pipeline import sources` imports the module pipeline.sources; `from pipeline.x import f`, pipeline.x.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            for module in _with_packages(name):
                if module_file(module) is not None:
                    found.add(module)
    return found


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of a project file (pipeline/params.py -> pipeline.params, stages/__init__.py -> stages)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT) -> list[str]:
    """Every module of the project's packages."""
    return sorted(module_name(path, root) for package in PACKAGES for path in (root / package).rglob("*.py"))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the project modules it imports, late imports included}. Naming one's own package (`from
    spotify_genre.model import blas` inside spotify_genre.model, a package naming its own modules) is no edge: the
    package is already being imported."""
    graph = {}
    for name in project_modules(root):
        own = set(_with_packages(name))
        graph[name] = {module for module in imported_modules(module_file(name, root)) if module not in own}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's circles: each strongly connected set of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
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


def code_deps(module: str) -> list[str]:
    """closure(module) as dvc.yaml lists it: a file of a library subpackage is replaced by the subpackage's folder."""
    deps = set()
    for path in closure(module):
        parts = path.split("/")
        deps.add("/".join(parts[:2]) if parts[0] == LIBRARY and len(parts) > 2 else path)
    return sorted(deps)


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
    """The stage's deps inside the project's packages: files and library subpackage folders."""
    return sorted(dep for dep in stage.get("deps", []) if dep.split("/")[0] in PACKAGES)


if __name__ == "__main__":
    for stage, module in stage_modules().items():
        print(f"{stage}:")
        print("".join(f"  - {path}\n" for path in code_deps(module)), end="")
    sys.exit(0)
