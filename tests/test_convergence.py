"""dmh.report.convergence: the plateau rule, and the budget and convergence every claim's verdict carries."""

from __future__ import annotations

import pandas as pd
import pytest
from test_claims import row, run

from dmh.report import claims, convergence
from dmh.report.compare import VIEWS, cells
from dmh.report.export import (
    CURVE_COLUMNS,
    RUN_COLUMNS,
    TRAINING_COLUMNS,
    Export,
    load_export,
    merge_exports,
    save_export,
)
from dmh.report.paper import load_paper_numbers


def curve(returns: list[float], se: float = 0.5, every: int = 500) -> pd.DataFrame:
    return pd.DataFrame({"step": [every * (i + 1) for i in range(len(returns))], "last_return": returns,
                         "last_return_se": se})


@pytest.mark.parametrize(("returns", "expected"), [
    ([1.0, 4.0, 6.0, 6.5, 6.2], True),  # the last three within 2 x sqrt(2) x 0.5 = 1.41 of each other
    ([1.0, 2.0, 3.5, 5.0, 6.5], False),  # still rising by 1.5 an evaluation
    ([6.0, 8.0, 6.0, 6.0, 7.5], False),  # the final evaluation 1.5 above its two predecessors
    ([5.0, 6.0], None),  # too few evaluations to judge
])
def test_a_run_has_converged_when_its_last_three_evaluations_lie_within_an_evaluations_noise(returns, expected):
    assert convergence.plateau(curve(returns)) is expected


def test_a_run_whose_evaluations_have_no_spread_cannot_be_judged():
    assert convergence.plateau(curve([1.0, 1.0, 1.0], se=0.0)) is None


def test_the_rule_reads_the_evaluations_in_update_order():
    shuffled = curve([1.0, 2.0, 6.0, 6.1, 6.2]).sample(frac=1.0, random_state=0)
    assert convergence.plateau(shuffled) is True


def test_a_side_says_how_many_of_its_judged_runs_converged():
    assert convergence.describe([True, False, True, None]) == "2/3 (1 not judged)"
    assert convergence.describe([None, None]) == "not judged"
    assert convergence.describe([]) == "—"


def test_every_claim_carries_its_budget_and_how_many_runs_of_each_side_converged():
    runs, training, curves = [], [], []
    for seed in range(3):
        dmh = run("grid_world", "dmh", "darkroom", seed, last_return=3.0 + seed, steps=3000)
        ad = run("grid_world", "ad-mamba", "darkroom", seed, last_return=9.0, steps=3000)
        runs += [dmh, ad]
        rising = curve([1.0, 2.0, 3.0 + seed]).assign(run_id=dmh["run_id"])  # still learning
        flat = curve([9.0, 9.1, 9.0]).assign(run_id=ad["run_id"])
        training += [rising, flat]
        curves += [(r["run_id"], episode, r["last_return"]) for r in (dmh, ad) for episode in (1, 20)]
    frame = pd.concat(training).reindex(columns=TRAINING_COLUMNS)
    export = Export(pd.DataFrame(runs, columns=RUN_COLUMNS), pd.DataFrame(curves, columns=CURVE_COLUMNS), {}, frame)
    paper = load_paper_numbers()
    numbers = claims.claims_table(export, {n: cells(export, paper, v) for n, v in VIEWS.items()}).numbers
    judged = row(numbers, "fig2", "darkroom", "AD (Mamba)")
    assert judged["updates"] == "3000"
    assert (judged["better_converged"], judged["worse_converged"]) == ("0/3", "3/3")


def test_training_curves_survive_a_cache_round_trip_and_a_merge_keeps_the_latest_point(tmp_path):
    runs = pd.DataFrame([run("grid_world", "dmh", "darkroom", 0, last_return=1.0, trial_key="k", end_time=1)],
                        columns=RUN_COLUMNS)
    run_id = runs["run_id"][0]
    old = Export(runs, pd.DataFrame(columns=CURVE_COLUMNS), {"exported_at": "a"},
                 curve([1.0, 2.0]).assign(run_id=run_id).reindex(columns=TRAINING_COLUMNS))
    new = Export(runs, pd.DataFrame(columns=CURVE_COLUMNS), {"exported_at": "b"},
                 curve([1.5, 2.0, 3.0]).assign(run_id=run_id).reindex(columns=TRAINING_COLUMNS))
    save_export(merge_exports(old, new), tmp_path)
    back = load_export(tmp_path).training
    assert back["step"].tolist() == [500, 1000, 1500] and back["last_return"].tolist() == [1.5, 2.0, 3.0]


def test_a_cache_exported_before_training_curves_existed_still_loads(tmp_path):
    runs = pd.DataFrame([run("grid_world", "dmh", "darkroom", 0, last_return=1.0)], columns=RUN_COLUMNS)
    save_export(Export(runs, pd.DataFrame(columns=CURVE_COLUMNS), {}), tmp_path)
    (tmp_path / "training.csv").unlink()
    assert load_export(tmp_path).training.empty
