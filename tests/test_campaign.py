"""The results campaign (sweeps/campaign.py): the z study first, then every figure seed by seed; a finished sweep is
skipped, an interrupted one resumed, a failing one stops the campaign; bad input fails in one line before any work."""

import dataclasses
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dmh.sweep import EXIT_BAD_ARGUMENTS, build_parser
from dmh.tracking import open_client
from dmh.vocabulary import Tag
from sweeps import campaign

# one smoke sweep of two trials, at two seeds: the campaign machinery at test cost
SMOKE = (campaign.Stage("c", "c_sensitivity.py", ("--preset", "smoke", "--c", "1", "5", "--ray-address", "local",
                                                   "--set", "steps=4"), 2, "Fig. 4b"),)


def trial_runs(storage: Path) -> list:
    client = open_client(f"sqlite:///{storage / 'mlflow.db'}")  # under the store's lock: a sweep may be creating it
    experiment = client.get_experiment_by_name("c_sensitivity")
    runs = [] if experiment is None else client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if Tag.SWEEP_PARENT not in r.data.tags]


def test_the_z_study_runs_first_then_every_figure_seed_by_seed():
    stages = (campaign.Z_STUDY, *campaign.STAGES)
    names = [step.name for step in campaign.steps(stages, first=("z_study",))]
    assert names[:3] == ["z_study_cpu_s0", "z_study_cpu_s1", "z_study_cpu_s2"]
    figures = [s.key for s in campaign.STAGES]
    assert names[3:3 + len(figures)] == [f"{key}_cpu_s0" for key in figures]
    assert names[-len(figures):] == [f"{key}_cpu_s4" for key in figures]
    assert len(names) == len(set(names)) == 3 + 5 * len(figures)


def test_the_short_horizon_campaign_runs_fig2s_short_row_fig4a_and_tmaze_seed_by_seed():
    names = [step.name for step in campaign.steps(campaign.STAGES, campaign.FIRST)]
    assert names[:3] == ["grid_world_cpu_s0", "subgoal_cpu_s0", "tmaze_cpu_s0"]
    assert len(names) == 15


def test_the_long_horizon_campaign_runs_fig2s_long_row_and_the_large_c_sweep_seed_by_seed():
    long = campaign.CAMPAIGNS["long-horizon"]
    names = [step.name for step in campaign.steps(long.stages, long.first)]
    assert names[:4] == ["grid_world_long_cpu_s0", "c_large_cpu_s0", "grid_world_long_cpu_s1", "c_large_cpu_s1"]
    assert len(names) == 10  # three seeds of every cell come before seeds 4 and 5


def test_every_campaign_sweep_accepts_its_arguments(sweep_workdir, capsys):
    """Each stage's script parses the campaign's arguments (a typo would otherwise surface hours into a campaign)."""
    for stage in {s for c in campaign.CAMPAIGNS.values() for s in c.stages}:
        module = campaign.load_script(stage.script)
        parser = build_parser(module.SWEEP)
        args = parser.parse_args(campaign.Step(stage, 0).argv(str(sweep_workdir), "sqlite:///x.db", resume=False)[2:])
        assert args.first_seed == 0 and args.seeds == 1 and args.name == f"{stage.key}_cpu_s0"


@pytest.mark.slow
def test_a_campaign_run_again_skips_finished_sweeps_and_resumes_an_interrupted_one(sweep_workdir, capsys):
    storage = sweep_workdir / "campaign"
    assert campaign.run(SMOKE, str(storage), None) == 0
    first = trial_runs(storage)
    assert sorted((r.data.params["seed"], r.data.params["c"]) for r in first) == [
        ("0", "1"), ("0", "5"), ("1", "1"), ("1", "5")]
    assert {r.info.status for r in first} == {"FINISHED"}
    assert (storage / "c_cpu_s0.log").stat().st_size > 0

    capsys.readouterr()
    assert campaign.run(SMOKE, str(storage), None) == 0  # nothing left to do
    out = capsys.readouterr().out
    assert "c_cpu_s0 (Fig. 4b): done" in out and "c_cpu_s1 (Fig. 4b): done" in out
    assert {r.info.run_id for r in trial_runs(storage)} == {r.info.run_id for r in first}

    # seed 1's sweep as an interrupted one leaves it: its parent run KILLED, its Tune state kept
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("c_sensitivity")
    parent = client.search_runs([experiment.experiment_id],
                                filter_string=f"tags.{Tag.SWEEP_RUN} = '{storage / 'c_cpu_s1'}'")
    parents = [r for r in parent if r.data.tags.get(Tag.SWEEP_PARENT) == "true"]
    assert len(parents) == 1
    client.set_terminated(parents[0].info.run_id, status="KILLED")
    assert campaign.run(SMOKE, str(storage), None, dry_run=True) == 0
    assert "c_cpu_s1 (Fig. 4b): resume" in capsys.readouterr().out
    assert campaign.run(SMOKE, str(storage), None) == 0
    out = capsys.readouterr().out
    assert "c_cpu_s0 (Fig. 4b): done" in out and "c_cpu_s1 (Fig. 4b): resume; log" in out
    assert client.get_run(parents[0].info.run_id).info.status == "FINISHED"  # the same parent, reopened and ended
    assert {r.info.run_id for r in trial_runs(storage)} == {r.info.run_id for r in first}  # no trial ran again


@pytest.mark.slow
def test_a_sweep_that_fails_stops_the_campaign_before_the_next(sweep_workdir, capsys):
    bad = (campaign.Stage("c", "c_sensitivity.py", ("--preset", "smoke", "--c", "0"), 2, "Fig. 4b"),)
    assert campaign.run(bad, str(sweep_workdir / "campaign"), None) == EXIT_BAD_ARGUMENTS
    err = capsys.readouterr().err
    assert "c_cpu_s0 ended with exit code 2" in err
    assert not (sweep_workdir / "campaign" / "c_cpu_s1.log").exists()
    assert "every c must be a positive integer" in (sweep_workdir / "campaign" / "c_cpu_s0.log").read_text()


@pytest.mark.parametrize(("argv", "message"), [
    (["--only", "fig9"], "--only: unknown stage(s) fig9; valid: grid_world, subgoal, tmaze"),
    (["--storage", "{file}/under"], "--storage {file}/under cannot be written"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "http://127.0.0.1:{port}"),
])
def test_bad_campaign_arguments_fail_in_one_line_before_any_sweep(sweep_workdir, capsys, argv, message):
    from servers_testkit import free_port

    regular = sweep_workdir / "a-file"
    regular.write_text("x")
    port = free_port()
    argv = [a.format(file=regular, port=port) for a in argv]
    assert campaign.main(argv) == EXIT_BAD_ARGUMENTS
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("campaign: error: ")
    assert message.format(file=regular, port=port) in err
    assert not list(sweep_workdir.glob("**/*.log"))


def test_two_campaigns_on_one_storage_are_refused(sweep_workdir, capsys):
    import fcntl

    storage = sweep_workdir / "campaign"
    storage.mkdir()
    with (storage / "campaign.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert campaign.main(["--storage", str(storage)]) == EXIT_BAD_ARGUMENTS
    assert "another campaign is running on" in capsys.readouterr().err


@pytest.mark.slow
def test_results_keep_a_campaign_across_sittings_whose_stores_are_lost(sweep_workdir, capsys):
    """A machine whose ignored folders do not survive: a sweep finished into --results is done in any later sitting,
    with a new store; one that finished in the store before --results was passed is merged on the next run."""
    import json

    from dmh.report.export import load_export

    first, second = sweep_workdir / "sitting1", sweep_workdir / "sitting2"
    results = sweep_workdir / "results"
    one_seed = (dataclasses.replace(SMOKE[0], seeds=1),)
    assert campaign.run(one_seed, str(first), None) == 0  # seed 0 finished, and nothing kept yet
    assert not results.exists()
    assert campaign.run(SMOKE, str(first), None, results=results) == 0
    out = capsys.readouterr().out
    assert f"c_cpu_s0 (Fig. 4b): done; its runs merged into {results}" in out
    assert "c_cpu_s1 (Fig. 4b): start; log" in out
    assert json.loads((results / "data" / campaign.MANIFEST).read_text()) == {"finished": ["c_cpu_s0", "c_cpu_s1"]}
    kept = load_export(results / "data")
    assert sorted(zip(kept.runs["seed"], kept.runs["c"], kept.runs["outcome"], strict=True)) == [
        (0, 1, "completed"), (0, 5, "completed"), (1, 1, "completed"), (1, 5, "completed")]
    assert set(kept.curves["run_id"]) == set(kept.runs["run_id"])
    assert (results / "index.md").is_file() and (results / "tables" / "claims.csv").is_file()  # redrawn there

    assert campaign.run(SMOKE, str(second), None, results=results) == 0  # a new store: nothing runs again
    out = capsys.readouterr().out
    assert f"c_cpu_s0 (Fig. 4b): done (kept in {results})" in out
    assert f"c_cpu_s1 (Fig. 4b): done (kept in {results})" in out
    assert trial_runs(second) == [] and not list(second.glob("*.log"))

    beside = campaign.Results(results, verdicts_before=results)  # a rerun set beside a report: here, the same runs
    beside.keep(campaign.Step(SMOKE[0], 0), f"sqlite:///{first / 'mlflow.db'}", finished=True)
    import pandas as pd

    moved = pd.read_csv(results / "tables" / "claims_moved.csv")  # redrawn with it (the smoke c sweep judges no claim)
    judged = pd.read_csv(results / "tables" / "claims.csv")
    assert len(moved) == int((judged["n"] > 0).sum()) and not moved["moved"].any()


def test_a_broken_campaign_manifest_fails_in_one_line_before_any_sweep(sweep_workdir, capsys):
    (sweep_workdir / "results" / "data").mkdir(parents=True)
    (sweep_workdir / "results" / "data" / campaign.MANIFEST).write_text("[1, 2]")
    assert campaign.main(["--storage", str(sweep_workdir / "s"), "--results", str(sweep_workdir / "results")]) == \
        EXIT_BAD_ARGUMENTS
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "campaign.json is not a campaign manifest" in err
    assert not list(sweep_workdir.glob("**/*.log"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


@pytest.mark.slow
def test_sigint_to_a_background_driver_stops_the_sweep_gracefully_and_the_campaign_resumes_it(sweep_workdir):
    import os
    import signal
    import subprocess
    import time

    storage = sweep_workdir / "campaign"
    # SIGINT ignored from the start, as in a driver started with `nohup ... &`: the driver must still hear it
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); from sweeps import campaign; "
            "stage = campaign.Stage('c', 'c_sensitivity.py', ('--preset', 'smoke', '--c', '1', '5', '10', "
            "'--ray-address', 'local', '--max-concurrent', '1', '--set', 'steps=30', '--set', 'checkpoint_every=3'), "
            f"1, 'Fig. 4b'); sys.exit(campaign.run((stage,), {str(storage)!r}, None))")
    env = {**os.environ, "PYTHONPATH": str(campaign.HERE.parent)}
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=sweep_workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and driver.poll() is None:
            if any(r.info.status == "FINISHED" for r in trial_runs(storage)):
                break
            time.sleep(0.5)
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        driver.send_signal(signal.SIGINT)  # the driver alone: the sweep is in a session of its own
        err = driver.communicate(timeout=120)[1]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == campaign.EXIT_INCOMPLETE, err.decode()[-3000:]
    assert "c_cpu_s0 ended with exit code 3" in err.decode()
    runs = trial_runs(storage)
    assert 1 <= sum(r.info.status == "FINISHED" for r in runs) < 3 and "RUNNING" not in {r.info.status for r in runs}
    stage = campaign.Stage("c", "c_sensitivity.py", ("--preset", "smoke", "--c", "1", "5", "10", "--ray-address",
                                                      "local", "--set", "steps=30", "--set", "checkpoint_every=3"),
                           1, "Fig. 4b")
    assert campaign.state(campaign.Step(stage, 0), str(storage), f"sqlite:///{storage / 'mlflow.db'}") == "resume"
    finished_before = {r.info.run_id for r in runs if r.info.status == "FINISHED"}
    assert campaign.run((stage,), str(storage), None) == 0
    after = trial_runs(storage)
    assert sorted(r.data.params["c"] for r in after) == ["1", "10", "5"] and {r.info.status for r in after} == {
        "FINISHED"}
    assert finished_before <= {r.info.run_id for r in after}  # what had finished was not run again


def test_the_short_horizon_rerun_sets_its_verdicts_beside_the_committed_campaign_it_reruns(tmp_path, capsys):
    from dmh.report.make_all import cache_folder

    before = campaign.CAMPAIGNS["short-horizon"].verdicts_before
    assert cache_folder(campaign.ROOT / before).is_dir()  # committed, so every clone has it
    with pytest.raises(campaign.DmhError, match="the campaign's earlier report"):
        campaign.Results(tmp_path / "results", verdicts_before=tmp_path / "nothing")
