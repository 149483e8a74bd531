"""This project's z study (``sweeps/z_study.py``) as one table, ``OUT/tables/z_study.{md,tex,csv}``: DM-H's return
by how its sub-goal z is drawn (``step``: a sample per step, as the authors' code; ``block``: one sample per block,
as the paper's Eq. 6; ``mean``: z's mean, in training and online), z's size ``z_dim`` and valuable sub-goals on or
off, per task. The paper has no such study, so the table has no paper column.

One row per task × z × z_dim × valuable sub-goals that has runs: the final last-episode return (mean ± s.e. over
seeds, and a Student-t 95 % interval of the mean, since with 3 seeds a bootstrap interval cannot be wider than their
range), the best evaluation during training (``dmh.report.export.BEST``), the first online episode's return of the
final evaluation, and the in-context gain, each run's final minus its first episode with its t-interval over seeds:
the cell learns in context where that interval is above 0 (the issue's rule picks the paper-faithful z "wherever it
learns").
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dmh.report import claims
from dmh.report.compare import View, best_note, mark_short, missing_reason, view_runs
from dmh.report.export import Export
from dmh.report.stats import CONFIDENCE, summarize, t_interval
from dmh.report.tables import Table, fmt, task_label
from dmh.vocabulary import Outcome

SWEEP = "z_study"  # the sweep's name (sweeps/z_study.py), its runs' ``sweep`` tag
TITLE = "z study: DM-H's sub-goal z drawn per step, per block or as its mean, by z_dim and valuable sub-goals"
VIEW = View(SWEEP, TITLE, (SWEEP,), "last_return")  # the runs it reads, for compare.view_runs and compare.scale
Z_ORDER = ("step", "block", "mean")  # the authors' code, the paper, deterministic
KEYS = ["task", "z", "z_dim", "valuable_subgoals"]
COLUMNS = [*KEYS, "n", "mean", "se", "t_low", "t_high", "best_mean", "best_se", "evaluated_during_training",
           "first_mean", "first_se", "first_n", "gain", "gain_low", "gain_high", "learns", "reason"]
# Whether a cell learns in context, from its runs' final − first-episode returns (dmh.report.claims.verdict): the
# issue's rule for choosing the cpu preset's z is "the paper-faithful setting wherever it learns".
LEARNS = {claims.REPRODUCED: "yes", claims.NOT_REPRODUCED: "no, worse", claims.INCONCLUSIVE: "inconclusive",
          claims.NO_RUNS: "—"}
CAPTION = (f"{TITLE} (this project's study, not in the paper). Final: the last online episode's return after "
           f"training, mean ± s.e. over seeds (seeds) and a Student-t {CONFIDENCE:.0%} interval of the mean; best "
           "during training: each run's max over its evaluations during training and the final one; first episode: "
           "the first online episode of the final evaluation; in context: each run's final minus its first episode, "
           "mean over seeds and t-interval, and whether it learns (yes: the interval is above 0, at "
           f"{claims.MIN_SEEDS} seeds or more)")


def z_cells(export: Export) -> pd.DataFrame:
    """The study's numbers (COLUMNS), one row per cell with runs, completed or not, in the table's order."""
    runs = view_runs(export, VIEW)
    first = export.curves[export.curves["episode"] == 1].set_index("run_id")["return"]
    rows = []
    for key, group in runs.groupby(KEYS, dropna=False, sort=False):
        done = group[group["outcome"] == Outcome.COMPLETED]
        final_values = done["last_return"].dropna().to_numpy(dtype=float)
        final, best = summarize(final_values), summarize(done["best_return"].to_numpy(dtype=float))
        firsts = done["run_id"].map(first).to_numpy(dtype=float)
        start = summarize(firsts)
        low, high = t_interval(final_values)
        gaps = done["last_return"].to_numpy(dtype=float) - firsts
        gain, gain_low, gain_high, said = claims.verdict(gaps[~np.isnan(gaps)])
        rows.append({**dict(zip(KEYS, key, strict=True)), "n": final.n, "mean": final.mean, "se": final.se,
                     "t_low": low, "t_high": high, "best_mean": best.mean, "best_se": best.se,
                     "evaluated_during_training": int((done["evals_during_training"].fillna(0) > 0).sum()),
                     "first_mean": start.mean, "first_se": start.se, "first_n": start.n, "gain": gain,
                     "gain_low": gain_low, "gain_high": gain_high, "learns": LEARNS[said],
                     "reason": "" if final.n else missing_reason(group["outcome"]), "seeds": done["seed"].nunique()})
    cells = pd.DataFrame(rows, columns=[*COLUMNS, "seeds"])
    mark_short(cells, cells["seeds"])
    return in_order(cells.drop(columns="seeds"))


def subgoals_on(value: object) -> bool:
    return value in (True, "True", 1)


def in_order(cells: pd.DataFrame) -> pd.DataFrame:
    """Task, then valuable sub-goals on before off, then z as Z_ORDER (others after), then z_dim ascending."""
    keys = cells.assign(_off=~cells["valuable_subgoals"].map(subgoals_on),
                        _z=cells["z"].map(lambda z: Z_ORDER.index(z) if z in Z_ORDER else len(Z_ORDER)))
    return keys.sort_values(["task", "_off", "_z", "z", "z_dim"], na_position="last", ignore_index=True).drop(
        columns=["_off", "_z"])


def z_table(export: Export) -> Table:
    """The z study as a :class:`dmh.report.tables.Table` (the CSV keeps :func:`z_cells` unformatted); without any
    z_study runs, one line that says so."""
    cells = z_cells(export)
    if cells.empty:
        text = pd.DataFrame({"z study": [f"no runs of sweep {SWEEP} in this export (python sweeps/{SWEEP}.py)"]})
        return Table(SWEEP, CAPTION, text, cells)

    def interval(low: float, high: float) -> str:
        return "—" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"

    def seeds(n: int) -> int | None:
        return int(n) or None

    text = pd.DataFrame({
        "task": cells["task"].map(task_label),
        "z": cells["z"].fillna("—"),
        "z_dim": cells["z_dim"].map(lambda d: "—" if pd.isna(d) else str(int(d))),
        "valuable sub-goals": cells["valuable_subgoals"].map(lambda v: "on" if subgoals_on(v) else "off"),
        "first episode (seeds)": [fmt(m, s, seeds(n)) for m, s, n in
                                  zip(cells["first_mean"], cells["first_se"], cells["first_n"], strict=True)],
        "final: mean ± s.e. (seeds)": [fmt(m, s, seeds(n), r) for m, s, n, r in
                                       zip(cells["mean"], cells["se"], cells["n"], cells["reason"], strict=True)],
        f"final: {CONFIDENCE:.0%} t-interval": [interval(lo, hi) for lo, hi in
                                                zip(cells["t_low"], cells["t_high"], strict=True)],
        f"in context: final − first [{CONFIDENCE:.0%} t]": [
            claims.signed(*v) for v in zip(cells["gain"], cells["gain_low"], cells["gain_high"], strict=True)],
        "learns in context": cells["learns"],
        "best during training: mean ± s.e.": [fmt(m, s) for m, s in
                                              zip(cells["best_mean"], cells["best_se"], strict=True)],
        "note": [best_note(n, k) for n, k in zip(cells["n"], cells["evaluated_during_training"], strict=True)],
    })
    return Table(SWEEP, CAPTION, text, cells)
