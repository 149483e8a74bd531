"""Ray Tune sweeps: each script's smoke grid lands one FINISHED MLflow run per trial with the swept values as params;
a SIGKILLed trial worker and an interrupted-then-resumed driver end with the same runs and no duplicates; an
out-of-memory trial is recorded, not lost; bad arguments fail before Ray starts; Ray listens only on 127.0.0.1."""

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from servers_testkit import descendants, free_port, listening_sockets

from dmh.vocabulary import Tag
from sweeps import common

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}  # the second is how a dual-stack socket shows an IPv4 loopback bind


@pytest.fixture
def workdir(sweep_workdir):
    return sweep_workdir


def mlflow_runs(workdir, experiment):
    """Active (not deleted) trial runs of an experiment in the test's store (a sweep's parent run only groups them)."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id], max_results=1000)
    return [r for r in runs if Tag.SWEEP_PARENT not in r.data.tags]


def parent_runs(workdir, experiment):
    """The sweep parent runs of an experiment."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(Tag.SWEEP_PARENT) == "true"]


def assert_ray_listens_only_on_loopback():
    sockets = listening_sockets(descendants(os.getpid()))
    assert any(name.startswith(("gcs_server", "raylet")) for name, _ in sockets), sockets
    assert {ip for _, ip in sockets} <= LOOPBACK, sockets


# Each script's smoke grid: argv extras, the run param that is swept, and its expected values (one run each).
SMOKE = {
    "c_sensitivity": ([], ("c",), {("1",), ("5",)}),
    "subgoal_ablation": ([], ("valuable_subgoals",), {("True",), ("False",)}),
    "grid_world": ([], ("algo",), {("dmh",), ("ad-mamba",), ("ad-transformer",)}),
    "tmaze": ([], ("algo", "task"), {("dmh", "tmaze-20"), ("dm", "tmaze-20"), ("dt", "tmaze-20")}),
    "d4rl": ([], ("algo",), {("dmh",), ("ad-mamba",), ("ad-transformer",), ("dt",)}),
}


# The report view each sweep feeds, and the run metric its cells summarise (one seed: the cell's mean is the value).
REPORT_VIEW = {"c_sensitivity": ("fig4b", "eval/last_return"), "subgoal_ablation": ("fig4a", "eval/last_return"),
               "grid_world": ("fig2", "eval/last_return"), "tmaze": ("fig3a", "eval/last_return"),
               "d4rl": ("table4_online", "time/online_min")}


def assert_the_report_holds_the_runs(workdir, name, runs):
    """End to end: the sweep's runs → `make_all` → the view's cells carry exactly those runs' values."""
    import pandas as pd

    from dmh.report import make_all
    from dmh.report.compare import VIEWS

    assert make_all.main(["--out", str(workdir / "reports")]) == 0
    view, metric = REPORT_VIEW[name]
    cells = pd.read_csv(workdir / "reports" / "comparison" / f"{view}.csv")
    ours = cells[cells["n"] > 0]
    if view == "fig2":  # the curve's last episode is the run's last-episode return
        ours = ours.loc[ours.groupby(["task", "algo"])["x"].idxmax()]
    runs = [r for r in runs if r.data.params["algo"] in VIEWS[view].algos]
    assert (ours["n"] == 1).all()
    assert sorted(ours["mean"]) == pytest.approx(sorted(r.data.metrics[metric] for r in runs))
    assert (workdir / "reports" / "index.md").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMOKE))
def test_smoke_grid_leaves_one_finished_run_per_trial_with_the_swept_values_and_feeds_the_report(ray_session, workdir,
                                                                                                 name):
    extra, keys, expected = SMOKE[name]
    script = importlib.import_module(f"sweeps.{name}")
    assert common.main(script.SWEEP, ["--preset", "smoke", *extra]) == 0
    runs = mlflow_runs(workdir, name)
    assert sorted(tuple(r.data.params[k] for k in keys) for r in runs) == sorted(expected)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.tags["sweep"] == name and r.data.tags["status_detail"] == "completed" for r in runs)
    assert len({r.data.tags["trial_id"] for r in runs}) == len(runs)
    assert all({"eval/last_return", "time/online_min", "time/offline_h_per_10k_updates"} <= set(r.data.metrics)
               for r in runs)
    if name == "tmaze":
        assert all(r.data.metrics["oom"] == 0 for r in runs)
    assert_ray_listens_only_on_loopback()
    assert_the_report_holds_the_runs(workdir, name, runs)


@pytest.mark.slow
def test_the_z_study_smoke_grid_lands_its_z_cells_in_the_reports_z_table(ray_session, workdir):
    import pandas as pd

    from dmh.report import make_all

    script = importlib.import_module("sweeps.z_study")
    assert common.main(script.SWEEP, ["--preset", "smoke"]) == 0
    runs = mlflow_runs(workdir, "z_study")
    assert sorted((r.data.params["model.z_draw"], r.data.params["model.z_train"]) for r in runs) == [
        ("block", "mean"), ("step", "sample")]
    assert make_all.main(["--out", str(workdir / "reports")]) == 0
    table = pd.read_csv(workdir / "reports" / "tables" / "z_study.csv")
    assert sorted(table["z"]) == ["mean", "step"] and set(table["z_dim"]) == {2} and (table["n"] == 1).all()
    finals = {r.data.params["model.z_train"]: r.data.metrics["eval/last_return"] for r in runs}
    assert sorted(table["mean"]) == pytest.approx(sorted(finals.values()))


@pytest.mark.slow
def test_a_sweeps_trials_sit_under_one_parent_run_that_ends_finished(ray_session, workdir):
    script = importlib.import_module("sweeps.c_sensitivity")
    assert common.main(script.SWEEP, ["--preset", "smoke"]) == 0
    (parent,) = parent_runs(workdir, "c_sensitivity")
    trials = mlflow_runs(workdir, "c_sensitivity")
    assert parent.info.status == "FINISHED" and not parent.data.metrics
    assert parent.data.tags[Tag.SWEEP_RUN] == trials[0].data.tags[Tag.SWEEP_RUN]
    assert len(trials) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    assert all(r.data.tags[Tag.RAY_NODE] == ray_session.get_runtime_context().get_node_id() for r in trials)


@pytest.mark.slow
def test_optuna_search_with_asha_leaves_one_run_per_sample_none_running(ray_session, workdir):
    from sweeps import tune

    assert tune.main(["--algo", "dmh", "--task", "darkroom", "--preset", "smoke", "--num-samples", "3"]) == 0
    runs = mlflow_runs(workdir, "tune")
    assert len(runs) == 3
    # ASHA may stop a trailing trial at its first checkpoint: that run ends KILLED, marked as stopped
    assert {(r.info.status, r.data.tags["status_detail"]) for r in runs} <= {("FINISHED", "completed"),
                                                                              ("KILLED", "stopped")}
    assert any(r.info.status == "FINISHED" for r in runs)
    assert len({(r.data.params["lr"], r.data.params["c"], r.data.params["model.d_model"]) for r in runs}) > 1


@pytest.mark.slow
def test_a_sigkilled_trial_worker_is_retried_from_its_checkpoint_in_the_same_run(ray_session, workdir):
    script = importlib.import_module("sweeps.c_sensitivity")
    argv = ["--preset", "smoke", "--set", "steps=40", "--set", "checkpoint_every=3"]
    outcome = {}
    sweep = threading.Thread(target=lambda: outcome.update(rc=common.main(script.SWEEP, argv)))
    sweep.start()
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    victim = None
    deadline = time.monotonic() + 90
    while victim is None and time.monotonic() < deadline and sweep.is_alive():
        for run in mlflow_runs(workdir, "c_sensitivity"):
            losses = client.get_metric_history(run.info.run_id, "train/loss") if run.info.status == "RUNNING" else []
            if max((m.step for m in losses), default=0) >= 4:  # past the checkpoint at update 3
                victim = run
                os.kill(int(run.data.tags["worker_pid"]), signal.SIGKILL)
                break
        time.sleep(0.2)
    sweep.join(timeout=180)
    assert victim is not None, "no trial reached a checkpoint to kill"
    assert outcome["rc"] == 0
    runs = mlflow_runs(workdir, "c_sensitivity")
    assert sorted(r.data.params["c"] for r in runs) == ["1", "5"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    continued = next(r for r in runs if r.info.run_id == victim.info.run_id)  # the same run, not a new one
    assert continued.data.tags["worker_pid"] != victim.data.tags["worker_pid"]
    assert max(m.step for m in client.get_metric_history(continued.info.run_id, "train/loss")) == 40


@pytest.mark.slow
def test_the_same_script_joins_a_running_cluster_instead_of_starting_ray(workdir, tmp_path):
    """What `ray submit` gives a script on a head node: a cluster made by `ray start`. The unchanged script finds it,
    and its trials run in that cluster (their runs record its address)."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        from ray._private.services import find_bootstrap_address

        deadline = time.monotonic() + 90
        while find_bootstrap_address(None) != f"127.0.0.1:{port}" and time.monotonic() < deadline:
            assert head.poll() is None, head.stderr.read().decode()[-3000:]
            time.sleep(0.5)
        sweep = subprocess.run([sys.executable, str(REPO / "sweeps" / "c_sensitivity.py"), "--preset", "smoke"],
                               cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        assert f"Connecting to existing Ray cluster at address: 127.0.0.1:{port}" in sweep.stderr + sweep.stdout
        runs = mlflow_runs(workdir, "c_sensitivity")
        assert sorted(r.data.params["c"] for r in runs) == ["1", "5"]
        assert {r.data.tags["ray_cluster"] for r in runs} == {f"127.0.0.1:{port}"}
        sockets = listening_sockets(descendants(head.pid))
        assert sockets and {ip for _, ip in sockets} <= LOOPBACK, sockets
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the processes it started, then exits
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    # The stopped cluster's address stays recorded in Ray's temp folder: a script must not wait on it, but start Ray
    # itself (ray.init(address="auto") would retry the dead address for many minutes).
    probe = ("import sys, time; sys.path.insert(0, sys.argv[1]); from sweeps.common import connect_ray; import ray; "
             "start = time.monotonic(); connect_ray(None); print(ray.get_runtime_context().gcs_address, "
             "time.monotonic() - start); ray.shutdown()")
    fresh = subprocess.run([sys.executable, "-c", probe, str(REPO)], cwd=workdir, env=env, capture_output=True,
                           text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    address, seconds = fresh.stdout.split()[-2:]
    assert address != f"127.0.0.1:{port}" and float(seconds) < 60


@pytest.mark.slow
def test_an_interrupted_driver_resumes_to_the_same_runs_without_duplicates(ray_session, workdir):
    argv = [sys.executable, str(REPO / "sweeps" / "c_sensitivity.py"), "--preset", "smoke", "--c", "1", "5", "10",
            "--ray-address", "local", "--max-concurrent", "1", "--set", "steps=30", "--set", "checkpoint_every=3"]
    driver = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            if any(r.info.status == "FINISHED" for r in mlflow_runs(workdir, "c_sensitivity")):
                break
            time.sleep(0.2)
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        # the script's own Ray (started by connect_ray, not by this module's fixture) is on loopback only too
        sockets = listening_sockets(descendants(driver.pid))
        assert sockets and {ip for _, ip in sockets} <= LOOPBACK, sockets
        driver.send_signal(signal.SIGINT)
        stderr = driver.communicate(timeout=90)[1].decode()
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in [int(p.name) for p in Path("/proc").glob("[0-9]*") if _pgid(int(p.name)) == driver.pid]:
            os.kill(pid, signal.SIGKILL)  # Ray processes this driver started and left behind, if any
    assert driver.returncode == common.EXIT_INCOMPLETE, stderr[-3000:]
    interrupted = mlflow_runs(workdir, "c_sensitivity")
    assert 1 <= sum(r.info.status == "FINISHED" for r in interrupted) < 3
    assert "RUNNING" not in {r.info.status for r in interrupted}

    script = importlib.import_module("sweeps.c_sensitivity")
    assert common.main(script.SWEEP, [*argv[2:], "--resume"]) == 0
    runs = mlflow_runs(workdir, "c_sensitivity")
    assert sorted(r.data.params["c"] for r in runs) == ["1", "10", "5"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    finished_before = {r.info.run_id for r in interrupted if r.info.status == "FINISHED"}
    assert finished_before <= {r.info.run_id for r in runs}  # finished trials were not run again


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def test_an_out_of_memory_trial_is_recorded_as_such_and_reports_oom(workdir, monkeypatch):
    script = importlib.import_module("sweeps.tmaze")
    args = common.build_parser(script.SWEEP).parse_args(["--preset", "smoke", "--lengths", "20"])
    config = common.plan(script.SWEEP, args).trials[0]
    from dmh.training.train import Trainer

    real_step = Trainer.train_step

    def step_then_oom(self):
        if self.step == 4:  # after the checkpoint at update 3, as a long context would
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", step_then_oom)
    session = FakeSession()
    common.run_trial(config, session)
    assert session.reports[-1] == {"step": 3, "oom": 1}
    [run] = mlflow_runs(workdir, "tmaze")
    assert run.info.status == "FINISHED"
    assert run.data.tags["status_detail"] == "out_of_memory"
    assert run.data.metrics["oom"] == 1


class FakeSession(common.TrialSession):
    """The trial logic without Ray: a fixed trial id, no checkpoint to restore, reports collected."""

    trial_id = "fake_00000"
    cluster = "none"
    gpu_ids = None  # outside Ray: the trial leaves CUDA_VISIBLE_DEVICES alone (even where a test session runs Ray)

    def __init__(self):
        self.reports = []

    def restore(self, into):
        return None

    def report(self, metrics, checkpoint=None):
        self.reports.append(metrics)


class NoGpuSession(FakeSession):
    gpu_ids = ()  # what Ray reports inside a trial that reserved no GPU (an empty list)


class OneGpuSession(FakeSession):
    gpu_ids = ("1",)


@pytest.mark.parametrize(("session", "visible"), [(NoGpuSession, ""), (OneGpuSession, "0,1"), (FakeSession, "0,1")])
def test_a_trial_that_reserved_no_gpu_sees_none_before_it_trains(workdir, monkeypatch, session, visible):
    """Ray 2.60 leaves every GPU visible to a trial that reserved none: device=auto would train it on GPU 0, outside
    Ray's accounting. Ray sets CUDA_VISIBLE_DEVICES itself for a trial that reserved GPUs; outside Ray, nothing."""
    from dmh.sweep import trial as trial_module

    class SeenError(Exception):
        pass

    def train_run(cfg, **kwargs):
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        raise SeenError

    seen = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(trial_module, "train_run", train_run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU trial stops before training without CUDA
    script = importlib.import_module("sweeps.grid_world")
    config = common.plan(script.SWEEP, common.build_parser(script.SWEEP).parse_args(["--preset", "smoke"])).trials[0]
    with pytest.raises(SeenError):
        common.run_trial(config, session())
    assert seen == [visible]


def test_inside_ray_a_trial_knows_which_gpus_it_reserved(ray_session):
    @ray_session.remote(num_cpus=1, num_gpus=0)
    def reserved():
        return common.TrialSession().gpu_ids

    assert ray_session.get(reserved.remote()) == []


@pytest.mark.parametrize(("argv", "gpus"), [
    (["--preset", "paper"], 1.0),
    (["--preset", "paper", "--set", "device=cpu"], 0.0),
    (["--preset", "paper", "--gpus-per-trial", "0.25"], 0.25),
    (["--preset", "paper", "--gpus-per-trial", "0"], 0.0),
    (["--preset", "smoke"], 0.0),
    (["--preset", "cpu", "--gpus-per-trial", "1"], 1.0),
])
def test_paper_trials_reserve_a_gpu_unless_told_otherwise_or_pinned_to_the_cpu(workdir, monkeypatch, argv, gpus):
    from dmh.sweep import plan as plan_module

    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)  # no Ray import: nothing is run here
    script = importlib.import_module("sweeps.grid_world")
    args = common.build_parser(script.SWEEP).parse_args([*argv, "--seeds", "1"])
    assert common.plan(script.SWEEP, args).resources == {"cpu": 1.0, "gpu": gpus}


def test_first_seed_shifts_every_cells_seeds_so_a_campaign_can_add_seeds_later(workdir, monkeypatch):
    from dmh.sweep import plan as plan_module

    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)  # no Ray import: nothing is run here
    script = importlib.import_module("sweeps.c_sensitivity")
    args = common.build_parser(script.SWEEP).parse_args(["--preset", "smoke", "--first-seed", "3", "--seeds", "2"])
    seeds = sorted(t["config"]["seed"] for t in common.plan(script.SWEEP, args).trials)
    assert seeds == [3, 3, 4, 4]  # c = 1 and c = 5, each at seeds 3 and 4


def test_cells_selects_the_grids_cells_by_algo_task_or_swept_value_so_some_can_be_rerun(workdir, monkeypatch):
    from dmh.sweep import plan as plan_module

    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)
    grid = importlib.import_module("sweeps.grid_world")
    args = common.build_parser(grid.SWEEP).parse_args(
        ["--cells", "algo=ad-transformer", "--cells", "task=darkroom-hard,key-to-door"])
    picked = sorted((t["config"]["algo"], t["config"]["task"]) for t in common.plan(grid.SWEEP, args).trials)
    assert picked == [("ad-transformer", "darkroom-hard"), ("ad-transformer", "key-to-door")]
    c_sweep = importlib.import_module("sweeps.c_sensitivity")
    args = common.build_parser(c_sweep.SWEEP).parse_args(["--preset", "smoke", "--cells", "c=5"])
    assert [t["config"]["c"] for t in common.plan(c_sweep.SWEEP, args).trials] == [5]


def test_row_long_plans_fig_2s_long_horizon_row_on_the_large_tasks_at_any_preset(workdir, monkeypatch):
    from dmh.sweep import plan as plan_module

    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)
    grid = importlib.import_module("sweeps.grid_world")
    args = common.build_parser(grid.SWEEP).parse_args(["--preset", "cpu", "--row", "long"])
    configs = [t["config"] for t in common.plan(grid.SWEEP, args).trials]
    assert {(c["algo"], c["task"]) for c in configs} == {
        (algo, task) for algo in ("dmh", "ad-mamba", "ad-transformer")
        for task in ("large-darkroom", "large-darkroom-hard", "large-key-to-door")}
    assert all(c["n_context"] * {"large-key-to-door": 500}.get(c["task"], 200) == 2000 for c in configs)


def test_the_c_sweep_runs_on_the_tasks_given_where_c_is_at_most_a_tenth_of_an_episode(workdir, monkeypatch, capsys):
    from dmh.sweep import plan as plan_module

    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)
    script = importlib.import_module("sweeps.c_sensitivity")
    args = common.build_parser(script.SWEEP).parse_args(["--preset", "cpu", "--task", "large-darkroom-hard"])
    configs = [t["config"] for t in common.plan(script.SWEEP, args).trials]
    assert sorted((c["task"], c["c"]) for c in configs) == [("large-darkroom-hard", c) for c in (1, 5, 10, 15, 20)]
    assert all(c["c"] / 200 <= 0.1 for c in configs)
    monkeypatch.setattr(common, "connect_ray", _no_ray)
    assert common.main(script.SWEEP, ["--preset", "smoke", "--task", "large-darkroomm"]) == 2
    assert "unknown task 'large-darkroomm'" in capsys.readouterr().err


@pytest.mark.parametrize(("cells", "message"), [
    ("algo", "--cells algo: expected KEY=VALUE[,VALUE]"),
    ("colour=red", "this grid's cells have no 'colour'; they have algo, c, seed, task"),
    ("c=7", "no cell has c in {7}; this grid's c: 1, 5"),
])
def test_cells_that_name_nothing_in_the_grid_fail_before_ray_starts(workdir, monkeypatch, capsys, cells, message):
    monkeypatch.setattr(common, "connect_ray", _no_ray)
    script = importlib.import_module("sweeps.c_sensitivity")
    assert common.main(script.SWEEP, ["--preset", "smoke", "--cells", cells]) == 2
    assert message in capsys.readouterr().err


def test_the_cpu_c_sweep_decodes_the_same_number_of_steps_per_context_at_every_c(workdir, monkeypatch):
    from dmh.sweep import plan as plan_module

    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)
    script = importlib.import_module("sweeps.c_sensitivity")
    args = common.build_parser(script.SWEEP).parse_args(["--preset", "cpu"])
    configs = [t["config"] for t in common.plan(script.SWEEP, args).trials]
    decoded = {c["c"]: c["model"]["train_blocks"] * c["c"] for c in configs}
    assert sorted(decoded) == [1, 5, 10, 15, 20] and {c["task"] for c in configs} == {"darkroom"}
    assert all(50 <= steps < 50 + c for c, steps in decoded.items())  # ⌈50 / c⌉ blocks of c steps


def test_the_z_study_grid_crosses_draw_and_size_and_drops_sub_goals_at_the_largest_size(workdir, monkeypatch):
    from dmh.sweep import plan as plan_module

    monkeypatch.setattr(plan_module, "sweep_exists", lambda path: False)
    script = importlib.import_module("sweeps.z_study")
    args = common.build_parser(script.SWEEP).parse_args(["--preset", "cpu", "--seeds", "1"])
    configs = [t["config"] for t in common.plan(script.SWEEP, args).trials]
    cells = {(c["model"]["z_draw"] if c["model"]["z_train"] == "sample" else "mean", c["model"]["z_dim"],
              c["valuable_subgoals"]) for c in configs}
    assert len(configs) == 24 and len(cells) == 12
    assert {(z, d) for z, d, on in cells if on} == {(z, d) for z in ("step", "block", "mean") for d in (2, 8, 32)}
    assert {(z, d) for z, d, on in cells if not on} == {("step", 32), ("block", 32), ("mean", 32)}


def test_a_sweep_whose_trials_reserve_gpus_says_what_they_wait_for_on_an_autoscaling_cluster_without_any():
    from dmh.sweep.ray_session import Cluster, check_resources

    cpus_only = Cluster(nodes=({"CPU": 4.0, "memory": 2.0**34},), autoscaling=True, where="at 10.0.0.1:6379")
    waiting = check_resources({"cpu": 1.0, "gpu": 1.0}, cpus_only)
    assert "every trial asks for 1 CPU and 1 GPU, which no node of the Ray cluster at 10.0.0.1:6379 has yet" in waiting
    assert "the trials wait for the autoscaler to add such a node" in waiting
    with_gpus = Cluster(nodes=({"CPU": 4.0, "GPU": 8.0},), autoscaling=True, where="at 10.0.0.1:6379")
    assert check_resources({"cpu": 1.0, "gpu": 1.0}, with_gpus) is None


@pytest.mark.parametrize(("argv", "message"), [
    (["--c", "0", "5"], "every c must be a positive integer"),
    (["--seeds", "0"], "--seeds must be a positive integer"),
    (["--first-seed", "-1"], "--first-seed must be a non-negative integer"),
    (["--storage", "{file}"], "cannot be written: Not a directory"),
    (["--storage", "nosuchscheme://bucket/sweeps"], "cannot be written: Unrecognized filesystem type"),
    (["--set", "steps=-1"], "steps must be a positive integer"),
    (["--preset", "paper", "--d4rl-dir", "{empty}"], "D4RL data missing for 3 dataset(s): hopper-medium-expert-v2"),
])
def test_bad_arguments_fail_before_ray_starts(workdir, monkeypatch, capsys, argv, message):
    (workdir / "a-file").write_text("not a folder")
    (workdir / "empty").mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(workdir / "empty"))
    argv = [a.format(file=workdir / "a-file" / "x", empty=workdir / "empty") for a in argv]
    monkeypatch.setattr(common, "connect_ray", _no_ray)
    script = importlib.import_module("sweeps.c_sensitivity")
    started = time.monotonic()
    assert common.main(script.SWEEP, ["--preset", "smoke", *argv] if "--preset" not in argv else argv) == 2
    assert time.monotonic() - started < 5
    assert message in capsys.readouterr().err


def test_an_empty_grid_and_an_unknown_preset_fail_before_ray_starts(workdir, monkeypatch, capsys):
    monkeypatch.setattr(common, "connect_ray", _no_ray)
    empty = common.Sweep(name="empty", description="nothing", grid=lambda args: [])
    assert common.main(empty, ["--preset", "smoke"]) == 2
    assert "grid of empty is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        common.main(empty, ["--preset", "huge"])
    assert exited.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_resume_without_a_sweep_to_restore_is_refused_before_ray_starts(workdir, monkeypatch, capsys):
    monkeypatch.setattr(common, "connect_ray", _no_ray)
    script = importlib.import_module("sweeps.c_sensitivity")
    assert common.main(script.SWEEP, ["--preset", "smoke", "--resume"]) == 2
    assert "no sweep to restore" in capsys.readouterr().err


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was started for bad arguments")
