"""dvc.yaml's code deps cannot drift: each stage lists exactly the project modules its code imports (tests/imports.py
walks them with `ast`), and the library never imports the pipeline."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT
from tests.imports import closure, declared_code_deps, imported_modules, module_file, stage_modules

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_runs_a_project_module():
    assert set(stage_modules()) == set(DVC_YAML)
    for module in stage_modules().values():
        assert module_file(module) is not None, module


@pytest.mark.parametrize("stage", sorted(DVC_YAML))
def test_code_deps_are_exactly_the_modules_the_stage_imports(stage):
    expected = closure(stage_modules()[stage])
    declared = declared_code_deps(DVC_YAML[stage])
    missing = sorted(set(expected) - set(declared))
    extra = sorted(set(declared) - set(expected))
    assert not missing, (f"dvc.yaml: stage {stage!r} imports but does not list: {', '.join(missing)} "
                         "(python -m tests.imports)")
    assert not extra, f"dvc.yaml: stage {stage!r} lists modules it does not import: {', '.join(extra)}"


def test_the_walk_follows_late_imports_and_packages():
    """What the walk must see: a function-level import, `from package import module`, and package __init__ files."""
    evaluate = imported_modules(ROOT / "stages" / "evaluate.py")
    assert "spotify_genre.bundle" in evaluate  # imported inside main(), so torch loads late
    # `from stages import sources` runs stages/__init__ too
    assert "stages" in imported_modules(ROOT / "stages" / "download.py")
    assert "stages.sources" in imported_modules(ROOT / "stages" / "download.py")
    assert "spotify_genre/numerics.py" in closure("stages.split")  # through stages/__init__ -> spotify_genre/__init__


def test_the_library_never_imports_the_pipeline():
    for path in sorted((ROOT / "spotify_genre").glob("*.py")):
        pipeline = sorted(name for name in imported_modules(path) if name.split(".")[0] == "stages")
        assert not pipeline, f"{path.relative_to(ROOT)} imports {', '.join(pipeline)}: imports point stages -> library"


def test_stages_never_import_each_other():
    """What two stages share lives in a module of its own (artifacts, params, ...), so a stage's deps stay its own."""
    entry_points = set(stage_modules().values())
    for module in sorted(entry_points):
        others = imported_modules(module_file(module)) & (entry_points - {module})
        assert not others, f"{module} imports the stage module(s) {', '.join(sorted(others))}"
