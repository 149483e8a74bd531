"""SIGINT and SIGTERM stop a long dmh command within seconds on a busy machine (two other processes spinning), with
one line saying what was interrupted and what was kept, no traceback, and no file that looks complete but is not
(issue 31)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dmh.data.format import load_dataset

STOP_SECONDS = 15  # from the signal to the exit, with both cores busy


@contextlib.contextmanager
def busy_machine():
    """Two processes that keep both cores busy meanwhile."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(1)  # both spinning before anything else happens
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dmh.cli", *argv], cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the command never got there"
        time.sleep(0.1)


def stop(proc: subprocess.Popen, signum: int) -> tuple[int, str, float]:
    """Send ``signum`` on a busy machine; the exit status, stderr and seconds until the process ended."""
    with busy_machine():
        sent = time.monotonic()
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        return proc.returncode, err, time.monotonic() - sent


@pytest.mark.slow
def test_ctrl_c_during_data_generation_keeps_the_finished_datasets_and_leaves_no_partial_file(tmp_path):
    data = tmp_path / "data"
    proc = start(["data", "grid", "--env", "darkroom", "large-darkroom", "large-key-to-door", "--quiet",
                  "--data-dir", str(data)], tmp_path, {})
    wait_for(lambda: any(data.glob("darkroom-*.h5")), proc)  # the first family written, the next ones running
    code, err, seconds = stop(proc, signal.SIGINT)
    assert code == 128 + signal.SIGINT and seconds < STOP_SECONDS, (code, seconds, err[-3000:])
    (written,) = data.glob("darkroom-*.h5")
    assert err.splitlines() == [f"dmh: interrupted by SIGINT: generating data stopped; kept {written}"]
    assert sorted(p.name for p in data.iterdir()) == [written.name]  # no partial or temporary file
    assert load_dataset(written).metadata["env_name"] == "darkroom"


@pytest.mark.slow
def test_sigterm_during_training_ends_its_run_killed_and_says_which_checkpoint_was_kept(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "DMH_DATA_DIR": str(tmp_path / "data")}
    proc = start(["train", "--algo", "ad-mamba", "--task", "darkroom", "--preset", "smoke", "--set", "steps=100000",
                  "--set", "checkpoint_every=5", "--set", "log_every=1000"], tmp_path, env)
    wait_for(lambda: any(tmp_path.glob("runs/*/checkpoint.pt")), proc)
    code, err, seconds = stop(proc, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and seconds < STOP_SECONDS, (code, seconds, err[-3000:])
    (checkpoint,) = tmp_path.glob("runs/*/checkpoint.pt")
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"dmh: interrupted by SIGTERM: training stopped; kept its last checkpoint "
                                    f"{checkpoint.relative_to(tmp_path)}; the same command with --resume continues")
    assert not [p for p in tmp_path.rglob("*.tmp")]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"
