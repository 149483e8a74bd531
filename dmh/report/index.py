"""The report's index, twice from the same :class:`Section` list: ``OUT/index.md``, which links every file, and
``OUT/index.html``, one self-contained page that a browser opens from disk: every figure inline as a base64 PNG
``data:`` URI, every table and comparison as an HTML table, anchors instead of links to files, no script, nothing
fetched. Both state the scale of every number (presets, gradient updates, seeds per cell, tasks, test tasks, online
episodes)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dmh.report.stats import CONFIDENCE

TITLE = "DM-H reproduction report"
# The comparisons' two statistics of a return or score, as each comparison and the index explain them.
FINAL_VS_BEST = ("Ours final: the evaluation after training, the paper's protocol, which the paper's number compares "
                 "with. Ours best during training: each run's max over its evaluations during training (every "
                 "`eval_every` updates) and the final one, then mean ± s.e. over seeds; where no run of a cell was "
                 "evaluated during training the best is the final evaluation, and the note says so.")
STYLE = """body { font-family: sans-serif; max-width: 1250px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #eee; }
img { max-width: 100%; }
code { background: #f2f2f2; }"""


@dataclass(frozen=True)
class Entry:
    """What the index says of one view (or of the z study) under its table or figure."""

    name: str  # the view's name (OUT/comparison/<name>.md), or z_study
    title: str  # the view's caption
    ours: int  # cells with this project's runs
    cells: int  # cells in all, this project's and the paper's
    scale: dict[str, str]  # dmh.report.compare.scale: runs, presets, gradient updates, seeds per cell, tasks, ...
    missing: dict[str, int]  # reason → cells, for the cells missing or thin
    comparison: Path | None  # OUT/comparison/<name>.md; None where there is no paper number (the z study)
    summary: str = ""  # what the index says of it instead of its cell coverage (the claims: verdicts counted)


@dataclass(frozen=True)
class Section:
    """One table or figure of the report: its files, the views it draws, and what the HTML page shows of it."""

    kind: str  # "tables" or "figures"
    name: str  # table1, z_study, fig2_grid_world, ...
    files: list[Path]  # what was written for it: .md/.tex/.csv or .png/.pdf
    entries: list[Entry]  # the views it draws, in order
    caption: str = ""  # a table's caption (empty for a figure)
    text: pd.DataFrame | None = None  # a table's formatted cells (None for a figure: its PNG is in ``files``)


def preamble(source: dict) -> list[str]:
    """The paragraphs both indexes open with: where the numbers came from and what each statistic is."""
    exports = source.get("exports", [source])
    built = "; ".join(f"MLflow store `{e.get('tracking_uri')}`, experiments "
                      f"{', '.join(e.get('experiments', [])) or '(none)'}, exported {e.get('exported_at')}"
                      for e in exports)
    merged = f" ({len(exports)} exports merged, the latest result of each trial kept)" if len(exports) > 1 else ""
    return [f"Built from {built}{merged}.",
            "Ours: mean ± standard error over seeds (seeds in brackets), and the interquartile mean with a "
            f"{CONFIDENCE:.0%} percentile-bootstrap interval. Paper: the published number "
            "(dmh/report/paper_numbers.csv, provenance per number). A missing number is shown as missing, with its "
            "reason.", FINAL_VS_BEST]


def coverage(entry: Entry) -> str:
    if entry.summary:
        return entry.summary
    if entry.comparison is not None:
        return f"{entry.ours} of {entry.cells} cells have this project's runs"
    if entry.cells == 0:
        return "no runs yet (this project's study: no paper number)"
    return f"{entry.ours} of {entry.cells} cells have completed runs (this project's study: no paper number)"


def details(entry: Entry) -> list[str]:
    """The entry's scale and, if any, its missing or thin cells, one line each."""
    lines = ["scale: " + "; ".join(f"{k}: {v}" for k, v in entry.scale.items())]
    if entry.missing:
        lines.append("missing or thin: " + ", ".join(f"{r} ×{k}" for r, k in entry.missing.items()))
    return lines


# ------------------------------------------------------------------------------------------------------- Markdown
def markdown_index(out: Path, source: dict, sections: list[Section]) -> str:
    """``OUT/index.md``: every output linked, each view's coverage and scale."""
    lines = [f"# {TITLE}", "", *(line for paragraph in preamble(source) for line in (paragraph, "")),
             "The same index as one self-contained page, figures and tables inline: [index.html](index.html)", ""]
    for section in sections:
        links = " · ".join(f"[{p.suffix[1:]}]({p.relative_to(out).as_posix()})" for p in section.files)
        lines += [f"## {section.name}", "", links, ""]
        for entry in section.entries:
            target = section.files[0] if entry.comparison is None else entry.comparison
            what = "table" if entry.comparison is None else "paper vs this project"
            lines.append(f"- **{entry.title}** — {coverage(entry)}; [{what}]({target.relative_to(out).as_posix()})")
            lines += [f"  - {line}" for line in details(entry)]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- HTML
def inline(text: str) -> str:
    """``text`` escaped, with its Markdown ```code``` and ``**bold**`` spans as HTML."""
    out = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]*)\*\*", r"<strong>\1</strong>", out)


def table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, na_rep="—", border=0)


def figure_html(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def anchor(name: str) -> str:
    """An element id for a section or comparison: letters, digits, - and _ only."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def html_index(out: Path, source: dict, sections: list[Section], comparisons: dict[str, pd.DataFrame]) -> str:
    """``OUT/index.html``: what :func:`markdown_index` says, with each table, figure and comparison (view name →
    its formatted cells, :func:`dmh.report.make_all.comparison`) inline; links only to anchors of the page."""
    body = [f'<h1 id="top">{html.escape(TITLE)}</h1>', *(f"<p>{inline(p)}</p>" for p in preamble(source)),
            '<nav><h2 id="contents">Contents</h2><ul>',
            *(f'<li><a href="#{anchor(s.name)}">{html.escape(s.name)}</a></li>' for s in sections), "</ul></nav>"]
    for section in sections:
        files = ", ".join(f"<code>{html.escape(p.relative_to(out).as_posix())}</code>" for p in section.files)
        body += [f'<section id="{anchor(section.name)}">', f"<h2>{html.escape(section.name)}</h2>",
                 f"<p>Files beside this page: {files}</p>", "<ul>"]
        for entry in section.entries:
            jump = "" if entry.comparison is None else \
                f'; <a href="#comparison-{anchor(entry.name)}">paper vs this project</a>'
            body.append(f"<li><strong>{html.escape(entry.title)}</strong> — {html.escape(coverage(entry))}{jump}"
                        "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in details(entry)) + "</ul></li>")
        body.append("</ul>")
        if section.text is not None:
            body += [f"<p><strong>{html.escape(section.caption)}</strong></p>", table_html(section.text)]
        else:
            png = next(p for p in section.files if p.suffix == ".png")
            body.append(figure_html(png, section.name))
        for entry in section.entries:
            if entry.comparison is None:
                continue
            body += [f'<h3 id="comparison-{anchor(entry.name)}">{html.escape(entry.title)}: paper vs this project'
                     "</h3>", table_html(comparisons[entry.name])]
        body += ['<p><a href="#top">top</a></p>', "</section>"]
    return "\n".join(['<!DOCTYPE html>', '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{html.escape(TITLE)}</title>", f"<style>\n{STYLE}\n</style>", "</head>", "<body>",
                      *body, "</body>", "</html>", ""])
