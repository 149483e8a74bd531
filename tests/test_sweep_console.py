"""What a sweep prints while it runs: a progress table whose columns are the settings the grid varies, under short
names (``c``, not ``trial/config/c``), with each trial named after its cell (``dmh-darkroom-hard-c=5-s0``), also
after ``--resume``; and no warning about Tune's experiment snapshots, which the checkpoint cadence would repeat."""

import importlib
import os
from types import SimpleNamespace

import pytest

from dmh.sweep import plan as plan_module
from dmh.sweep.tuner import TUNE_CONSOLE_ENV, TrialNames, grid_columns, short_names
from sweeps import common


def cell(algo="dmh", task="darkroom", seed=0, **settings):
    """A dmh config dict, as a plan's trial holds it, reduced to what the columns read."""
    model = settings.pop("model", {"d_model": 16})
    return {"algo": algo, "task": task, "seed": seed, "lr": 1e-3, **settings, "model": model}


def test_the_columns_are_the_settings_the_grid_varies_in_the_order_a_cell_is_read():
    configs = [cell(algo, task, seed, c=c, model={"z_dim": z})
               for algo in ("dmh", "dm") for task in ("darkroom", "key-to-door") for seed in (0, 1)
               for c in (1, 5) for z in (2, 8)]
    assert list(grid_columns(configs).items()) == [("algo", "algo"), ("task", "task"), ("c", "c"),
                                                   ("model.z_dim", "z_dim"), ("seed", "seed")]


def test_algo_task_and_seed_are_no_columns_when_every_cell_shares_them():
    assert grid_columns([cell(c=1), cell(c=5)]) == {"c": "c"}


def test_a_setting_that_only_follows_the_algo_or_the_task_is_no_column():
    # AD has no sub-goal z and each task its own horizon: they differ between cells, yet the grid sweeps neither
    horizon = {"darkroom": 20, "tmaze-20": 22}
    configs = [cell(algo, task, horizon=horizon[task], model={"z_dim": 8 if algo == "dmh" else None})
               for algo in ("dmh", "ad-mamba") for task in horizon]
    assert grid_columns(configs) == {"algo": "algo", "task": "task"}


def test_settings_whose_short_names_clash_keep_their_full_names():
    configs = [cell(dropout=d, model={"dropout": 0.1 - d}) for d in (0.0, 0.1)]
    assert grid_columns(configs) == {"dropout": "dropout", "model.dropout": "model.dropout"}


def test_a_setting_that_copies_another_in_every_cell_is_no_second_column():
    configs = [cell(c=c, model={"c": c, "z_train": z, "z_eval": z}) for c in (1, 5) for z in ("sample", "mean")]
    assert grid_columns(configs) == {"c": "c", "model.z_train": "z_train"}


def test_the_cpu_grid_world_sweep_shows_algo_and_task_and_the_z_study_its_z_settings(workdir, monkeypatch):
    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)

    def columns(name, *argv):
        script = importlib.import_module(f"sweeps.{name}")
        args = common.build_parser(script.SWEEP).parse_args(["--preset", "cpu", *argv])
        return list(grid_columns([t["config"] for t in common.plan(script.SWEEP, args).trials]).values())

    assert columns("grid_world") == ["algo", "task"]
    assert columns("c_sensitivity") == ["c", "train_blocks"]
    # z_eval goes with z_train in every cell of the z study
    assert columns("z_study", "--seeds", "2") == ["task", "valuable_subgoals", "z_dim", "z_train", "z_draw", "seed"]


def test_a_trial_is_named_after_its_algo_task_swept_values_and_seed():
    names = TrialNames(tuple(grid_columns([cell(c=1, valuable_subgoals=False), cell(c=5, valuable_subgoals=True)])
                             .items()))
    trial = SimpleNamespace(config={"trial": {"config": cell(task="darkroom-hard", c=5, valuable_subgoals=True)}})
    assert names(trial) == "dmh-darkroom-hard-c=5-valuable_subgoals=True-s0"


def test_a_search_samples_settings_beside_its_resolved_base_and_shows_them_under_short_names(monkeypatch):
    from sweeps import tune as search

    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)  # no Ray: nothing is run here
    args = common.build_parser(search.SWEEP).parse_args(["--preset", "smoke", "--algo", "dmh", "--task", "darkroom"])
    base = common.plan(search.SWEEP, args).trials[0]
    trial = search.search_space(args, base)["trial"]
    assert trial["config"] == base["config"]  # the resolved run is left as it is: the trial resolves the sampled c
    assert list(trial["searched"]) == ["batch_size", "lr", "model.d_model", "c"]
    assert short_names(list(trial["searched"])) == {"batch_size": "batch_size", "lr": "lr",
                                                    "model.d_model": "d_model", "c": "c"}


def progress_tables(console):
    """Every progress table Tune printed (psql format), as rows of {column: cell}."""
    tables, header = [], None
    for line in console.splitlines():
        if line.startswith("| Trial name"):
            header, rows = [c.strip() for c in line.strip("|").split("|")], []
            tables.append(rows)
        elif header and line.startswith("| "):
            rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)))
        elif not line.startswith("|"):
            header = None
    return tables


@pytest.mark.slow
def test_the_c_sweeps_console_names_each_trials_c_even_after_resume_and_has_no_snapshot_warning(ray_session,
                                                                                                 sweep_workdir,
                                                                                                 monkeypatch, capfd):
    for variable in TUNE_CONSOLE_ENV:
        monkeypatch.delenv(variable, raising=False)  # what the console shows must not hang on the caller's setting
    script = importlib.import_module("sweeps.c_sensitivity")
    assert common.main(script.SWEEP, ["--preset", "smoke"]) == 0
    console = capfd.readouterr()
    assert common.main(script.SWEEP, ["--preset", "smoke", "--resume"]) == 0  # all finished: only the table
    resumed = capfd.readouterr()

    for out in (console.out, resumed.out):
        last = progress_tables(out)[-1]
        assert sorted((row["Trial name"], row["c"], row["status"]) for row in last) == [
            ("dmh-darkroom-hard-c=1-s0", "1", "TERMINATED"), ("dmh-darkroom-hard-c=5-s0", "5", "TERMINATED")]
    assert all(variable not in os.environ for variable in TUNE_CONSOLE_ENV)  # restored after
    assert "snapshotting" not in console.out + console.err
