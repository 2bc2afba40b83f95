"""The README tells the truth and stays short: its links resolve, the commands it and docs/ give exist, a newcomer
finds the results, the quickstart and predict among its first headings, and any speed table it or docs/ quote is
the committed benchmark's (its results table is checked against reports/metrics.json in tests/test_evaluate.py)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
MAX_WORDS = 1500


README_AND_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKDOWN = [*README_AND_DOCS, *sorted((ROOT / "reports").glob("*.md"))]


def _name(path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", MARKDOWN, ids=_name)
def test_every_relative_link_resolves(path):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    missing = [link for link in links if "://" not in link and not link.startswith("mailto:")
               and not (path.parent / link).exists()]
    assert not missing


@pytest.mark.parametrize("path", README_AND_DOCS, ids=_name)
def test_every_command_they_give_exists(path):
    """Each `python -m MODULE` names a module that imports from the project's root, and each `make TARGET` a target
    of the Makefile (the research log and bench report name commands as they were at the commit they cite)."""
    text = path.read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    modules = set(re.findall(r"python -m ([A-Za-z_][\w.]*[A-Za-z_\d])(?![\w.<])", text))
    assert [module for module in sorted(modules) if importlib.util.find_spec(module) is None] == []
    assert sorted(set(re.findall(r"\bmake ([a-z][\w-]*)", text)) - targets) == []


def test_the_readme_links_somewhere():
    assert re.findall(r"\]\(([^)#]+)\)", README)


def test_the_readme_is_read_in_ten_minutes():
    assert len(README.split()) <= MAX_WORDS  # what `wc -w README.md` counts


def test_results_quickstart_and_predict_come_first():
    headings = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    first = [heading.lower() for heading in headings[:5]]
    for wanted in ("results", "quickstart", "predict"):
        assert any(heading.startswith(wanted) for heading in first), (wanted, headings)


@pytest.mark.skipif(not (ROOT / "reports" / "bench.md").is_file(), reason="no committed reports/bench.md")
@pytest.mark.parametrize("path", README_AND_DOCS, ids=_name)
def test_a_quoted_speed_table_is_the_committed_benchmark(path):
    bench = (ROOT / "reports" / "bench.md").read_text(encoding="utf-8")
    for table in re.findall(r"<!-- bench:start -->(.*?)<!-- bench:end -->", path.read_text(encoding="utf-8"),
                            flags=re.DOTALL):
        assert table.strip() in bench
