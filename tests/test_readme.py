"""The README tells the truth: its results table is the committed reports/metrics.json, and its links resolve."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
ROW_NAMES = {
    "MLP (this pipeline)": None,
    "HistGradientBoosting": "hist_gradient_boosting",
    "RandomForest (100 trees)": "random_forest",
    "majority class": "majority",
}


def _results_rows() -> dict[str, tuple[str, str]]:
    block = README.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    rows = {}
    for line in block.strip().splitlines()[2:]:
        name, accuracy, f1 = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name] = (accuracy, f1)
    return rows


@pytest.mark.skipif(not (ROOT / "reports" / "metrics.json").is_file(), reason="no committed reports/metrics.json")
def test_the_results_table_is_the_committed_metrics():
    metrics = json.loads((ROOT / "reports" / "metrics.json").read_text())
    rows = _results_rows()
    assert set(rows) == set(ROW_NAMES)
    for name, key in ROW_NAMES.items():
        scores = metrics if key is None else metrics["baselines"][key]
        assert rows[name] == (f"{scores['accuracy']:.4f}", f"{scores['f1_macro']:.4f}"), name


def test_every_relative_link_resolves():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert links and not missing


@pytest.mark.skipif(not (ROOT / "reports" / "bench.md").is_file(), reason="no committed reports/bench.md")
def test_the_speed_table_is_the_committed_benchmark():
    table = README.split("<!-- bench:start -->")[1].split("<!-- bench:end -->")[0].strip()
    assert table.startswith("| measurement |")
    assert table in (ROOT / "reports" / "bench.md").read_text(encoding="utf-8")
