"""dmh.report.claims: each of the paper's claims judged from runs as a paired difference over seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dmh.report import claims
from dmh.report.compare import VIEWS, cells
from dmh.report.export import CURVE_COLUMNS, RUN_COLUMNS, Export
from dmh.report.paper import load_paper_numbers
from dmh.report.stats import t_interval
from dmh.vocabulary import Outcome


def run(sweep: str, algo: str, task: str, seed: int, **values) -> dict:
    row = dict.fromkeys(RUN_COLUMNS, math.nan)
    row.update(run_id=f"{sweep}-{algo}-{task}-{seed}-{values.get('c', 0)}-{values.get('valuable_subgoals', 0)}",
               experiment=sweep, sweep=sweep, algo=algo, task=task, seed=seed, outcome=Outcome.COMPLETED,
               valuable_subgoals=True, c=5, evals_during_training=0)
    row.update(values)
    return row


def judged(runs: list[dict], curves: list[tuple[str, int, float]] = ()) -> pd.DataFrame:
    return claims_of(runs, curves).numbers


def row(numbers: pd.DataFrame, view: str, task: str, claim: str | None = None) -> pd.Series:
    hit = numbers[(numbers["view"] == view) & (numbers["task"] == task)]
    if claim is not None:
        hit = hit[hit["claim"].str.contains(claim, regex=False)]
    assert len(hit) == 1, hit
    return hit.iloc[0]


@pytest.mark.parametrize(("gaps", "expected"), [
    ([0.5, 0.6, 0.7, 0.4, 0.5], claims.REPRODUCED),
    ([-0.5, -0.6, -0.7, -0.4, -0.5], claims.NOT_REPRODUCED),
    ([0.5, -0.6, 0.7, -0.4, 0.1], claims.INCONCLUSIVE),
    ([3.0], claims.INCONCLUSIVE),
    ([0.55, 0.55], claims.INCONCLUSIVE),  # two seeds agreeing exactly: a zero-width interval is no evidence
    ([0.5, 0.7], claims.INCONCLUSIVE),
    ([0.5, 0.6, 0.7], claims.REPRODUCED),
    ([], claims.NO_RUNS),
])
def test_the_verdict_reads_which_side_of_zero_the_t_interval_of_the_mean_difference_lies(gaps, expected):
    mean, low, high, said = claims.verdict(np.asarray(gaps, dtype=float))
    assert said == expected
    if len(gaps) > 1:
        assert (low, high) == pytest.approx(t_interval(gaps))
        assert mean == pytest.approx(np.mean(gaps))


def test_with_against_without_subgoals_is_paired_by_seed_and_a_seed_on_one_side_only_is_left_out():
    # seeds differ a lot from each other, and with sub-goals is always 0.1 ahead of the same seed without:
    # the paired difference is exactly 0.1 at every seed, so the claim reproduces
    base = [0.0, 2.0, 5.0, 1.0]
    runs = [run("subgoal_ablation", "dmh", "darkroom-hard", s, valuable_subgoals=True, last_return=b + 0.1,
                best_return=b + 0.1) for s, b in enumerate(base)]
    runs += [run("subgoal_ablation", "dmh", "darkroom-hard", s, valuable_subgoals=False, last_return=b,
                 best_return=b) for s, b in enumerate(base[:3])]  # seed 3 has no run without sub-goals
    got = row(judged(runs), "fig4a", "darkroom-hard")
    assert got["n"] == 3
    assert got["difference"] == pytest.approx(0.1)
    assert got["verdict"] == claims.REPRODUCED
    assert got["better_mean"] == pytest.approx(np.mean(base[:3]) + 0.1)
    assert got["worse_mean"] == pytest.approx(np.mean(base[:3]))
    assert got["paper_better"] == pytest.approx(0.95) and got["paper_worse"] == pytest.approx(0.89)


def test_a_claim_whose_opposite_holds_at_every_seed_is_not_reproduced_and_unfinished_runs_do_not_count():
    runs = [run("subgoal_ablation", "dmh", "key-to-door", s, valuable_subgoals=v, last_return=r)
            for s in range(4) for v, r in ((True, 0.2 + 0.01 * s), (False, 1.0 + 0.02 * s))]
    runs.append(run("subgoal_ablation", "dmh", "key-to-door", 9, valuable_subgoals=True, last_return=50.0,
                    outcome=Outcome.STOPPED))
    runs.append(run("subgoal_ablation", "dmh", "key-to-door", 9, valuable_subgoals=False, last_return=0.0))
    got = row(judged(runs), "fig4a", "key-to-door")
    assert got["n"] == 4
    assert got["high"] < 0
    assert got["verdict"] == claims.NOT_REPRODUCED


def test_a_side_spanning_several_c_averages_them_per_seed_before_the_difference():
    values = {1: [1.0, 2.0], 10: [2.0, 3.0], 15: [3.0, 5.0], 20: [4.0, 4.0]}
    runs = [run("c_sensitivity", "dmh", "darkroom", s, c=c, last_return=v[s], best_return=v[s])
            for c, v in values.items() for s in range(2)]
    got = row(judged(runs), "fig4b", "darkroom")
    per_seed = [np.mean([values[c][s] for c in (10, 15, 20)]) - values[1][s] for s in range(2)]
    assert got["difference"] == pytest.approx(np.mean(per_seed))
    assert (got["low"], got["high"]) == pytest.approx(t_interval(per_seed))
    assert got["best_difference"] == pytest.approx(np.mean(per_seed))
    assert got["better"] == "DM-H, c 10, 15, 20" and got["worse"] == "DM-H, c 1"


def test_fig2_compares_each_runs_last_online_episode_and_in_context_improvement_against_its_first():
    runs, curves = [], []
    for s in range(3):
        for algo, curve in (("dmh", [1.0, 4.0, 6.0 + s]), ("ad-transformer", [1.0, 2.0, 3.0 + 2 * s])):
            runs.append(run("grid_world", algo, "darkroom", s, last_return=curve[-1]))
            curves += [(runs[-1]["run_id"], e, v) for e, v in enumerate(curve, start=1)]
    numbers = judged(runs, curves)
    against_ad = row(numbers, "fig2", "darkroom", "AD (Transformer)")
    assert against_ad["n"] == 3
    assert against_ad["difference"] == pytest.approx(np.mean([3.0 - s for s in range(3)]))
    assert against_ad["paper_better"] == pytest.approx(14.6) and against_ad["paper_worse"] == pytest.approx(13.2)
    improves = row(numbers, "fig2", "darkroom", "in context")
    assert improves["difference"] == pytest.approx(np.mean([5.0 + s for s in range(3)]))
    assert improves["verdict"] == claims.REPRODUCED
    assert row(numbers, "fig2", "darkroom-hard", "in context")["verdict"] == claims.NO_RUNS


def test_timing_claims_count_the_baseline_minus_dmh_and_t_maze_return_is_judged_against_the_maximum():
    runs = []
    for s in range(3):
        runs.append(run("tmaze", "dmh", "tmaze-50", s, last_return=1.0, online_min=1.0 + 0.1 * s))
        runs.append(run("tmaze", "dt", "tmaze-50", s, last_return=1.0, online_min=3.0 + 0.2 * s))
        runs.append(run("tmaze", "dmh", "tmaze-200", s, last_return=0.5 + 0.01 * s))
    numbers = judged(runs)
    faster = row(numbers, "fig3b", "tmaze-50")
    assert faster["difference"] == pytest.approx(np.mean([2.0 + 0.1 * s for s in range(3)]))
    assert faster["verdict"] == claims.REPRODUCED
    assert row(numbers, "fig3a", "tmaze-50")["verdict"] == claims.REPRODUCED  # 1.0 every seed, above 0.9
    assert row(numbers, "fig3a", "tmaze-200")["verdict"] == claims.NOT_REPRODUCED
    assert row(numbers, "fig3a", "tmaze-1000")["verdict"] == claims.NO_RUNS  # the paper's lengths stay listed


def test_the_long_horizon_claims_are_judged_on_the_large_tasks_beside_the_papers_numbers():
    runs, curves = [], []
    for s in range(3):
        for algo, last in (("dmh", 9.0 + s), ("ad-transformer", 1.0), ("ad-mamba", 2.0 + 0.1 * s)):
            runs.append(run("grid_world", algo, "large-darkroom", s, last_return=last))
            curves += [(runs[-1]["run_id"], e, v) for e, v in enumerate([0.5, last], start=1)]
    runs += [run("c_sensitivity", "dmh", "large-darkroom-hard", s, c=c, last_return=0.5 + (c >= 10) * (0.19 + 0.01 * s))
             for c in (1, 5, 10, 15, 20) for s in range(3)]
    numbers = judged(runs, curves)
    for ad, paper in (("AD (Transformer)", 0.90), ("AD (Mamba)", None)):
        got = row(numbers, "fig2", "large-darkroom", ad)
        assert (got["n"], got["verdict"]) == (3, claims.REPRODUCED)
        assert got["paper_better"] == pytest.approx(15.10)
        if paper is not None:
            assert got["paper_worse"] == pytest.approx(paper)
    c_study = row(numbers, "fig4b", "large-darkroom-hard")
    assert (c_study["n"], c_study["verdict"]) == (3, claims.REPRODUCED)
    assert c_study["difference"] == pytest.approx(0.2)  # the mean over seeds of 0.19, 0.20, 0.21


def claims_of(runs: list[dict], curves: list[tuple[str, int, float]] = ()) -> claims.Table:
    export = Export(pd.DataFrame(runs, columns=RUN_COLUMNS), pd.DataFrame(list(curves), columns=CURVE_COLUMNS), {})
    paper = load_paper_numbers()
    return claims.claims_table(export, {name: cells(export, paper, view) for name, view in VIEWS.items()})


def fig2_runs(tasks: tuple[str, ...], dmh_ahead: bool) -> tuple[list[dict], list[tuple[str, int, float]]]:
    """Three seeds of DM-H and AD (Transformer) on ``tasks``, DM-H's last episode 2 above or below AD's."""
    runs, curves = [], []
    for task in tasks:
        for s in range(3):
            for algo, last in (("dmh", 5.0 + s + (2 if dmh_ahead else -2)), ("ad-transformer", 5.0 + s)):
                runs.append(run("grid_world", algo, task, s, last_return=last))
                curves += [(runs[-1]["run_id"], 1, 1.0), (runs[-1]["run_id"], 2, last)]
    return runs, curves


def test_a_verdict_moves_only_where_both_reports_judge_the_claim_and_each_other_row_says_which_has_runs():
    before = claims_of(*fig2_runs(("darkroom", "darkroom-hard"), dmh_ahead=True))
    after = claims_of(*fig2_runs(("darkroom", "key-to-door"), dmh_ahead=False))
    moved = claims.moved_table(before, after, "the earlier campaign")
    numbers, text = moved.numbers, moved.text

    def at(task: str, says: str) -> int:
        hit = numbers.index[(numbers["task"] == task) & numbers["claim"].str.contains(says, regex=False)]
        assert len(hit) == 1
        return int(hit[0])

    against_ad = at("darkroom", "AD (Transformer)")
    assert numbers.at[against_ad, "verdict_before"] == claims.REPRODUCED
    assert numbers.at[against_ad, "verdict_after"] == claims.NOT_REPRODUCED
    assert numbers.at[against_ad, "moved"] and text.at[against_ad, "moved"] == "**moved**"
    assert numbers.at[against_ad, "difference_before"] == pytest.approx(2.0)
    assert numbers.at[against_ad, "difference_after"] == pytest.approx(-2.0)
    in_context = at("darkroom", "in context")  # DM-H rises from 1 in both: reproduced twice, not moved
    assert not numbers.at[in_context, "moved"] and text.at[in_context, "moved"] == ""
    only_before, only_after = at("darkroom-hard", "AD (Transformer)"), at("key-to-door", "AD (Transformer)")
    assert numbers.at[only_before, "verdict_after"] == claims.NO_RUNS and not numbers.at[only_before, "moved"]
    assert text.at[only_before, "moved"] == "runs before only" and text.at[only_after, "moved"] == "runs after only"
    assert set(numbers["task"]) == {"darkroom", "darkroom-hard", "key-to-door"}  # no row that neither has runs of
    assert "the earlier campaign" in moved.caption
