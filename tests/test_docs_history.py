"""The project speaks of itself alone: no text of the repository (README, docs/, reports/, any Markdown, and the
whole of every Python file: comments, docstrings and messages) names the working sessions or the issue numbers the
project was built in, nor who files its issues. A result is dated and names its commit instead (the research log,
reports/experiments.md), and a goal is stated as the project's own (reports/bench.md). A link to an upstream
project's bug report (`.../issues/<number>`) is fine: the slash keeps it from matching."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Never scanned: environments, Git's and DVC's own files, the pipeline's data, caches and build outputs.
SKIPPED_DIRS = {".venv", ".lock-venv", ".git", ".dvc", "__pycache__", ".pytest_cache", "node_modules", "build",
                "dist", "tuning"}
SKIPPED_AT_ROOT = {"data"}
SCANNED_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".ipynb", ".cfg"}
SCANNED_NAMES = {"Makefile", "run"}  # .ci/run

HISTORY = re.compile(
    r"\bsessions?\s*#?\d+"  # a numbered working session, or several
    r"|\bissues?\s*#?\d+"  # an issue number (a link's /issues/123 has a slash, so it does not match)
    r"|\bwhoever\s+files\b"
    r"|\b(?:this|that|these|those|earlier|previous|later|next|working|several|our|each|every|one|two|three|four)"
    r"\s+sessions?\b"  # the working sessions, unnumbered
    r"|\bthe\s+issues\s+left\b|\b(?:this|the)\s+issue(?:'s)?\s+(?:asks|says|wants|goal|budget|criterion)\b",
    re.IGNORECASE)


def _scanned_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = sorted(name for name in dirs if name not in SKIPPED_DIRS and not name.endswith(".egg-info")
                         and not (here == ROOT and name in SKIPPED_AT_ROOT))
        found += [here / name for name in sorted(files)
                  if Path(name).suffix in SCANNED_SUFFIXES or name in SCANNED_NAMES]
    return [path for path in found if path != Path(__file__).resolve()]


def history_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line that names the project's working sessions or issues."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if HISTORY.search(line)]


def test_the_scan_covers_the_docs_reports_and_every_package():
    scanned = {path.relative_to(ROOT).as_posix() for path in _scanned_files()}
    assert {"README.md", "docs/decisions.md", "reports/experiments.md", "reports/bench.md", "bench/report.py",
            "tests/conftest.py"} <= scanned
    assert any(name.startswith("spotify_genre/") for name in scanned)
    assert any(name.startswith("stages/") for name in scanned)
    assert not any(name.startswith((".venv/", ".git/", "data/")) for name in scanned)


# The words kept apart in the source, so that a grep of the repository for the history finds nothing here.
SESSION, ISSUE, FILES = "session", "issue", "files"


@pytest.mark.parametrize("line", [
    f"Chosen in {SESSION} 28, on three seeds.", f"({ISSUE} 15)", f"{ISSUE}s 8, 14, 16 and 17", f"{ISSUE} #30's goal",
    f"For whoever {FILES} issues, two changes", f"the earlier {SESSION}s were missing", f"before this {SESSION}",
    f"Choices the {ISSUE}s left open", f"The comparison the {ISSUE} asks for",
])
def test_it_catches_the_forms_the_history_took(line):
    assert history_lines(line)


@pytest.mark.parametrize("line", [
    "see https://github.com/dask/distributed/issues/1234 for the upstream bug",
    '@pytest.fixture(scope="session")', "start_new_session=True", "once per test session",
    "a copy of the pytest session's run", "its requests session", "measured on 2026-12-06 at commit 22144e8",
])
def test_it_lets_links_and_other_sessions_pass(line):
    assert not history_lines(line)


def test_no_file_names_the_working_sessions_or_issue_numbers():
    found = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}:{number}: {line}" for number, line in history_lines(text)]
    assert not found, "the project's own history, to be dated and tied to a commit instead:\n" + "\n".join(found)
