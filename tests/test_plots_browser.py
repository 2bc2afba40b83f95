"""`dvc plots show` really draws every chart: its HTML is opened in headless Chromium, offline.

dvc's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, which an offline machine cannot reach.
dvc's own `--html-template` option is the way around it: a template without the `{scripts}` placeholder gets
no CDN tags, so a template that inlines the same three libraries (the bundle that the vl-convert-python
package ships) gives a page that renders with no network at all, around the very chart divs dvc wrote.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import copy_project, run

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian's `chromium`; .ci/run installs it)"),
]
GENRES = ("edm", "latin", "pop", "r&b", "rap", "rock")
CDN_SCRIPTS = ("https://cdn.jsdelivr.net/npm/vega@", "https://cdn.jsdelivr.net/npm/vega-lite@",
               "https://cdn.jsdelivr.net/npm/vega-embed@")
DIV = re.compile(r'<div id = "[^"]+">.*?</script>\s*</div>', re.DOTALL)

# dvc calls vegaEmbed('#id', spec) in each chart's div; the wrapper records the outcome on that div and asks
# for SVG, so the page's DOM shows what was drawn (marks, axis labels) rather than an opaque canvas.
OFFLINE_TEMPLATE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC Plot (offline)</title>
<script>(function () {
%(bundle)s
})();</script>
<script>
(function () {
  const embed = window.vegaEmbed;
  window.vegaEmbed = function (selector, spec, options) {
    const div = document.querySelector(selector);
    div.setAttribute("data-plot-status", "pending");
    return embed(selector, spec, Object.assign({renderer: "svg", actions: false}, options || {}))
      .then(function (result) { div.setAttribute("data-plot-status", "rendered"); return result; })
      .catch(function (error) { div.setAttribute("data-plot-status", "error: " + error); });
  };
})();
</script>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def chromium(*args: str, profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=30000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout, check=True)


class Charts(HTMLParser):
    """For each div whose id names a chart: its attributes, its text, and every element inside it as
    (tag, class, classes of its ancestors inside the chart)."""

    def __init__(self, ids: set[str]):
        super().__init__()
        self.ids, self.charts = ids, {}
        self._chart: str | None = None
        self._stack: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self._chart is None:
            if tag == "div" and attrs.get("id") in self.ids:
                self._chart = attrs["id"]
                self.charts[self._chart] = {"attrs": attrs, "elements": [], "text": []}
                self._stack = [(tag, "")]
            return
        css = attrs.get("class") or ""
        self.charts[self._chart]["elements"].append((tag, css, " ".join(c for _, c in self._stack)))
        self._stack.append((tag, css))

    def handle_endtag(self, tag):
        if self._chart is None:
            return
        while self._stack:  # void elements (input, br) never close: unwind to the matching tag
            if self._stack.pop()[0] == tag:
                break
        if not self._stack:
            self._chart = None

    def handle_data(self, data):
        if self._chart is not None and data.strip():
            self.charts[self._chart]["text"].append(data.strip())


@pytest.fixture(scope="module")
def project(synthetic_pipeline, tmp_path_factory) -> Path:
    """A copy of the pytest session's synthetic pipeline run: `dvc plots show` writes its page into the project."""
    return copy_project(synthetic_pipeline, tmp_path_factory.mktemp("plots") / "project")


@pytest.fixture(scope="module")
def chart_ids(project) -> list[str]:
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in plots]


@pytest.fixture(scope="module")
def offline_page(project, tmp_path_factory) -> Path:
    import vl_convert

    v5 = max((v for v in vl_convert.get_vegalite_versions() if v.startswith("5.")),
             key=lambda v: tuple(map(int, v.split("."))))
    template = tmp_path_factory.mktemp("template") / "offline.html"
    template.write_text(OFFLINE_TEMPLATE % {"bundle": vl_convert.javascript_bundle(vl_version=v5)}, encoding="utf-8")
    run(["dvc", "plots", "show", "--html-template", str(template), "-o", "offline"], project)
    return project / "offline" / "index.html"


def test_the_default_page_holds_every_chart_and_loads_vega_from_a_cdn(project, chart_ids, offline_page):
    out = run(["dvc", "plots", "show", "-o", "default"], project).stdout
    page = (project / "default" / "index.html").read_text(encoding="utf-8")
    assert "default/index.html" in out
    for chart in chart_ids:
        assert f'<div id = "{chart}">' in page
    assert [src for src in re.findall(r'<script src="([^"]+)"', page)] and all(
        src.startswith(CDN_SCRIPTS) for src in re.findall(r'<script src="([^"]+)"', page))
    # The offline page differs only in where the libraries come from: the chart divs are the same bytes.
    offline = offline_page.read_text(encoding="utf-8")
    assert DIV.findall(offline) == DIV.findall(page) and len(DIV.findall(page)) == len(chart_ids)
    assert "<script src=" not in offline and "cdn.jsdelivr" not in offline


def test_every_chart_renders_in_headless_chromium(project, chart_ids, offline_page, tmp_path):
    dom = chromium("--dump-dom", offline_page.as_uri(), profile=tmp_path / "profile").stdout
    parser = Charts(set(chart_ids))
    parser.feed(dom)
    charts = parser.charts

    assert sorted(charts) == sorted(chart_ids)
    for name, chart in charts.items():
        assert chart["attrs"].get("data-plot-status") == "rendered", (name, chart["attrs"])
        assert any(tag == "svg" for tag, _, _ in chart["elements"]), name
        assert any("role-mark" in css for _, css, _ in chart["elements"]), f"{name}: no marks drawn"

    confusion = charts["confusion_matrix"]
    cells = [tag for tag, _, inside in confusion["elements"] if "mark-rect" in inside]
    assert len(cells) >= len(GENRES)  # heat-map cells
    assert set(GENRES) <= set(confusion["text"])  # every genre labels an axis
    assert {"actual", "predicted"} <= set(confusion["text"])

    loss = charts["loss"]
    lines = [tag for tag, _, inside in loss["elements"] if tag == "path" and "mark-line" in inside]
    assert len(lines) >= 2  # train and validation
    assert "Cross-entropy loss by epoch" in loss["text"]
    assert {"train/loss.tsv", "val/loss.tsv"} <= set(loss["text"])  # the legend names both curves


def test_a_screenshot_of_the_page_shows_the_charts(offline_page, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "plots.png"
    chromium("--window-size=1100,1500", f"--screenshot={shot}", offline_page.as_uri(), profile=tmp_path / "profile")
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1500, 1100)
    coloured = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max(axis=2) > 0.15
    assert coloured.mean() > 0.02  # the heat map, the bars and the coloured lines, not a blank page
