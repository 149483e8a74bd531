"""What each of the paper's tables and figures compares, as data (:data:`VIEWS`), and the one function that turns an
export into its cells: this project's statistics over seeds beside the paper's published number, with the reason
when either side is missing.

A *cell* is one (task, algo, variant, x) point of a view: e.g. DM-H on Large Darkroom Hard at c = 10 in Fig. 4b, or
AD (Transformer) at online episode 5 on Darkroom in Fig. 2. Tables and figures are drawn from cells only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmh.report.export import Export
from dmh.report.stats import summarize
from dmh.vocabulary import D4RL_FAMILIES, D4RL_TASKS, GRID_WORLD, TMAZE_PREFIX, Outcome


def d4rl_family(task: str) -> str:
    """``hopper-medium-v2`` → ``hopper`` (Table 1's efficiency rows and Table 4 pool a family's datasets)."""
    return task.split("-", 1)[0] if task in D4RL_TASKS else task


def memory_length(task: str) -> float:
    """``tmaze-2000`` → 2000.0 (the x-axis of Fig. 3 and Fig. 5)."""
    return float(task.removeprefix(TMAZE_PREFIX)) if is_tmaze(task) else math.nan


@dataclass(frozen=True)
class View:
    """One paper table or figure, as a query over runs and over the paper's numbers."""

    name: str  # the paper's key in dmh/report/paper_numbers.csv: table2, fig4b, ...
    title: str  # what the paper's caption calls it
    sweeps: tuple[str, ...]  # sweeps (tag ``sweep``, else the experiment name) whose runs it reads
    value: str  # per-run column it summarises: last_return, normalized_score, score, online_min, offline_h_per_10k,
    #             or "curve" (the in-context curve, one point per online episode)
    paper_metric: str | None = None  # restrict the paper's rows to this metric (Table 1 holds two); None: all
    algos: tuple[str, ...] = ()  # algos it compares (empty: every algo found)
    tasks: Callable[[str], bool] = lambda task: True  # which tasks belong to it
    task_of: Callable[[str], str] = lambda task: task  # how a run's task maps onto the view's rows (pooling)
    x_of: str | None = None  # x-axis: "c", "memory_length", "episode", or None
    variant_of: str | None = None  # variants: "subgoals" (with/without valuable sub-goals), "c" or None
    # where the paper's figure lacks a task this project ran, the paper's number for it from another figure at the
    # paper's own c for that task: (figure, variant), e.g. Fig. 4b's cpu grid runs Darkroom Hard, which Fig. 4a has
    paper_elsewhere: tuple[str, str] | None = None


def is_grid(task: str) -> bool:
    return task in GRID_WORLD


def is_d4rl(task: str) -> bool:
    return task in D4RL_TASKS or task in D4RL_FAMILIES


def is_tmaze(task: str) -> bool:
    return task.startswith(TMAZE_PREFIX)


AD_PAIR = ("ad-mamba", "ad-transformer")
TABLE4_ALGOS = ("ad-mamba", "ad-transformer", "dmh")
VIEWS: dict[str, View] = {v.name: v for v in (
    View("table1", "Table 1: Mamba vs Transformer (AD) on D4RL, normalised score", ("d4rl",), "normalized_score",
         "normalized_score", AD_PAIR, is_d4rl),
    View("table1_efficiency", "Table 1: Mamba vs Transformer (AD), offline hours per 10k updates", ("d4rl",),
         "offline_h_per_10k", "offline_h_per_10k_updates", AD_PAIR, is_d4rl, d4rl_family),
    View("table2", "Table 2: D4RL normalised score", ("d4rl",), "normalized_score", "normalized_score",
         ("dt", "ad-mamba", "ad-transformer", "dmh"), is_d4rl),
    View("table4_offline", "Table 4: offline training, hours per 10k gradient updates", ("grid_world", "d4rl"),
         "offline_h_per_10k", "offline_h_per_10k_updates", TABLE4_ALGOS, lambda t: is_grid(t) or is_d4rl(t),
         d4rl_family),
    View("table4_online", "Table 4: online testing, minutes", ("grid_world", "d4rl"), "online_min", "online_min",
         TABLE4_ALGOS, lambda t: is_grid(t) or is_d4rl(t), d4rl_family),
    View("fig2", "Fig. 2: Grid World in-context learning (return by online episode)", ("grid_world",), "curve",
         "return", ("dmh", "ad-mamba", "ad-transformer"), is_grid, x_of="episode"),
    View("fig3a", "Fig. 3(a): T-maze return by memory length", ("tmaze",), "last_return", "return",
         ("dmh", "dm", "dt"), is_tmaze, x_of="memory_length"),
    View("fig3b", "Fig. 3(b): T-maze online testing minutes by memory length", ("tmaze",), "online_min",
         "online_min", ("dmh", "dm", "dt"), is_tmaze, x_of="memory_length"),
    View("fig5", "Fig. 5: T-maze offline training hours per 10k updates", ("tmaze",), "offline_h_per_10k",
         "offline_h_per_10k_updates", ("dmh", "dm", "dt"), is_tmaze, x_of="memory_length"),
    View("fig4a", "Fig. 4(a): valuable sub-goal ablation, Grid World return", ("subgoal_ablation",), "last_return",
         "return", ("dmh",), is_grid, variant_of="subgoals"),
    View("fig4b", "Fig. 4(b): sensitivity to c", ("c_sensitivity",), "score", None, ("dmh",), x_of="c",
         variant_of="c", paper_elsewhere=("fig4a", "with_subgoals")),
    View("fig6", "Fig. 6: valuable sub-goal ablation, D4RL normalised score", ("subgoal_ablation",),
         "normalized_score", "normalized_score", ("dmh",), is_d4rl, variant_of="subgoals"),
)}
KEYS = ["task", "algo", "variant", "x"]
CELL_COLUMNS = [*KEYS, "n", "mean", "se", "iqm", "iqm_low", "iqm_high", "reason", "paper", "paper_err",
                "paper_low", "paper_high", "paper_status", "paper_provenance"]
# A view whose value is a return or score also summarises each run's best evaluation (the max over its evaluations
# during training and the final one; dmh.report.export.BEST): value → the per-run column of its best.
BEST_OF = {"last_return": "best_return", "normalized_score": "best_normalized_score", "score": "best_score"}
# Their cells' extra columns: mean ± s.e. over seeds of the best, and how many of the cell's completed runs logged an
# evaluation during training (0: the best is the final evaluation).
BEST_COLUMNS = ["best_mean", "best_se", "best_n", "evaluated_during_training"]


def has_best(view: View) -> bool:
    """Whether ``view``'s cells carry BEST_COLUMNS beside the final evaluation's statistics."""
    return view.value in BEST_OF


def best_note(n: int, evaluated: int) -> str:
    """What a cell's best during training rests on: nothing beyond the final evaluation where none of its ``n``
    completed runs was evaluated during training, and only some runs' evaluations where ``evaluated`` < ``n``."""
    if n == 0 or evaluated == n:
        return ""
    if evaluated == 0:
        return "best = final: no evaluations during training"
    return f"best: {evaluated} of {n} runs evaluated during training (the others' best = final)"


def variant(view: View, runs: pd.DataFrame) -> pd.Series:
    if view.variant_of == "subgoals":
        return runs["valuable_subgoals"].map(lambda v: "with_subgoals" if v in (True, "True", 1) else
                                             "without_subgoals")
    if view.variant_of == "c":
        return runs["c"].map(lambda c: f"c={int(c)}")
    return pd.Series("", index=runs.index)


def view_runs(export: Export, view: View) -> pd.DataFrame:
    """The exported runs this view reads: of its sweeps, tasks and algos."""
    runs = export.runs
    runs = runs[runs["sweep"].isin(view.sweeps) & runs["task"].map(view.tasks)]
    return runs[runs["algo"].isin(view.algos)] if view.algos else runs


def run_points(export: Export, view: View) -> pd.DataFrame:
    """The runs this view reads, one row per (run, x) with its value and outcome."""
    runs = view_runs(export, view)
    runs = runs.assign(task=runs["task"].map(view.task_of), variant=variant(view, runs),
                       score=runs["normalized_score"].fillna(runs["last_return"]),
                       best_score=runs["best_normalized_score"].fillna(runs["best_return"]))
    runs["best"] = runs[BEST_OF[view.value]] if has_best(view) else math.nan
    if view.value == "curve":
        points = runs.merge(export.curves, on="run_id", how="left").rename(columns={"return": "value"})
        points["x"] = points["episode"].astype(float)
    else:
        points = runs.assign(value=runs[view.value])
        points["x"] = (runs["c"].astype(float) if view.x_of == "c" else
                       runs["task"].map(memory_length) if view.x_of == "memory_length" else math.nan)
    return points[[*KEYS, "run_id", "seed", "value", "best", "evals_during_training", "outcome"]]


def missing_reason(outcomes: pd.Series) -> str:
    """Why a cell has no value: out of memory, or its runs did not finish (counted by outcome)."""
    if (outcomes == Outcome.OUT_OF_MEMORY).any():
        return "out of memory"
    counts = outcomes.value_counts()
    return "not finished (" + ", ".join(f"{k} ×{v}" for k, v in counts.items()) + ")"


def best_stats(done: pd.DataFrame) -> dict[str, float]:
    """BEST_COLUMNS of one cell from its completed runs' ``best`` and ``evals_during_training``."""
    best = summarize(done["best"].to_numpy(dtype=float))
    return {"best_mean": best.mean, "best_se": best.se, "best_n": best.n,
            "evaluated_during_training": int((done["evals_during_training"].fillna(0) > 0).sum())}


def mark_short(cells: pd.DataFrame, seeds: pd.Series) -> None:
    """A cell with fewer seeds than the best-covered cell of the same table says so in ``reason``: asked for, not all
    delivered."""
    if cells.empty:
        return
    most = int(seeds.max())
    short = (seeds > 0) & (seeds < most)
    cells.loc[short, "reason"] = seeds[short].map(lambda n: f"{n} of {most} seeds")


def our_cells(export: Export, view: View) -> pd.DataFrame:
    points = run_points(export, view)
    rows = []
    for key, group in points.groupby(KEYS, dropna=False, sort=True):
        done = group[group["outcome"] == Outcome.COMPLETED]
        stats = summarize(done["value"].to_numpy(dtype=float))
        reason = "" if stats.n else missing_reason(group["outcome"])
        rows.append({**dict(zip(KEYS, key, strict=True)), **stats.__dict__, "reason": reason,
                     **(best_stats(done) if has_best(view) else {}), "seeds": done["seed"].nunique()})
    columns = [*KEYS, "n", "mean", "se", "iqm", "iqm_low", "iqm_high", "reason",
               *(BEST_COLUMNS if has_best(view) else []), "seeds"]
    cells = pd.DataFrame(rows, columns=columns)
    mark_short(cells, cells["seeds"])
    return cells.drop(columns="seeds")


def paper_cells(paper: pd.DataFrame, view: View) -> pd.DataFrame:
    name = view.name.split("_")[0]
    rows = paper[(paper["figure"] == name) & paper["task"].map(view.tasks)]
    if view.paper_metric:
        rows = rows[rows["metric"] == view.paper_metric]
    if view.algos:
        rows = rows[rows["algo"].isin(view.algos)]
    if view.x_of is None:
        rows = rows.assign(x=math.nan)
    return pd.DataFrame({
        "task": rows["task"], "algo": rows["algo"], "variant": rows["variant"], "x": rows["x"],
        "paper": rows["value"], "paper_err": rows["err"], "paper_low": rows["err_low"], "paper_high": rows["err_high"],
        "paper_status": rows["status"], "paper_provenance": rows["provenance"]})


def cells(export: Export, paper: pd.DataFrame, view: View) -> pd.DataFrame:
    """Every cell that this project or the paper has for ``view``, side by side (outer join on task/algo/variant/x).
    ``reason`` says why this project's side is missing or thin; ``paper_status`` why the paper's is."""
    ours, theirs = our_cells(export, view), paper_cells(paper, view)
    # x is a float key: NaN never equals NaN in a merge, so compare a filled copy
    ours, theirs = ours.assign(_x=ours["x"].fillna(-1.0)), theirs.assign(_x=theirs["x"].fillna(-1.0))
    merged = ours.drop(columns="x").merge(theirs.drop(columns="x"), on=["task", "algo", "variant", "_x"],
                                          how="outer")
    merged["x"] = merged.pop("_x").replace(-1.0, np.nan)
    merged["n"] = merged["n"].fillna(0).astype(int)
    best = BEST_COLUMNS if has_best(view) else []
    if best:
        counts = ["best_n", "evaluated_during_training"]
        merged[counts] = merged[counts].fillna(0).astype(int)
    merged.loc[merged["n"].eq(0) & merged["reason"].isna(), "reason"] = "no runs"
    merged["reason"] = merged["reason"].fillna("")
    merged.loc[merged["paper_status"].isna(), "paper_status"] = "not in paper"
    merged["paper_provenance"] = merged["paper_provenance"].fillna("")
    if view.paper_elsewhere:
        fill_from_elsewhere(merged, paper, *view.paper_elsewhere)
    return merged[[*CELL_COLUMNS, *best]].sort_values(["task", "algo", "x", "variant"], ignore_index=True)


def fill_from_elsewhere(merged: pd.DataFrame, paper: pd.DataFrame, figure: str, variant: str) -> None:
    """For cells the view's own paper figure lacks, at x = the paper's c for the task: the paper's number for that
    task and algo in ``figure`` (its ``variant``), with the provenance saying where it came from."""
    from dmh.tasks import resolve_task

    rows = paper[(paper["figure"] == figure) & (paper["variant"] == variant) & (paper["status"] == "ok")]
    for i in merged.index[merged["paper_status"] == "not in paper"]:
        task, algo, x = merged.at[i, "task"], merged.at[i, "algo"], merged.at[i, "x"]
        hit = rows[(rows["task"] == task) & (rows["algo"] == algo)]
        if hit.empty or x != resolve_task(task).c:
            continue
        found = hit.iloc[0]
        merged.loc[i, ["paper", "paper_err", "paper_low", "paper_high", "paper_status", "paper_provenance"]] = [
            found["value"], found["err"], found["err_low"], found["err_high"], "ok",
            f"{found['provenance']}: {figure} at the paper's c = {int(x)}"]


def scale(export: Export, view: View) -> dict[str, str]:
    """The scale this view's numbers came from: presets, gradient updates, seeds, tasks, evaluation size."""
    runs = view_runs(export, view)
    runs = runs[runs["outcome"].isin(Outcome.RESULTS)]
    if runs.empty:
        return {"runs": "0"}

    def values(column: str, zero: str = "0") -> str:
        return ", ".join(zero if str(v) in ("0", "0.0") else str(v)
                         for v in sorted(runs[column].dropna().unique(), key=str))

    seeds = runs.groupby(["task", "algo", "c", "valuable_subgoals", "z", "z_dim"], dropna=False)["seed"].nunique()
    return {"runs": str(len(runs)), "presets": values("preset"), "gradient updates": values("steps"),
            "seeds per cell": f"{seeds.min()}–{seeds.max()}" if seeds.min() != seeds.max() else str(seeds.min()),
            "tasks": values("task"), "test tasks per run": values("eval_tasks", "all held-out"),
            "online episodes": values("eval_episodes", "the paper's (Grid World and T-maze 20, D4RL 10)")}
