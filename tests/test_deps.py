"""dvc.yaml's code deps cannot drift: each stage lists exactly the project modules its code imports (tests/imports.py
walks them with `ast`), a library subpackage as its folder, which DVC hashes without the bytecode beside it. And the
layout holds: imports point one way (library <- fit-side <- stages and experiment tools <- bench), with no circle, not
even through a late import; the library never names the clone, not even to run it; stages/ holds the stage entry
points alone."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests.conftest import ROOT, run
from tests.imports import (BENCH, EXPERIMENTS, FIT_SIDE, LAYERS, LIBRARY, STAGES, closure, code_deps, cycles,
                           declared_code_deps, import_graph, imported_modules, module_file, stage_modules)

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_runs_a_project_module():
    assert set(stage_modules()) == set(DVC_YAML)
    for module in stage_modules().values():
        assert module_file(module) is not None, module


@pytest.mark.core
@pytest.mark.parametrize("stage", sorted(DVC_YAML))
def test_code_deps_are_exactly_the_modules_the_stage_imports(stage):
    expected = code_deps(stage_modules()[stage])
    declared = declared_code_deps(DVC_YAML[stage])
    missing = sorted(set(expected) - set(declared))
    extra = sorted(set(declared) - set(expected))
    assert not missing, (f"dvc.yaml: stage {stage!r} imports but does not list: {', '.join(missing)} "
                         "(python -m tests.imports)")
    assert not extra, f"dvc.yaml: stage {stage!r} lists modules it does not import: {', '.join(extra)}"


def test_the_walk_follows_late_imports_and_packages():
    """What the walk must see: a function-level import, `from package import module`, and package __init__ files."""
    predictor = imported_modules(ROOT / "spotify_genre" / "predict" / "predictor.py")
    assert "spotify_genre.model.inference" in predictor  # imported inside a method, so torch loads late
    # `from pipeline import sources` runs pipeline/__init__ too
    assert "pipeline" in imported_modules(ROOT / "stages" / "download.py")
    assert "pipeline.sources" in imported_modules(ROOT / "stages" / "download.py")
    assert "spotify_genre/numerics.py" in closure("stages.split")  # through stages/__init__ -> spotify_genre/__init__
    assert "spotify_genre/songs/csv_reader.py" in closure("stages.split")  # spotify_genre/songs/__init__ re-exports it


def test_a_subpackage_is_one_dep_and_its_bytecode_is_no_dep():
    deps = code_deps("stages.train")
    assert "spotify_genre/model" in deps and "spotify_genre/atomic.py" in deps and "pipeline/mlp_fitting.py" in deps
    assert not [dep for dep in deps if dep.startswith("spotify_genre/model/")]
    pyc = "spotify_genre/model/__pycache__/network.cpython-311.pyc"
    ignored = run(["dvc", "check-ignore", "-q", pyc], ROOT, check=False)
    assert ignored.returncode == 0, f"DVC would hash {pyc} into spotify_genre/model: .dvcignore lacks __pycache__/"
    assert run(["dvc", "check-ignore", "-q", "spotify_genre/model/network.py"], ROOT, check=False).returncode == 1


GRAPH = import_graph()
CLONE = (FIT_SIDE, STAGES, EXPERIMENTS, BENCH, "tests")


def test_the_walk_sees_every_package():
    assert {name.split(".")[0] for name in GRAPH} == set(LAYERS)
    assert "spotify_genre.model.inference" in GRAPH["spotify_genre.predict.predictor"]  # a late import


def test_the_import_graph_has_no_circle():
    """No two modules import each other, directly or round a loop, not even through an import inside a function."""
    found = cycles(GRAPH)
    assert not found, "import circles: " + "; ".join(" <-> ".join(circle) for circle in found)


def test_the_walk_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_one_way(module):
    """library <- fit-side (pipeline) <- stages and experiment tools <- bench; stages and experiments never import
    each other."""
    package = module.split(".")[0]
    wrong = sorted(target for target in GRAPH[module]
                   if LAYERS[target.split(".")[0]] > LAYERS[package]
                   or (LAYERS[target.split(".")[0]] == LAYERS[package] and target.split(".")[0] != package))
    assert not wrong, f"{module} imports {', '.join(wrong)}: imports point {LIBRARY} <- {FIT_SIDE} <- " \
                      f"{STAGES}, {EXPERIMENTS} <- {BENCH}"


# Inside the library: the bottom modules (errors, numerics, atomic, validation), then songs, then preprocessing and
# the model side by side, then predict.
ROOMS = {"songs": 1, "preprocessing": 2, "model": 2, "predict": 3}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "bottom"


def test_the_library_packages_point_one_way():
    rank = {"bottom": 0, **ROOMS}
    wrong = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() if module.split(".")[0] == LIBRARY
                   for target in targets if _room(target) != _room(module)
                   and rank[_room(target)] >= rank[_room(module)])
    assert not wrong, f"library imports against its layers: {', '.join(wrong)}"


_CLONE_NAME = re.compile(rf"^({'|'.join(CLONE)})(\.\w+)*$")
_RUNNERS = {("os", "exec"), ("os", "spawn"), ("os", "system"), ("os", "popen"), ("subprocess", ""),
            ("runpy", ""), ("importlib", "import_module"), ("multiprocessing", "")}


def _runs(call: ast.Call) -> bool:
    """Whether a call starts a program or imports a module by name (os.exec*, subprocess.*, runpy.*, ...)."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "exec", "eval")
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return any(func.value.id == owner and func.attr.startswith(prefix) for owner, prefix in _RUNNERS)
    return False


@pytest.mark.parametrize("path", sorted((ROOT / LIBRARY).rglob("*.py")), ids=lambda path: path.name)
def test_the_library_never_reaches_into_the_clone(path):
    """spotify_genre is installed without the clone: it imports none of the clone's packages, and never runs one
    (`python -m stages.x`, importlib, exec), not even lazily."""
    clone = sorted(name for name in imported_modules(path) if name.split(".")[0] in CLONE)
    assert not clone, f"{path.relative_to(ROOT)} imports {', '.join(clone)}: the library never imports the clone"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + ([node.module] if getattr(node, "module", None) else [])
            assert not any(name.split(".")[0] in CLONE for name in names), (path, names)
        if isinstance(node, ast.Call) and _runs(node):
            named = [value.value for value in ast.walk(node)
                     if isinstance(value, ast.Constant) and isinstance(value.value, str)
                     and _CLONE_NAME.match(value.value)]
            assert not named, f"{path.relative_to(ROOT)}:{node.lineno} runs the clone's {named[0]}"


def test_the_clone_check_sees_an_exec(tmp_path):
    source = 'import os, sys\nos.execv(sys.executable, [sys.executable, "-m", "stages.tune"])\n'
    call = next(node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call) and _runs(node))
    assert any(isinstance(value, ast.Constant) and value.value == "stages.tune" for value in ast.walk(call))


def test_stages_holds_the_stage_entry_points_alone():
    """One module per stage of dvc.yaml; what two stages, the experiment tools or bench share lives in pipeline/."""
    modules = {path.stem for path in (ROOT / STAGES).glob("*.py")} - {"__init__"}
    entry_points = {module.split(".", 1)[1] for module in stage_modules().values()}
    assert modules == entry_points
    assert not [path for path in (ROOT / STAGES).iterdir() if path.is_dir() and path.name != "__pycache__"]


def test_stages_never_import_each_other():
    """What two stages share lives in pipeline/ (artifacts, params, ...), so a stage's deps stay its own."""
    entry_points = set(stage_modules().values())
    for module in sorted(entry_points):
        others = imported_modules(module_file(module)) & (entry_points - {module})
        assert not others, f"{module} imports the stage module(s) {', '.join(sorted(others))}"
