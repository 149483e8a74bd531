"""Regenerate every table and figure of the paper from tracked runs, beside the paper's own numbers.

    python -m dmh.report.make_all [--tracking-uri URI] [--experiments NAME ...] [--out reports/] [--from-cache]
                                  [--verdicts-before FOLDER]
    dmh report [same options]

1. Export: the runs of the chosen MLflow experiments (default: all) → ``OUT/data/{runs,curves}.csv`` (one row per
   trial, latest result wins); ``--from-cache`` rebuilds from that cache without a tracking server.
2. Tables 1, 2, 4 and this project's z study → ``OUT/tables/*.{md,tex,csv}``; Figures 2–6 →
   ``OUT/figures/*.{png,pdf}``.
3. For every table and figure a paper-vs-this-project comparison (``OUT/comparison/<view>.{md,csv}``: mean ± s.e.,
   IQM with a 95 % bootstrap interval, the paper's number, and why anything is missing; for a return or score both
   the final evaluation, which the paper's number compares with, and the best evaluation during training).
4. The paper's claims on the experiments run here, each a paired difference over seeds with a verdict
   (``OUT/tables/claims.*``, :mod:`dmh.report.claims`); with ``--verdicts-before FOLDER``, the same claims judged on
   that report's runs beside these, and which verdicts moved (``OUT/tables/claims_moved.*``).
5. ``OUT/index.md`` links everything and states the scale of every number (preset, gradient updates, seeds, tasks);
   ``OUT/index.html`` says the same on one self-contained page with every table and figure inline.

A partial sweep still produces everything: cells without runs say so.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dmh.boundary import EXIT_BAD_INPUT, Parser, parse
from dmh.errors import DmhError
from dmh.io import atomic_path
from dmh.report import claims, convergence, figures, tables, z_table
from dmh.report.compare import VIEWS, best_note, cells, has_best, scale
from dmh.report.export import Export, export_runs, load_export, save_export
from dmh.report.index import FINAL_VS_BEST, Entry, Section, html_index, markdown_index
from dmh.report.paper import load_paper_numbers
from dmh.report.stats import CONFIDENCE
from dmh.vocabulary import GRID_WORLD, Outcome


@dataclass(frozen=True)
class FigureSpec:
    """One output figure: the views it draws and how."""

    views: tuple[str, ...]
    draw: Callable[[dict[str, pd.DataFrame]], object]  # view name → cells, to a matplotlib figure


def per_task(frame: pd.DataFrame, tasks: list[str], xlabel: str, ylabel: str) -> list[tuple]:
    return [(frame[frame["task"] == t], tables.task_label(t), xlabel, ylabel) for t in tasks]


def fig2(c: dict[str, pd.DataFrame]) -> object:
    order = [*GRID_WORLD[3:], *GRID_WORLD[:3]]  # the paper's layout: long-horizon tasks on top
    return figures.panels_figure(per_task(c["fig2"], order, "online episode", "return"), (2, 3), VIEWS["fig2"].title)


def fig3(c: dict[str, pd.DataFrame]) -> object:
    return figures.panels_figure([(c["fig3a"], "(a) return", "memory length", "return"),
                                  (c["fig3b"], "(b) online testing", "memory length", "minutes")], (1, 2),
                                 "Fig. 3: T-maze", logx=True)


def fig4b(c: dict[str, pd.DataFrame]) -> object:
    tasks = sorted(c["fig4b"]["task"].unique())
    cols = min(3, max(1, len(tasks)))
    return figures.panels_figure(per_task(c["fig4b"], tasks, "c (steps per sub-goal)", "return / normalised score"),
                                 (-(-len(tasks) // cols) or 1, cols), VIEWS["fig4b"].title)


FIGURES: dict[str, FigureSpec] = {
    "fig2_grid_world": FigureSpec(("fig2",), fig2),
    "fig3_tmaze": FigureSpec(("fig3a", "fig3b"), fig3),
    "fig4a_subgoal_ablation": FigureSpec(("fig4a",), lambda c: figures.bars_figure(
        c["fig4a"], VIEWS["fig4a"].title, "return (last online episode)")),
    "fig4b_c_sensitivity": FigureSpec(("fig4b",), fig4b),
    "fig5_tmaze_offline_time": FigureSpec(("fig5",), lambda c: figures.panels_figure(
        [(c["fig5"], "", "memory length", "hours per 10k updates")], (1, 1), VIEWS["fig5"].title, logx=True)),
    "fig6_d4rl_ablation": FigureSpec(("fig6",), lambda c: figures.bars_figure(
        c["fig6"], VIEWS["fig6"].title, "normalised score")),
}


def comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """A view's cells as text: ours (mean ± s.e. (seeds), IQM [CI]) beside the paper, with the reasons; for a
    return or score, ours final (the paper's protocol) and ours best during training."""
    def iqm(row: pd.Series) -> str:
        if row["n"] == 0:
            return "—"
        ci = "" if math.isnan(row["iqm_low"]) else f" [{row['iqm_low']:.3g}, {row['iqm_high']:.3g}]"
        return f"{row['iqm']:.3g}{ci}"

    best = "best_mean" in frame.columns  # compare.BEST_COLUMNS
    ours = "ours final" if best else "ours"
    text = pd.DataFrame({
        "task": frame["task"].map(tables.task_label), "algo": frame["algo"].map(lambda a: tables.ALGO_LABELS.get(a, a)),
        "variant": frame["variant"], "x": frame["x"].map(lambda x: "" if math.isnan(x) else f"{x:g}"),
        f"{ours} mean ± s.e. (seeds)": [tables.fmt(m, s, n or None) for m, s, n in
                                        zip(frame["mean"], frame["se"], frame["n"], strict=True)],
        f"{ours} IQM [{CONFIDENCE:.0%} CI]": frame.apply(iqm, axis=1),
    })
    notes = [note(*row) for row in zip(frame["reason"], frame["paper_status"], frame["paper_provenance"],
                                       strict=True)]
    if best:
        text["ours best during training mean ± s.e. (seeds)"] = [
            tables.fmt(m, s, n or None) for m, s, n in zip(frame["best_mean"], frame["best_se"], frame["best_n"],
                                                           strict=True)]
        notes = [" ; ".join(p for p in (text_note, best_note(n, k)) if p) for text_note, n, k in
                 zip(notes, frame["n"], frame["evaluated_during_training"], strict=True)]
    text["paper"] = frame.apply(tables.paper_fmt, axis=1)
    text["note"] = notes
    return text


def note(reason: str, paper_status: str, provenance: str) -> str:
    """Why a side is missing or thin, and where a borrowed paper number came from (provenance "X: <where>")."""
    parts = [reason]
    if paper_status == "not in paper":
        parts.append("not in paper")
    elif paper_status != "ok":
        parts.append(f"paper: {paper_status}")
    if ": " in provenance:
        parts.append(f"paper from {provenance.split(': ', 1)[1]}")
    return " ; ".join(p for p in parts if p)


def build_report(out: Path, tracking_uri: str | None, experiments: list[str] | None, from_cache: bool | Path,
                 echo: Callable[[str], None] = print, verdicts_before: Path | None = None) -> Path:
    """Everything the module docstring lists; returns ``OUT/index.md``. ``from_cache``: True reads OUT/data, a
    folder reads that report's cache (FOLDER/data, or FOLDER itself when it holds runs.csv) and copies it to
    OUT/data, so the new report carries the numbers it was built from. ``verdicts_before``: another report's folder
    (or cache), whose runs the claims are judged on too, beside this report's (``tables/claims_moved.*``)."""
    data_dir = out / "data"
    source = cache_folder(from_cache) if isinstance(from_cache, Path) else data_dir
    export = load_export(source) if from_cache else export_runs(tracking_uri, experiments)
    if not from_cache or source.resolve() != data_dir.resolve():
        save_export(export, data_dir)
    paper = load_paper_numbers()
    def cells_of(runs: Export) -> dict[str, pd.DataFrame]:
        return {name: cells(runs, paper, view) for name, view in VIEWS.items()}

    view_cells = cells_of(export)
    texts = {name: comparison(frame) for name, frame in view_cells.items()}
    written: dict[str, list[Path]] = {}
    for name, frame in view_cells.items():
        written[f"comparison/{name}"] = [out / "comparison" / f"{name}.md", out / "comparison" / f"{name}.csv"]
        legend = f"{FINAL_VS_BEST}\n\n" if has_best(VIEWS[name]) else ""
        with atomic_path(written[f"comparison/{name}"][0]) as tmp:
            tmp.write_text(f"**{VIEWS[name].title}: paper vs this project**\n\n{legend}" + tables.markdown(texts[name]))
        with atomic_path(written[f"comparison/{name}"][1]) as tmp:
            frame.to_csv(tmp, index=False)
    study, judged = z_table.z_table(export), claims.claims_table(export, view_cells)
    built = [judged, tables.table1(view_cells["table1"], view_cells["table1_efficiency"]),
             tables.table2(view_cells["table2"], paper),
             tables.table4(view_cells["table4_offline"], view_cells["table4_online"], paper), study]
    moved = None
    if verdicts_before is not None:
        earlier = load_export(cache_folder(verdicts_before, "--verdicts-before"))
        moved = claims.moved_table(claims.claims_table(earlier, cells_of(earlier)), judged, str(verdicts_before))
        built.append(moved)
    for table in built:
        written[f"tables/{table.name}"] = tables.write_table(table, out / "tables")
    for name, spec in FIGURES.items():
        written[f"figures/{name}"] = figures.save(spec.draw(view_cells), out / "figures", name)
    trained = training_figures(export, out / "figures")
    written.update(trained)
    parts = sections(export, view_cells, {table.name: table for table in built}, written)
    parts += [Section("figures", name.removeprefix("figures/"), paths, []) for name, paths in trained.items()]
    index = out / "index.md"
    with atomic_path(index) as tmp:
        tmp.write_text(markdown_index(out, export.source, parts))
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(html_index(out, export.source, parts, texts), encoding="utf-8")
    for name, frame in view_cells.items():  # what this project has: its cells beside the paper's
        ours = frame[frame["n"] > 0]
        if len(ours):
            echo(f"\n{VIEWS[name].title}: paper vs this project ({len(frame) - len(ours)} more paper cells without "
                 f"runs here: {written[f'comparison/{name}'][0]})\n")
            echo(tables.markdown(comparison(ours)))
    if (judged.numbers["n"] > 0).any():
        echo(f"\n{claims.TITLE} ({written[f'tables/{judged.name}'][0]})\n")
        echo(tables.markdown(judged.text[judged.numbers["n"] > 0]))
    if (study.numbers["n"] > 0).any():
        echo(f"\n{z_table.TITLE} ({written[f'tables/{study.name}'][0]})\n")
        echo(tables.markdown(study.text))
    if moved is not None:
        shifted = moved.numbers["moved"]
        echo(f"\n{claims.MOVED_TITLE}: {int(shifted.sum())} of {len(shifted)} moved "
             f"({written[f'tables/{moved.name}'][0]})\n")
        if shifted.any():
            echo(tables.markdown(moved.text[shifted.to_numpy()]))
    return index


def training_figures(export: Export, folder: Path) -> dict[str, list[Path]]:
    """One training-curves figure per sweep with training curves (``training_<sweep>.{png,pdf}``): every campaign
    cell's evaluations against the update, and whether its runs converged (:mod:`dmh.report.convergence`)."""
    if export.training.empty:
        return {}
    converged = convergence.converged_runs(export.training)
    runs = export.runs[export.runs["outcome"] == Outcome.COMPLETED]
    joined = export.training.merge(runs[["run_id", "sweep", "algo", "task", "seed", "c", "valuable_subgoals"]],
                                   on="run_id")
    written = {}
    for sweep, curves in joined.groupby("sweep"):
        several_c = curves["c"].nunique() > 1
        curves = curves.assign(series=curves.apply(figures.training_label, axis=1, several_c=several_c),
                               converged=curves["run_id"].map(converged))
        name = f"training_{sweep}"
        title = f"{sweep}: training curves on held-out tasks"
        written[f"figures/{name}"] = figures.save(figures.training_figure(curves, title), folder, name)
    return written


# The paper's tables and the views each shows.
TABLE_VIEWS = {"table1": ("table1", "table1_efficiency"), "table2": ("table2",),
               "table4": ("table4_offline", "table4_online")}


def sections(export: Export, view_cells: dict[str, pd.DataFrame], built: dict[str, tables.Table],
             written: dict[str, list[Path]]) -> list[Section]:
    """Every table and figure of the report, with what the index says of its views: the paper's tables, the z
    study (this project's, without a paper number), the figures."""
    def missing(frame: pd.DataFrame) -> dict[str, int]:
        return {str(r): int(k) for r, k in frame.loc[frame["reason"] != "", "reason"].value_counts().items()}

    def entry(view: str) -> Entry:
        frame = view_cells[view]
        return Entry(view, VIEWS[view].title, int((frame["n"] > 0).sum()), len(frame), scale(export, VIEWS[view]),
                     missing(frame), written[f"comparison/{view}"][0])

    def table(name: str, entries: list[Entry]) -> Section:
        return Section("tables", name, written[f"tables/{name}"], entries, built[name].caption, built[name].text)

    study, judged = built[z_table.SWEEP].numbers, built[claims.NAME].numbers
    verdicts = judged["verdict"].value_counts()
    summary = ", ".join(f"{int(verdicts.get(v, 0))} {v}" for v in claims.VERDICTS) + f", of {len(judged)}"
    seeds = judged.loc[judged["n"] > 0, "n"]
    moved = []
    if claims.MOVED in built:
        shifted = built[claims.MOVED].numbers["moved"]
        moved = [table(claims.MOVED, [Entry(claims.MOVED, claims.MOVED_TITLE, len(shifted), len(shifted), {}, {},
                                            None, f"{int(shifted.sum())} of {len(shifted)} moved")])]
    return [table(claims.NAME, [Entry(claims.NAME, claims.TITLE, int((judged["n"] > 0).sum()), len(judged),
                                      {"seeds per claim": f"{seeds.min()}–{seeds.max()}" if len(seeds) else "0"},
                                      {}, None, summary)]),
            *moved,
            *(table(name, [entry(v) for v in views]) for name, views in TABLE_VIEWS.items()),
            table(z_table.SWEEP, [Entry(z_table.SWEEP, z_table.TITLE, int((study["n"] > 0).sum()), len(study),
                                        scale(export, z_table.VIEW), missing(study), None)]),
            *(Section("figures", name, written[f"figures/{name}"], [entry(v) for v in spec.views])
              for name, spec in FIGURES.items())]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dmh report", name="report", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default $MLFLOW_TRACKING_URI or "
                        "./mlflow.db)")
    parser.add_argument("--experiments", nargs="+", default=None, help="experiments to read (default: all)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default reports/)")
    parser.add_argument("--from-cache", nargs="?", const=True, default=False, type=Path, metavar="FOLDER",
                        help="rebuild without MLflow from a report's cache: OUT/data, or FOLDER (a report folder "
                             "such as docs/results/campaign, or its data/ folder)")
    parser.add_argument("--verdicts-before", type=Path, default=None, metavar="FOLDER",
                        help="another report's folder or cache (e.g. docs/results/campaign): judge the claims on its "
                             "runs too and write which verdicts moved (tables/claims_moved.*)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from dmh.tracking import default_tracking_uri

    try:
        args = parse(build_parser(), argv)  # --out a folder that can be written, …
        uri = args.tracking_uri or default_tracking_uri()
        if isinstance(args.from_cache, Path):
            cache_folder(args.from_cache)
        elif not args.from_cache:
            check_store(uri)
        if args.verdicts_before is not None:
            cache_folder(args.verdicts_before, "--verdicts-before")
        index = build_report(args.out, uri, args.experiments, args.from_cache,
                             verdicts_before=args.verdicts_before)
    except DmhError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"\nreport: {index} and {index.with_suffix('.html')} (tables in {args.out / 'tables'}, figures in "
          f"{args.out / 'figures'})")
    return 0


def cache_folder(folder: Path, option: str = "--from-cache") -> Path:
    """The exported cache a ``--from-cache FOLDER`` (or ``option``) names: FOLDER/data, or FOLDER when it holds
    runs.csv."""
    for candidate in (folder / "data", folder):
        if (candidate / "runs.csv").is_file():
            return candidate
    raise DmhError(f"{option} {folder}: no report cache there (runs.csv in {folder / 'data'} or {folder})")


def check_store(uri: str) -> None:
    """A local SQLite store must exist: MLflow would silently create an empty one and the report would be empty.
    Any store must answer (``dmh.tracking.check_store``): a server that is down is one line, not minutes of
    MLflow's retries."""
    from dmh.tracking import check_store as check_reachable
    from dmh.tracking import local_sqlite_path

    db = local_sqlite_path(uri)
    if db is not None and not db.exists():
        raise DmhError(f"no MLflow store at {db}: run a sweep first (e.g. python sweeps/c_sensitivity.py), or pass "
                       "--tracking-uri")
    check_reachable(uri)


if __name__ == "__main__":
    sys.exit(main())
