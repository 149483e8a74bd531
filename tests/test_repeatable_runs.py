"""What a run records can be had again (issue 31): a checkpoint's evaluation with its own seed repeats the evaluation
its run logged, for every algorithm, whatever ran before in the process; and a run's metric history holds each step
once, however its sweep was killed and resumed."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from dmh.tracking import TrackedRun
from dmh.training.config import make_config
from dmh.training.run import evaluate_checkpoint
from dmh.training.train import Trainer
from dmh.vocabulary import Tag

REPO = Path(__file__).resolve().parent.parent


GLOBAL_DRAWS = ("rand", "randn", "randint", "randperm", "multinomial", "normal", "bernoulli", "poisson")


@pytest.fixture
def draws_only_from_the_evaluations_seed(monkeypatch):
    """Online evaluation fails on any draw from torch's global stream (one without the evaluation's generator):
    a tiny model's sampled z hardly moves its actions, so the returns alone would not show such a draw."""
    import dmh.training.run as run_module

    def guarded(name, real):
        def draw(*args, **kwargs):
            assert kwargs.get("generator") is not None, f"torch.{name} drew from the global random stream"
            return real(*args, **kwargs)
        return draw

    evaluate_online = run_module.evaluate_online

    def evaluate_guarded(*args, **kwargs):
        with monkeypatch.context() as patch:
            for name in GLOBAL_DRAWS:
                patch.setattr(torch, name, guarded(name, getattr(torch, name)))
            return evaluate_online(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate_online", evaluate_guarded)


@pytest.mark.parametrize("algo", ["dmh", "dm", "dt", "ad-transformer", "ad-mamba"])
def test_a_checkpoint_evaluated_with_its_own_seed_repeats_its_logged_evaluation(workdir, algo,
                                                                                draws_only_from_the_evaluations_seed):
    # T-maze: every episode's return depends on every action
    sets = ["eval_tasks=4", "eval_episodes=3", *(["c=3", "model.z_eval=sample"] if algo == "dmh" else [])]
    trainer = Trainer(make_config(algo, "tmaze-5", "smoke", sets=sets))
    logged = trainer.fit().evaluation.returns  # what train_run logs as the run's final evaluation
    again = evaluate_checkpoint(trainer.checkpoint_path, log_to_run=False).returns
    torch.rand(1000)  # anything else that draws from the global streams in the same process
    np.random.rand(1000)
    after_other_draws = evaluate_checkpoint(trainer.checkpoint_path, log_to_run=False).returns
    assert np.array_equal(again, logged) and np.array_equal(after_other_draws, logged)


def test_a_resumed_run_logs_no_step_its_store_already_holds(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with TrackedRun("history", tracking_uri=uri) as first:
        for step in range(1, 6):  # killed after update 5; its last checkpoint was at update 3
            first.log_metrics({"train/loss": 1.0 / step}, step=step)
    with TrackedRun("history", run_id=first.run_id, tracking_uri=uri) as resumed:
        for step in range(4, 8):  # updates 4 and 5 trained again from the checkpoint, then on
            resumed.log_metrics({"train/loss": 1.0 / step, "eval/last_return": 0.5}, step=step)
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(first.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6, 7]
    assert [m.step for m in client.get_metric_history(first.run_id, "eval/last_return")] == [4, 5, 6, 7]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


@pytest.mark.slow
def test_a_sweep_whose_driver_group_is_killed_and_resumed_logs_every_step_of_every_run_once(sweep_workdir):
    argv = [sys.executable, str(REPO / "sweeps" / "c_sensitivity.py"), "--preset", "smoke", "--c", "1", "5",
            "--ray-address", "local", "--max-concurrent", "1", "--set", "steps=40", "--set", "checkpoint_every=7"]
    client = MlflowClient(f"sqlite:///{sweep_workdir / 'mlflow.db'}")

    def trial_runs():
        found = client.get_experiment_by_name("c_sensitivity")
        runs = [] if found is None else client.search_runs([found.experiment_id], max_results=100)
        return [r for r in runs if Tag.SWEEP_PARENT not in r.data.tags]

    def last_step(run) -> int:
        return max((m.step for m in client.get_metric_history(run.info.run_id, "train/loss")), default=0)

    driver = subprocess.Popen(argv, cwd=sweep_workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    killed_at = None
    try:
        deadline = time.monotonic() + 300
        while killed_at is None and time.monotonic() < deadline and driver.poll() is None:
            runs = trial_runs()
            running = [r for r in runs if r.info.status == "RUNNING"]
            if any(r.info.status == "FINISHED" for r in runs) and running:
                step = last_step(running[0])
                if step > 7 and step % 7:  # logged past its last checkpoint: those updates will be trained again
                    os.killpg(driver.pid, signal.SIGKILL)  # the driver, its Ray and the trial's worker at once
                    killed_at = (running[0].info.run_id, step)
            time.sleep(0.1)
    finally:
        if driver.poll() is None and killed_at is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        for pid in [int(p.name) for p in Path("/proc").glob("[0-9]*") if _pgid(int(p.name)) == driver.pid]:
            os.kill(pid, signal.SIGKILL)  # anything of the group that outlived the first signal
    assert killed_at is not None, driver.stderr.read().decode()[-3000:]

    resumed = subprocess.run([*argv, "--resume"], cwd=sweep_workdir, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = trial_runs()
    assert sorted(r.data.params["c"] for r in runs) == ["1", "5"] and {r.info.status for r in runs} == {"FINISHED"}
    assert killed_at[0] in {r.info.run_id for r in runs}  # the interrupted run went on, with its history
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            twice = [step for step, n in collections.Counter(steps).items() if n > 1]
            assert not twice, f"run {run.info.run_id} ({run.data.params['c']}) logged {key} twice at steps {twice}"
    assert last_step(next(r for r in runs if r.info.run_id == killed_at[0])) == 40

