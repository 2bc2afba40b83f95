"""The README tells the truth: its speed table is the committed benchmark and its links resolve (its results
table is checked against reports/metrics.json in tests/test_evaluate.py)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
def test_every_relative_link_resolves():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert links and not missing


@pytest.mark.skipif(not (ROOT / "reports" / "bench.md").is_file(), reason="no committed reports/bench.md")
def test_the_speed_table_is_the_committed_benchmark():
    table = README.split("<!-- bench:start -->")[1].split("<!-- bench:end -->")[0].strip()
    assert table.startswith("| measurement |")
    assert table in (ROOT / "reports" / "bench.md").read_text(encoding="utf-8")
