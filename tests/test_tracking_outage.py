"""A real training run survives its MLflow server going away and coming back: nothing is lost, nothing is duplicated.

A real ``mlflow server`` (SQLite backend, artifacts in a folder, 127.0.0.1 only) is stopped by SIGTERM right after the
run's first checkpoint and started again on the same port and backend a few seconds later, while training goes on.
When training ends the run must be FINISHED, with every logged value exactly once and every artifact in place.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers_testkit import MlflowServer, free_port

from dmh.training.config import make_config
from dmh.training.run import train_run
from dmh.vocabulary import Metric

pytestmark = pytest.mark.slow

STEPS = 30
RESTART_AFTER_S = 3.0  # how long the server stays down before it is started again (it then takes ~7 s to be ready)


def test_a_run_whose_server_restarts_mid_training_ends_finished_with_every_metric_once_and_its_artifacts(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DMH_TRACKING_DEADLINE", "60")  # a server that never comes back fails the test in a minute
    server = MlflowServer(tmp_path, free_port())
    restarter: list[threading.Thread] = []

    def restart_later() -> None:
        time.sleep(RESTART_AFTER_S)
        server.start()

    def on_checkpoint(path: Path, step: int, metrics: dict[str, float]) -> None:
        if not restarter:  # the first checkpoint: the server goes away while training goes on
            server.stop()
            restarter.append(threading.Thread(target=restart_later, daemon=True))
            restarter[0].start()

    cfg = make_config("dmh", "darkroom", "smoke", settings={
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
