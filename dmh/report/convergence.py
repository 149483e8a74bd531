"""Has a run's training curve flattened? The plateau rule, written once, and read by the claims and the report.

A run's training curve is its evaluations against the gradient update (``training.csv`` of the report cache,
:mod:`dmh.report.export`): the return of the last online episode, mean over the held-out tasks, and that mean's
standard error over the tasks (one evaluation's own noise). The rule:

    **converged**: the last :data:`PLATEAU_EVALS` evaluations (the final one included) lie within
    :data:`PLATEAU_Z` × √2 × their mean standard error of each other.

√2 × s.e. is the standard deviation of the difference of two independent evaluations of one policy, so the rule says
that no two of the last three evaluations differ by more than an evaluation's own noise explains at about 95 %
(z = 2): more training did not move the return measurably. A run with fewer evaluations cannot be judged (None), and
neither can one whose evaluations have no spread to compare with (a single test task). The rule looks at returns, not
losses: what the paper's claims compare is the return, and a loss can go on falling while the return stays.
"""

from __future__ import annotations

import math

import pandas as pd

PLATEAU_EVALS = 3  # evaluations at the end of a run the rule compares (the final one included)
PLATEAU_Z = 2.0  # how many standard deviations of a difference of two evaluations count as "within noise"


def plateau(curve: pd.DataFrame) -> bool | None:
    """The rule on one run's training curve (``step``, ``last_return``, ``last_return_se``); None: not judgeable."""
    points = curve.dropna(subset=["last_return", "last_return_se"]).sort_values("step").tail(PLATEAU_EVALS)
    if len(points) < PLATEAU_EVALS:
        return None
    noise = float(points["last_return_se"].mean())
    if not noise > 0:
        return None
    spread = float(points["last_return"].max() - points["last_return"].min())
    return spread <= PLATEAU_Z * math.sqrt(2.0) * noise


def converged_runs(training: pd.DataFrame) -> dict[str, bool | None]:
    """run id → the plateau rule's answer, for every run with a training curve."""
    return {run_id: plateau(curve) for run_id, curve in training.groupby("run_id")}


def describe(flags: list[bool | None]) -> str:
    """How many of a side's runs converged: ``3/5``; ``2/4 (1 not judged)`` where some cannot be judged; ``—`` with
    no runs."""
    if not flags:
        return "—"
    judged = [bool(f) for f in flags if f is not None and f == f]  # None or NaN (a missing run): not judged
    text = f"{sum(judged)}/{len(judged)}" if judged else "not judged"
    unjudged = len(flags) - len(judged)
    return text + (f" ({unjudged} not judged)" if unjudged and judged else "")
