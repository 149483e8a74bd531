"""The paper's figures from cells (:mod:`dmh.report.compare`): this project's mean ± s.e. over seeds as solid lines
with bands (or solid bars with error bars), the paper's published values beside them as hollow markers on dashed
lines (or hollow markers with the paper's error-bar range). Missing data is drawn as missing: a panel or bar
without this project's runs says why in the plot ("no runs", "out of memory"), never as a zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dmh.io import atomic_path
from dmh.report.convergence import describe
from dmh.report.tables import ALGO_LABELS, task_label

COLORS = {"dmh": "tab:red", "ad-mamba": "tab:cyan", "ad-transformer": "tab:orange", "dm": "tab:blue",
          "dt": "tab:green", "with_subgoals": "tab:red", "without_subgoals": "tab:gray"}
MARKERS = {"dmh": "o", "ad-mamba": "x", "ad-transformer": "s", "dm": "^", "dt": "D"}
VARIANT_LABELS = {"with_subgoals": "with valuable sub-goals", "without_subgoals": "without valuable sub-goals"}


def series_label(key: str) -> str:
    return ALGO_LABELS.get(key, VARIANT_LABELS.get(key, key))


def save(fig: plt.Figure, folder: Path, name: str) -> list[Path]:
    """``folder/<name>.png`` and ``.pdf``, each written atomically."""
    paths = []
    for ext in ("png", "pdf"):
        path = folder / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=130)
        paths.append(path)
    plt.close(fig)
    return paths


def seeds_text(n: pd.Series) -> str:
    low, high = int(n.min()), int(n.max())
    return f"{low}–{high} seeds" if low != high else f"{high} seed" + ("s" if high > 1 else "")


def note_missing(ax: plt.Axes, reasons: list[str], nothing: bool) -> None:
    """Say in the panel what this project lacks: "no runs" when it has nothing here, else per series."""
    text = "this project: no runs" if nothing else "this project: " + "\n".join(reasons) if reasons else ""
    if text:
        ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", fontsize=6.5, color="dimgray")


def line_panel(ax: plt.Axes, cells: pd.DataFrame, series: str = "algo") -> None:
    """One panel: per series, ours (line + s.e. band, seeds in the legend) and the paper (hollow, dashed)."""
    reasons = []
    for key, group in cells.groupby(series, sort=True):
        group = group.sort_values("x")
        color, marker = COLORS.get(key), MARKERS.get(key, "o")
        done = group[group["n"] > 0]
        if len(done):
            x, mean, se = done["x"].to_numpy(float), done["mean"].to_numpy(float), done["se"].to_numpy(float)
            line, = ax.plot(x, mean, marker=marker, markersize=4, color=color,
                            label=f"{series_label(key)} ({seeds_text(done['n'])})")
            color = line.get_color()
            ax.fill_between(x, mean - np.nan_to_num(se), mean + np.nan_to_num(se), color=color, alpha=0.2)
        for _, row in group[group["n"] == 0].iterrows():
            if row["reason"] == "out of memory" and not math.isnan(row["x"]):
                ax.annotate("OOM", (row["x"], 0), xycoords=("data", "axes fraction"), ha="center", fontsize=7,
                            color=color)
        missing = group.loc[group["n"] == 0, "reason"].value_counts()
        if len(missing):
            reasons.append(f"{series_label(key)}: " + ", ".join(
                f"{r}" + (f" ({k} points)" if k > 1 and len(done) else "") for r, k in missing.items()))
        paper = group[group["paper_status"] == "ok"]
        if len(paper):
            ax.plot(paper["x"], paper["paper"], linestyle="--", marker=marker, markerfacecolor="none",
                    color=color, alpha=0.8, label=f"{series_label(key)} paper")
    note_missing(ax, reasons, nothing=bool((cells["n"] == 0).all()) and (cells["reason"] == "no runs").all())


def panels_figure(panels: list[tuple[pd.DataFrame, str, str, str]], shape: tuple[int, int], title: str,
                  logx: bool = False) -> plt.Figure:
    """A grid of line panels, each (cells, panel title, x label, y label); lines per algo."""
    fig, axes = plt.subplots(*shape, figsize=(4.2 * shape[1], 3.3 * shape[0]), squeeze=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax, (frame, name, xlabel, ylabel) in zip(axes.flat, panels, strict=False):
        line_panel(ax, frame)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def bars_figure(cells: pd.DataFrame, title: str, ylabel: str, series: str = "variant") -> plt.Figure:
    """Groups per task, one bar per series (ours: mean ± s.e.; missing: an empty slot with its reason), the paper
    as hollow markers with its error-bar range."""
    tasks = sorted(cells["task"].unique())
    keys = sorted(cells[series].unique())
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(tasks) * len(keys) / 2 + 2), 3.6))
    width = 0.8 / max(1, len(keys))
    paper_labelled = False
    for j, key in enumerate(keys):
        for i, task in enumerate(tasks):
            hit = cells[(cells["task"] == task) & (cells[series] == key)]
            if hit.empty:
                continue
            row, x = hit.iloc[0], i + (j - (len(keys) - 1) / 2) * width
            if row["n"] > 0:
                ax.bar(x, row["mean"], width * 0.9, yerr=0 if math.isnan(row["se"]) else row["se"],
                       color=COLORS.get(key), capsize=3, label=series_label(key) if i == 0 else None)
                ax.text(x, row["mean"], f"{row['n']}", ha="center", va="bottom", fontsize=6)
            else:
                ax.text(x, 0, row["reason"], rotation=90, ha="center", va="bottom", fontsize=6, color="dimgray")
            if row["paper_status"] == "ok":
                low, high = row["paper_low"], row["paper_high"]
                err = None if math.isnan(low) else [[row["paper"] - low], [high - row["paper"]]]
                ax.errorbar(x, row["paper"], yerr=err, fmt="D", markerfacecolor="none", color="black",
                            markersize=5, capsize=2, label=None if paper_labelled else "paper")
                paper_labelled = True
    ax.set_xticks(range(len(tasks)), [task_label(t) for t in tasks], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_label(row: pd.Series, several_c: bool) -> str:
    """A training curve's series: the algorithm, with its variant where the sweep varies one."""
    parts = [ALGO_LABELS.get(row["algo"], row["algo"])]
    if several_c and not pd.isna(row["c"]):
        parts.append(f"c={int(row['c'])}")
    if row["valuable_subgoals"] is False or str(row["valuable_subgoals"]).lower() == "false":
        parts.append("without valuable sub-goals")
    return ", ".join(parts)


def training_figure(curves: pd.DataFrame, title: str) -> plt.Figure:
    """Training curves of one sweep: per task a panel, per series (algo and variant) the last online episode's return
    (solid, mean ± s.e. over seeds) and the first's (dashed) against the gradient update, each point marked
    converged (filled) or not (hollow) at the run's end by the plateau rule where the curve ends.

    ``curves``: dmh.report.export's training columns joined with each run's task, seed and ``series`` label, and
    ``converged`` per run."""
    tasks = sorted(curves["task"].unique())
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for i, (label, group) in enumerate(curves[curves["task"] == task].groupby("series", sort=True)):
            color = plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10]
            stats = group.groupby("step").agg(last=("last_return", "mean"), last_se=("last_return", "sem"),
                                              first=("first_return", "mean"), n=("seed", "nunique"))
            steps = stats.index.to_numpy(dtype=float)
            flagged = f"converged {describe(group.drop_duplicates('run_id')['converged'].tolist())}"
            ax.plot(steps, stats["last"], "-o", color=color, ms=3,
                    label=f"{label} ({int(stats['n'].max())} seeds, {flagged})")
            band = stats["last_se"].fillna(0)
            ax.fill_between(steps, stats["last"] - band, stats["last"] + band, color=color, alpha=0.15, lw=0)
            if stats["first"].notna().any():
                ax.plot(steps, stats["first"], "--", color=color, lw=1, alpha=0.8)
        ax.set_title(task_label(task), fontsize=9)
        ax.set_xlabel("gradient updates", fontsize=8)
        ax.set_ylabel("return (solid: last episode, dashed: first)", fontsize=7)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
