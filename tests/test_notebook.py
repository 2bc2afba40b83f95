"""notebooks/results.ipynb: committed without outputs, and run top to bottom (nbclient, the venv's python3 kernel)
against the results of the synthetic pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from tests.conftest import ROOT, copy_project, tool_env

NOTEBOOK = ROOT / "notebooks" / "results.ipynb"
PARAMETERS = 'REV = None  # None: the workspace'
FIGURES = 3  # confusion matrix, loss curves, paired differences


def test_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [], f"cell {cell.id!r} is committed with outputs"
        assert cell.execution_count is None, f"cell {cell.id!r} is committed with an execution count"
    assert notebook.metadata.kernelspec.name == "python3"
    assert code[0].source.startswith(PARAMETERS) and 'REPO = "."' in code[0].source, \
        "the first code cell should set REV and REPO for the reader"


def executed(repo: Path, cwd: Path, rev: str | None) -> nbformat.NotebookNode:
    """The notebook as copied into repo/notebooks/, run from cwd with REV = rev."""
    notebook = nbformat.read(repo / "notebooks" / NOTEBOOK.name, as_version=4)
    parameters = next(cell for cell in notebook.cells if cell.cell_type == "code")
    parameters.source = parameters.source.replace("REV = None", f"REV = {rev!r}", 1)
    NotebookClient(notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(cwd)}}
                   ).execute(env=tool_env())
    return notebook


def output_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def figures(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def assert_shows_the_run(notebook: nbformat.NotebookNode, run: dict) -> None:
    metrics, text = run["metrics"], output_text(notebook)
    for name in ("accuracy", "f1_macro"):
        for value in (metrics[name], metrics["intervals"][name]["low"], metrics["intervals"][name]["high"]):
            assert f"{value:.4f}" in text, f"{name} figure {value} not shown"
    assert f"{metrics['val']['accuracy']:.4f}" in text
    assert metrics["baselines"], "the synthetic run has no baselines to show"
    for name, scores in metrics["baselines"].items():
        assert name in text
        for difference in scores["difference"].values():
            assert f"{difference['estimate']:.4f}" in text and f"{difference['low']:.4f}" in text
    assert f"strongest baseline (best validation macro-F1): {metrics['strongest_baseline']}" in text
    assert all(genre in text for genre in metrics["per_class"])
    assert all(feature["feature"] in text for feature in run["anova"]["features"])
    assert f"{run['params']['data']['synthetic_rows']}" in text and "data.synthetic_rows" in text
    assert f"best epoch {run['summary']['best_epoch']} " in text
    assert figures(notebook) == FIGURES


@pytest.fixture
def project(synthetic_pipeline, tmp_path) -> Path:
    repo = copy_project(synthetic_pipeline, tmp_path / "project")
    (repo / "notebooks").mkdir()
    shutil.copy2(NOTEBOOK, repo / "notebooks" / NOTEBOOK.name)
    return repo


def results(repo: Path) -> dict[str, dict]:
    """What the notebook should show, read directly from the run's files."""
    return {"metrics": json.loads((repo / "reports" / "metrics.json").read_text()),
            "summary": json.loads((repo / "dvclive" / "metrics.json").read_text()),
            "anova": json.loads((repo / "reports" / "anova.json").read_text()),
            "params": yaml.safe_load((repo / "params.yaml").read_text())}


@pytest.mark.e2e
def test_runs_from_notebooks_folder_on_the_workspace(project):
    notebook = executed(project, project / "notebooks", None)
    assert_shows_the_run(notebook, results(project))


@pytest.mark.e2e
def test_runs_from_the_root_on_a_git_rev(project):
    """REV = "HEAD" reads every file from Git, not from the workspace: the workspace's other results deleted, its
    metrics files given other numbers, the notebook still shows the committed run. (dvc.api.metrics_show with a rev
    reads the workspace's copy too, and DVC 3.67 raises when it is missing, so the metrics files stay.)"""
    expected = results(project)
    metrics_file, summary_file = project / "reports" / "metrics.json", project / "dvclive" / "metrics.json"
    other_intervals = {score: {"low": 0.011111, "high": 0.013579} for score in ("accuracy", "f1_macro")}
    kept = {metrics_file: json.dumps({**expected["metrics"], "accuracy": 0.012345, "intervals": other_intervals}),
            summary_file: json.dumps({**expected["summary"], "best_epoch": 99})}
    for folder in ("reports", "dvclive"):
        shutil.rmtree(project / folder)
    for path, text in kept.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    notebook = executed(project, project, "HEAD")
    assert_shows_the_run(notebook, expected)
    text = output_text(notebook)
    assert "0.0123" not in text and "best epoch 99 " not in text
