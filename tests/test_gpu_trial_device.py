"""A GPU trial never trains on the CPU by accident: a trial that reserved GPUs trains on CUDA or stops with one line,
and every run records its device and GPU as params (with MLflow's system metrics, GPU utilisation included, on GPU
trials). No GPU here: torch's CUDA check is forced either way."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from mlflow import MlflowClient

from dmh.errors import DmhError
from dmh.sweep import trial as trial_module
from dmh.sweep.plan import parse_args, plan
from dmh.tracking import run as run_module
from dmh.tracking.run import DEVICE_PARAM, GPU_PARAM, SYSTEM_METRICS_SWITCH, TrackedRun
from sweeps.grid_world import SWEEP


class Session(trial_module.TrialSession):
    """The trial logic without Ray: the GPUs Ray would have reserved, nothing to restore, reports dropped."""

    trial_id = "gpu_00000"
    cluster = "none"
    node = "none"

    def __init__(self, gpu_ids: list[str] | None) -> None:
        self.reserved = gpu_ids

    @property
    def gpu_ids(self) -> list[str] | None:
        return self.reserved

    def restore(self, into: Path) -> None:
        return None

    def report(self, metrics, checkpoint=None) -> None:
        pass


class TrainedError(Exception):
    """Raised by the stand-in for train_run, with the config it was given."""


@pytest.fixture
def trial(sweep_workdir, monkeypatch):
    """One smoke cell of the Grid World sweep, and what train_run was asked to train."""
    monkeypatch.delenv(SYSTEM_METRICS_SWITCH, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def train_run(cfg, **kwargs):
        raise TrainedError(cfg)

    monkeypatch.setattr(trial_module, "train_run", train_run)
    monkeypatch.setattr(trial_module, "discard_stale_runs", lambda *args, **kwargs: None)  # no store needed
    return plan(SWEEP, parse_args(SWEEP, ["--preset", "smoke"])).trials[0]


def trained_config(config, session):
    with pytest.raises(TrainedError) as trained:
        trial_module.run_trial(config, session)
    return trained.value.args[0]


def test_a_trial_that_reserved_a_gpu_stops_with_one_line_when_cuda_is_not_usable(trial, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DmhError) as stopped:
        trial_module.run_trial(trial, Session(["0"]))
    line = str(stopped.value)
    assert "\n" not in line and "reserved GPU 0" in line and "--gpus-per-trial 0" in line


def test_a_trial_that_reserved_a_gpu_trains_on_cuda_with_system_metrics_on(trial, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trial["config"]["device"] == "auto"
    assert trained_config(trial, Session(["0"])).device == "cuda"
    assert os.environ[SYSTEM_METRICS_SWITCH] == "true"


@pytest.mark.parametrize("gpu_ids", [[], None], ids=["no GPU reserved", "outside Ray"])
def test_a_trial_without_gpus_keeps_auto_and_no_system_metrics(trial, monkeypatch, gpu_ids):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trained_config(trial, Session(gpu_ids)).device == "auto"
    assert SYSTEM_METRICS_SWITCH not in os.environ


def test_a_gpu_trial_pinned_to_the_cpu_stays_there(trial, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trial["config"]["device"] = "cpu"
    assert trained_config(trial, Session(["0"])).device == "cpu"


# --- what a run records -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema and nothing else (creating the schema takes seconds)."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def uri(tmp_path: Path, empty_store: Path) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_run_records_its_device_and_gpu_as_params_and_a_resume_elsewhere_keeps_them(uri, monkeypatch):
    monkeypatch.delenv(SYSTEM_METRICS_SWITCH, raising=False)
    with TrackedRun("gpu", params={"lr": 0.1}, tags={"device": "cuda:0 (NVIDIA A10G)"}, tracking_uri=uri) as run:
        pass
    with TrackedRun("gpu", params={"lr": 0.1}, tags={"device": "cpu"}, run_id=run.run_id, tracking_uri=uri):
        pass
    recorded = MlflowClient(uri).get_run(run.run_id).data
    assert recorded.params == {"lr": "0.1", DEVICE_PARAM: "cuda:0", GPU_PARAM: "NVIDIA A10G"}
    assert recorded.tags["device"] == "cpu"  # the tag follows the run to where it last ran


def test_a_cpu_run_records_no_gpu(uri, monkeypatch):
    monkeypatch.delenv(SYSTEM_METRICS_SWITCH, raising=False)
    with TrackedRun("cpu", tags={"device": "cpu"}, tracking_uri=uri) as run:
        pass
    assert MlflowClient(uri).get_run(run.run_id).data.params == {DEVICE_PARAM: "cpu", GPU_PARAM: "none"}


class Monitor:
    """Stands in for MLflow's SystemMetricsMonitor (which needs psutil and, for GPUs, nvidia-ml-py)."""

    made: ClassVar[list[Monitor]] = []

    def __init__(self, run_id, resume_logging=False, tracking_uri=None) -> None:
        self.run_id, self.resume, self.uri, self.events = run_id, resume_logging, tracking_uri, []
        Monitor.made.append(self)

    def start(self) -> None:
        self.events.append("start")

    def finish(self) -> None:
        self.events.append(f"finish while {MlflowClient(self.uri).get_run(self.run_id).info.status}")


@pytest.fixture
def monitor(monkeypatch):
    Monitor.made = []
    module = types.ModuleType("mlflow.system_metrics.system_metrics_monitor")
    module.SystemMetricsMonitor = Monitor
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Monitor


def test_with_the_switch_on_a_run_logs_system_metrics_from_its_start_to_its_end(uri, monkeypatch, monitor):
    monkeypatch.setenv(SYSTEM_METRICS_SWITCH, "true")
    with TrackedRun("gpu", tracking_uri=uri) as run:
        [made] = monitor.made
        assert (made.run_id, made.resume, made.uri, made.events) == (run.run_id, False, uri, ["start"])
    assert made.events == ["start", "finish while RUNNING"]  # its last samples written before the run ends
    with TrackedRun("gpu", run_id=run.run_id, tracking_uri=uri):
        pass
    assert monitor.made[-1].resume  # a resumed run continues its system metrics' steps


def test_with_the_switch_off_a_run_starts_no_monitor(uri, monkeypatch, monitor):
    monkeypatch.setenv(SYSTEM_METRICS_SWITCH, "false")
    with TrackedRun("cpu", tracking_uri=uri):
        pass
    assert monitor.made == []


def test_a_monitor_that_cannot_run_here_is_said_once_and_the_run_goes_on(uri, monkeypatch, monitor, caplog):
    def without_psutil(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'psutil'")

    monkeypatch.setattr(monitor, "__init__", without_psutil)
    monkeypatch.setenv(SYSTEM_METRICS_SWITCH, "true")
    with TrackedRun("gpu", tracking_uri=uri) as run:
        pass
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FINISHED"
    assert [r.getMessage() for r in caplog.records if r.name == run_module.log.name] == [
        f"system metrics of run {run.run_id} are not logged: No module named 'psutil'"]
