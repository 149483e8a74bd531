"""A real training run survives its MLflow server going away and coming back: nothing is lost, nothing is duplicated.

A real ``mlflow server`` (SQLite backend, artifacts in a folder, 127.0.0.1 only) is stopped by SIGTERM right after the
run's first checkpoint and started again on the same port and backend a few seconds later, while training goes on.
When training ends the run must be FINISHED, with every logged value exactly once and every artifact in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dmh.training.config import make_config
from dmh.training.run import train_run
from dmh.vocabulary import Metric

pytestmark = pytest.mark.slow

STEPS = 30
RESTART_AFTER_S = 3.0  # how long the server stays down before it is started again (it then takes ~7 s to be ready)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1:``port`` over one SQLite backend and artifacts folder, startable again."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self) -> None:
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
        command += ["server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                    "--artifacts-destination", str(self.folder / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with self.log.open("a") as handle:
            # Its own session: the server forks a uvicorn worker, and the group holds both and nothing else.
            self.proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.folder,
                                         start_new_session=True)

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            with (contextlib.suppress(urllib.error.URLError, OSError),
                  urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response):
                if response.status == 200:
                    return
            time.sleep(0.3)
        pytest.fail(f"mlflow server not healthy after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the server's process group (led by its pid), then wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def test_a_run_whose_server_restarts_mid_training_ends_finished_with_every_metric_once_and_its_artifacts(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DMH_TRACKING_DEADLINE", "60")  # a server that never comes back fails the test in a minute
    server = Server(tmp_path, _free_port())
    restarter: list[threading.Thread] = []

    def restart_later() -> None:
        time.sleep(RESTART_AFTER_S)
        server.start()

    def on_checkpoint(path: Path, step: int, metrics: dict[str, float]) -> None:
        if not restarter:  # the first checkpoint: the server goes away while training goes on
            server.stop()
            restarter.append(threading.Thread(target=restart_later, daemon=True))
            restarter[0].start()

    cfg = make_config("dmh", "darkroom", "smoke", overrides={
        "steps": STEPS, "log_every": 1, "checkpoint_every": 5,
        "run_dir": str(tmp_path / "runs"), "data_dir": str(tmp_path / "data")})
    server.start()
    try:
        server.wait_healthy()
        with caplog.at_level(logging.WARNING, logger="dmh.tracking.outage"):
            result = train_run(cfg, tracking_uri=server.uri, on_checkpoint=on_checkpoint)
        assert restarter, "no checkpoint was written, so the server was never stopped"
        restarter[0].join()

        client = MlflowClient(server.uri)
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        losses = client.get_metric_history(result.run_id, Metric.TRAIN_LOSS)
        assert sorted(m.step for m in losses) == list(range(1, STEPS + 1))  # each step once: none lost, none twice
        assert Metric.LAST_RETURN in run.data.metrics
        curve = client.get_metric_history(result.run_id, Metric.EVAL_RETURN)
        assert sorted(m.step for m in curve) == list(range(cfg.eval_episodes))
        artifacts = {a.path for a in client.list_artifacts(result.run_id)}
        assert {"config.yaml", "in_context_curve.csv", "in_context_curve.png", "checkpoint"} <= artifacts
        assert [a.path for a in client.list_artifacts(result.run_id, "checkpoint")] == ["checkpoint/checkpoint.pt"]
        messages = [r.getMessage() for r in caplog.records]
        assert any("did not answer" in m for m in messages), "the outage was never seen by the run"
        assert any("answers again" in m for m in messages)
    finally:
        for thread in restarter:
            thread.join()
        server.stop()
