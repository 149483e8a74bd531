"""The paper's claims about the experiments this project runs, as data (:data:`CLAIMS`), each judged from the runs:
``OUT/tables/claims.{md,tex,csv}``.

A claim compares two sides of one view (:mod:`dmh.report.compare`) on one task: e.g. DM-H against AD (Transformer) at
the last online episode of Fig. 2 on Darkroom, or DM-H with against without valuable sub-goals in Fig. 4a. Each seed
gives one difference (the runs of both sides share their seeds in every sweep, so the difference is paired); a side
that spans several x values (c ∈ {10, 15, 20}) is their mean for that seed. A claim against a level (T-maze: DM-H's
return is the maximum) compares one side with that level instead. The verdict reads the Student-t 95 % interval of
the mean difference over seeds (:func:`dmh.report.stats.t_interval`):

- **reproduced**: the whole interval lies on the paper's side of zero;
- **not reproduced**: the whole interval lies on the other side, the opposite of the paper holds here;
- **inconclusive**: the interval holds zero, or it rests on fewer than :data:`MIN_SEEDS` seeds;
- **no runs**: a side has no completed run here.

Final evaluations decide (the paper's protocol); the best evaluation during training, where the view has one, is
shown beside them with its own interval and does not decide. Every verdict carries its budget (the gradient updates
of the runs compared) and, for each side, how many of its runs had converged by the plateau rule
(:mod:`dmh.report.convergence`): a side that was still learning when training stopped makes a "not reproduced" a
statement about that budget only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmh.report import convergence
from dmh.report.compare import VIEWS, has_best, memory_length, run_points
from dmh.report.export import Export
from dmh.report.stats import CONFIDENCE, t_interval
from dmh.report.tables import ALGO_LABELS, Table, task_label
from dmh.vocabulary import GRID_WORLD, Outcome

LAST = "last"  # a side's x: each run's last point (the last online episode of a curve)
NAME = "claims"  # OUT/tables/claims.{md,tex,csv}
TITLE = "The paper's claims at this project's scale: each a paired difference over seeds"
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NO_RUNS = "reproduced", "not reproduced", "inconclusive", "no runs"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NO_RUNS)
# A verdict needs this many seeds: two give a t interval on one degree of freedom, and this project's returns are
# discrete (a mean over 20-21 held-out tasks of whole-number returns), so two seeds can differ by exactly the same
# amount and give an interval of zero width (seen at seed 1 of the campaign: +0.55 [+0.55, +0.55])
MIN_SEEDS = 3
TMAZE_MAX = 0.9  # "DM-H reaches the maximum return": its T-maze return is above the lowest bar of Fig. 3a (0.91)


@dataclass(frozen=True)
class Side:
    """One side of a claim: an algo's runs of the claim's view and task, at some x values and one variant."""

    algo: str  # dmh, ad-transformer, ...
    x: tuple[float, ...] | str = ()  # x values averaged per seed; () every x of the task; LAST each run's last x
    variant: str | None = None  # the view's variant (with_subgoals, c=10, ...); None any

    def label(self, view: str) -> str:
        parts = [ALGO_LABELS.get(self.algo, self.algo)]
        if self.variant:
            parts.append(self.variant.replace("_", " "))
        if self.x == LAST:
            parts.append("last episode")
        elif self.x:
            axis = {"episode": "episode", "c": "c", "memory_length": "length"}.get(VIEWS[view].x_of or "", "x")
            parts.append(f"{axis} {', '.join(f'{v:g}' for v in self.x)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Claim:
    """What the paper says one side does better than the other (or than a level), in one view, on some tasks."""

    view: str  # the view (dmh.report.compare.VIEWS) both sides are read from
    says: str  # the paper's claim, in a few words
    better: Side  # the side the paper says is higher (lower, where lower_is_better)
    worse: Side | None  # the side it is compared with; None: ``level``
    tasks: tuple[str, ...] | None = None  # the tasks it is judged on; None every task the view has runs of
    level: float = 0.0  # with ``worse`` None, the level ``better`` must exceed
    lower_is_better: bool = False  # a time: the paper says ``better`` takes less


SHORT, LONG = GRID_WORLD[:3], GRID_WORLD[3:]
CLAIMS: tuple[Claim, ...] = (
    Claim("fig2", "DM-H improves in context: its last episode beats its first", Side("dmh", LAST),
          Side("dmh", (1.0,)), GRID_WORLD),
    Claim("fig2", "DM-H beats AD (Transformer) at the last episode", Side("dmh", LAST), Side("ad-transformer", LAST),
          GRID_WORLD),
    Claim("fig2", "DM-H beats AD (Mamba) at the last episode", Side("dmh", LAST), Side("ad-mamba", LAST),
          GRID_WORLD),
    Claim("fig4a", "valuable sub-goals help DM-H", Side("dmh", variant="with_subgoals"),
          Side("dmh", variant="without_subgoals"), (*SHORT[1:], *LONG[1:])),
    Claim("fig4b", "DM-H does better at 10 ≤ c ≤ 20 than at c = 1", Side("dmh", (10.0, 15.0, 20.0)),
          Side("dmh", (1.0,))),
    Claim("fig3a", f"DM-H reaches the maximum T-maze return (above {TMAZE_MAX})", Side("dmh"), None,
          level=TMAZE_MAX),
    Claim("fig3b", "DM-H tests online faster than DT", Side("dmh"), Side("dt"), lower_is_better=True),
    Claim("fig5", "DM-H trains offline faster than DM", Side("dmh"), Side("dm"), lower_is_better=True),
)
COLUMNS = ["view", "claim", "task", "better", "worse", "n", "better_mean", "worse_mean", "difference", "low", "high",
           "verdict", "best_difference", "best_low", "best_high", "paper_better", "paper_worse", "updates",
           "better_converged", "worse_converged"]


def at(rows: pd.DataFrame, side: Side, last_of: str | None) -> pd.DataFrame:
    """The rows of a side's variant and x values; LAST: the largest x per ``last_of`` group (None: over all rows)."""
    if side.variant is not None:
        rows = rows[rows["variant"] == side.variant]
    if side.x == LAST:
        largest = rows.groupby(last_of)["x"].transform("max") if last_of else rows["x"].max()
        return rows[rows["x"] == largest]
    return rows[rows["x"].isin(side.x)] if side.x else rows


def side_rows(points: pd.DataFrame, side: Side) -> pd.DataFrame:
    """The completed runs' points of a side."""
    return at(points[(points["algo"] == side.algo) & (points["outcome"] == Outcome.COMPLETED)], side, "run_id")


def per_seed(points: pd.DataFrame, side: Side, column: str) -> pd.Series:
    """Seed → the side's ``column`` (value or best) averaged over its x values, completed runs only."""
    return side_rows(points, side).dropna(subset=[column]).groupby("seed")[column].mean()


def budget(run_ids: set[str], runs: pd.DataFrame) -> str:
    """The gradient updates of the compared runs: ``3000``, or ``1000, 3000`` where they differ; ``—`` without runs."""
    steps = sorted(runs.loc[runs["run_id"].isin(run_ids), "steps"].dropna().astype(int).unique())
    return ", ".join(str(s) for s in steps) or "—"


def differences(better: pd.Series, worse: pd.Series | float, lower_is_better: bool) -> np.ndarray:
    """Per seed, how far the paper's side is ahead: better − worse (worse − better for a time), over the seeds both
    sides have; ``worse`` a number: a level."""
    if isinstance(worse, pd.Series):
        better, worse = better.align(worse, join="inner")
    gap = worse - better if lower_is_better else better - worse
    return np.asarray(gap, dtype=np.float64)


def verdict(gaps: np.ndarray) -> tuple[float, float, float, str]:
    """Mean difference, its t-interval, and the verdict (module docstring) from per-seed differences."""
    if len(gaps) == 0:
        return math.nan, math.nan, math.nan, NO_RUNS
    low, high = t_interval(gaps)
    if len(gaps) < MIN_SEEDS:
        return float(gaps.mean()), low, high, INCONCLUSIVE
    return float(gaps.mean()), low, high, REPRODUCED if low > 0 else NOT_REPRODUCED if high < 0 else INCONCLUSIVE


def paper_value(cells: pd.DataFrame, task: str, side: Side) -> float:
    """The paper's number for a side (mean over its x values), NaN where the paper has none."""
    rows = at(cells[(cells["task"] == task) & (cells["algo"] == side.algo) & (cells["paper_status"] == "ok")], side,
              None)
    return float(rows["paper"].mean()) if len(rows) else math.nan


def judge(claim: Claim, task: str, points: pd.DataFrame, cells: pd.DataFrame, runs: pd.DataFrame | None = None,
          converged: dict[str, bool | None] | None = None) -> dict[str, object]:
    """One row of COLUMNS: the claim on one task (``runs`` and ``converged``: the export's runs and the plateau
    rule's answer per run id, for the budget and convergence columns)."""
    points = points[points["task"] == task]
    converged = converged or {}
    ids = {side: set(side_rows(points, side)["run_id"]) for side in (claim.better, claim.worse) if side}
    flags = {side: convergence.describe([converged.get(r) for r in sorted(i)]) for side, i in ids.items()}

    def sides(column: str) -> tuple[pd.Series, pd.Series | float]:
        ahead = per_seed(points, claim.better, column)
        return ahead, per_seed(points, claim.worse, column) if claim.worse else claim.level

    ahead, behind = sides("value")
    gaps = differences(ahead, behind, claim.lower_is_better)
    mean, low, high, said = verdict(gaps)
    if claim.worse:
        ahead, behind = ahead.align(behind, join="inner")
        worse_mean = float(behind.mean()) if len(behind) else math.nan
    else:
        worse_mean = claim.level
    best = (math.nan,) * 3
    if has_best(VIEWS[claim.view]):
        best = verdict(differences(*sides("best"), claim.lower_is_better))[:3]
    return {"view": claim.view, "claim": claim.says, "task": task, "better": claim.better.label(claim.view),
            "worse": claim.worse.label(claim.view) if claim.worse else f"{claim.level:g}", "n": len(gaps),
            "better_mean": float(ahead.mean()) if len(ahead) else math.nan, "worse_mean": worse_mean,
            "difference": mean, "low": low, "high": high, "verdict": said,
            **dict(zip(("best_difference", "best_low", "best_high"), best, strict=True)),
            "paper_better": paper_value(cells, task, claim.better),
            "paper_worse": paper_value(cells, task, claim.worse) if claim.worse else math.nan,
            "updates": budget(set().union(*ids.values()), runs) if runs is not None else "—",
            "better_converged": flags[claim.better],
            "worse_converged": flags[claim.worse] if claim.worse else "—"}


def claim_tasks(claim: Claim, cells: pd.DataFrame) -> list[str]:
    """The claim's tasks: its own, else every task of its view where this project or the paper has the better side
    (T-maze by memory length)."""
    if claim.tasks is not None:
        return list(claim.tasks)
    tasks = cells.loc[cells["algo"] == claim.better.algo, "task"].unique()
    return sorted(tasks, key=lambda t: (0.0 if math.isnan(memory_length(t)) else memory_length(t), t))


def signed(mean: float, low: float, high: float) -> str:
    """A difference and its interval: ``+0.85 [+0.20, +1.50]``; "—" without one."""
    if math.isnan(mean):
        return "—"
    return f"{mean:+.2f}" + ("" if math.isnan(low) else f" [{low:+.2f}, {high:+.2f}]")


def claims_table(export: Export, view_cells: dict[str, pd.DataFrame]) -> Table:
    """Every claim of :data:`CLAIMS` judged on each of its tasks, as a :class:`dmh.report.tables.Table`."""
    rows, claims = [], []
    converged = convergence.converged_runs(export.training)
    for claim in CLAIMS:
        points, cells = run_points(export, VIEWS[claim.view]), view_cells[claim.view]
        tasks = claim_tasks(claim, cells)
        rows += [judge(claim, task, points, cells, export.runs, converged) for task in tasks]
        claims += [claim] * len(tasks)
    numbers = pd.DataFrame(rows, columns=COLUMNS)

    def num(value: float) -> str:
        return "—" if math.isnan(value) else f"{value:.2f}"

    text = pd.DataFrame({
        "figure": numbers["view"],
        "the paper says": numbers["claim"],
        "task": numbers["task"].map(task_label),
        "compared": numbers["better"] + " vs " + numbers["worse"],
        "seeds": numbers["n"],
        "ours (final)": [f"{num(a)} vs {num(b)}" for a, b in zip(numbers["better_mean"], numbers["worse_mean"],
                                                                  strict=True)],
        f"difference [{CONFIDENCE:.0%} t-interval]": [signed(*v) for v in
                                                      zip(numbers["difference"], numbers["low"], numbers["high"],
                                                          strict=True)],
        "verdict": numbers["verdict"],
        "updates": numbers["updates"],
        "converged (runs)": [f"{b} vs {w}" for b, w in zip(numbers["better_converged"], numbers["worse_converged"],
                                                          strict=True)],
        "best during training: difference": [signed(*v) for v in zip(
            numbers["best_difference"], numbers["best_low"], numbers["best_high"], strict=True)],
        "paper": [f"{num(a)} vs {num(b) if w else level}" for a, b, w, level in
                  zip(numbers["paper_better"], numbers["paper_worse"], [c.worse is not None for c in claims],
                      numbers["worse"], strict=True)],
    })
    caption = (f"{TITLE}. Difference: the paper's side minus the other (the other minus the paper's side for a "
               f"time), mean over seeds with a Student-t {CONFIDENCE:.0%} interval; reproduced: the interval is above "
               "0; not reproduced: below 0 (the opposite holds); inconclusive: it holds 0 or rests on fewer than "
               f"{MIN_SEEDS} seeds. Final evaluations decide, as in the paper; the best during training is shown "
               "beside them. Updates: the gradient updates of the runs compared (a verdict holds at that budget); "
               f"converged: how many runs of each side had flattened by the plateau rule (the last "
               f"{convergence.PLATEAU_EVALS} evaluations within {convergence.PLATEAU_Z:g} x sqrt(2) x their "
               "standard error of each other), of those with enough evaluations to judge")
    return Table(NAME, caption, text, numbers)


MOVED = "claims_moved"  # OUT/tables/claims_moved.{md,tex,csv}
MOVED_TITLE = "Which verdicts moved: each claim judged on an earlier report's runs and on this one's"
KEY = ["view", "claim", "task"]


def moved_table(before: Table, after: Table, before_source: str) -> Table:
    """The claims judged on both reports' runs side by side, one row per claim and task that either has runs of:
    seeds, difference and verdict before and after, and whether the verdict moved (only a claim both reports have
    runs of can move; the others say which report has them)."""
    fields = ["n", "difference", "low", "high", "verdict", "updates"]
    both = pd.merge(before.numbers[KEY + fields], after.numbers[KEY + fields], on=KEY, how="outer",
                    suffixes=("_before", "_after"))
    for when in ("before", "after"):  # a claim one report does not judge at all: no runs there
        both[f"n_{when}"] = both[f"n_{when}"].fillna(0).astype(int)
        both[f"verdict_{when}"] = both[f"verdict_{when}"].fillna(NO_RUNS)
    both = both[(both["n_before"] > 0) | (both["n_after"] > 0)].reset_index(drop=True)
    judged_both = (both["n_before"] > 0) & (both["n_after"] > 0)  # a claim one report has no runs of did not move
    both["moved"] = judged_both & (both["verdict_before"] != both["verdict_after"])
    order = {(c.view, c.says): i for i, c in enumerate(CLAIMS)}  # the claims' own order, as in claims.md
    rank = [order.get(key, len(order)) for key in zip(both["view"], both["claim"], strict=True)]
    both = both.iloc[pd.Series(rank).argsort(kind="stable")].reset_index(drop=True)

    def side(when: str) -> list[str]:
        return [f"{verdict} ({n}: {signed(d, lo, hi)})" for verdict, n, d, lo, hi in
                zip(both[f"verdict_{when}"], both[f"n_{when}"], both[f"difference_{when}"], both[f"low_{when}"],
                    both[f"high_{when}"], strict=True)]

    text = pd.DataFrame({
        "figure": both["view"],
        "the paper says": both["claim"],
        "task": both["task"].map(task_label),
        "before: verdict (seeds: difference)": side("before"),
        "after: verdict (seeds: difference)": side("after"),
        "moved": ["**moved**" if m else "" if j else "runs before only" if nb else "runs after only"
                  for m, j, nb in zip(both["moved"], judged_both, both["n_before"] > 0, strict=True)],
    })
    caption = (f"{MOVED_TITLE}. Before: {before_source}; after: this report. Each verdict as in "
               f"{NAME}.md (the difference: the paper's side minus the other, mean over seeds with its Student-t "
               f"{CONFIDENCE:.0%} interval); a claim either report has runs of, whether or not its verdict moved")
    return Table(MOVED, caption, text, both)
