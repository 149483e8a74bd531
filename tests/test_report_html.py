"""``OUT/index.html`` is one self-contained page: built from the synthetic store of ``test_analysis``, it refers to no
file and no URL (only ``data:`` URIs and its own anchors), holds every figure PNG inline and every table and
comparison as an HTML table, states the scale the Markdown index states, and Debian's headless Chromium (found and
driven as in ``test_mlflow_ui``) renders it from disk with no network."""

from __future__ import annotations

import base64
import html
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from servers_testkit import CHROMIUM, CHROMIUM_FLAGS, run_chromium
from test_analysis import synthetic_report

from dmh.report import make_all
from dmh.report.compare import VIEWS
from dmh.report.export import load_export

# test_mlflow_ui's flags, plus: no host name resolves, so nothing but the file:// page can load. (Scripts stay on:
# --dump-dom and --screenshot run their own; that the page has none is checked on its source.)
OFFLINE_FLAGS = [*CHROMIUM_FLAGS, "--host-resolver-rules=MAP * ~NOTFOUND"]
TABLES = len(make_all.TABLE_VIEWS) + 2 + len(VIEWS)  # the paper's tables, the claims, the z study, each comparison


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append(" ".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and data.strip():
            self._cell.append(data.strip())

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def parse(page: str) -> Elements:
    elements = Elements()
    elements.feed(page)
    return elements


def chromium(page: Path, profile: Path, *args: str, timeout_s: float = 60) -> str:
    """Headless Chromium on ``file://page`` with ``args``, offline; its stdout."""
    return run_chromium(page.as_uri(), profile, *args, flags=OFFLINE_FLAGS, timeout_s=timeout_s, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return synthetic_report(tmp_path_factory.mktemp("html"))


@pytest.fixture(scope="module")
def page(report) -> str:
    return (report / "index.html").read_text(encoding="utf-8")


def test_the_html_index_refers_only_to_data_uris_and_its_own_anchors(page):
    elements = parse(page)
    ids = {attrs["id"] for _, attrs in elements.tags if attrs.get("id")}
    links = [(tag, name, value) for tag, attrs in elements.tags for name, value in attrs.items()
             if name in ("src", "href", "srcset", "data", "action", "poster")]
    assert links, "no src or href at all: nothing was checked"
    for tag, name, value in links:
        if name == "href" and value.startswith("#"):
            assert value[1:] in ids, f"<{tag} {name}={value!r}> points at no anchor of the page"
        else:
            assert (tag, name) == ("img", "src") and value.startswith("data:image/png;base64,"), (tag, name, value)
    assert not elements.all("script") and not elements.all("link") and not elements.all("iframe")
    assert "url(" not in page and "@import" not in page  # no stylesheet fetches either


def test_every_figure_png_is_inline_in_the_html_index(report, page):
    sources = [attrs["src"] for attrs in parse(page).all("img")]
    pngs = sorted((report / "figures").glob("*.png"))
    export = load_export(report / "data")
    trained = set(export.runs.loc[export.runs["run_id"].isin(export.training["run_id"]), "sweep"])
    assert trained  # the fixture's runs logged evaluations: the report draws their training curves too
    assert {p.stem for p in pngs} == set(make_all.FIGURES) | {f"training_{sweep}" for sweep in trained}
    assert len(pngs) == len(sources)
    for png in pngs:
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode('ascii')}" in sources, png.name


def test_the_html_index_shows_every_table_and_comparison_and_the_scale_the_markdown_index_states(report, page):
    elements = parse(page)
    assert len(elements.all("table")) == TABLES
    scales = [line.strip()[2:] for line in (report / "index.md").read_text().splitlines()
              if line.strip().startswith("- scale: ")]
    assert len(scales) == len(VIEWS) + 2  # every view, the claims and the z study
    for scale in scales:
        assert f"<li>{html.escape(scale)}</li>" in page
    assert "ours best during training mean ± s.e. (seeds)" in elements.cells  # a comparison's header
    assert "— (not finished (killed ×1))" in elements.cells  # the z study's killed cell


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_chromium_renders_the_html_index_from_disk_with_its_tables_and_figures(report, page, tmp_path):
    index = report / "index.html"
    dom = parse(chromium(index, tmp_path / "p1", "--dump-dom"))
    assert len(dom.all("table")) == TABLES
    assert [attrs["src"] for attrs in dom.all("img")] == [attrs["src"] for attrs in parse(page).all("img")]
    assert "ours final mean ± s.e. (seeds)" in dom.cells and "0.70 ± 0.12 (3)" in dom.cells  # z study, step z
    shot = tmp_path / "index.png"
    chromium(index, tmp_path / "p2", "--window-size=1280,1600", f"--screenshot={shot}")
    pixels = imread(shot)[..., :3]  # [height, width, rgb] in [0, 1]
    assert pixels.shape[:2] == (1600, 1280)
    dark = (pixels.mean(axis=-1) < 0.5).mean()  # text and table rules on a white page
    assert 0.005 < dark < 0.5, f"the screenshot is blank or a solid block ({dark:.1%} dark pixels)"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # anti-aliased text, not a flat fill
