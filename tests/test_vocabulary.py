"""The shared names hold end to end: one real (smoke) training run is read back from MLflow, and the report's export
reads every result key, setting and tag that training writes, so renaming one side cannot silently empty the report."""

import math
from dataclasses import dataclass

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from dmh.report.export import SCALARS, SETTINGS, Export, export_runs
from dmh.training.config import make_config
from dmh.training.run import train_run
from dmh.vocabulary import Metric, Outcome, Tag


@dataclass
class Trained:
    run: Run  # the run as MLflow stores it
    export: Export  # the store as the report reads it
    row: pd.Series  # the run's row of runs.csv


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    folder = tmp_path_factory.mktemp("vocabulary")
    uri = f"sqlite:///{folder}/mlflow.db"
    cfg = make_config("dmh", "darkroom", "smoke",
                      settings={"run_dir": str(folder / "runs"), "data_dir": str(folder / "data")})
    result = train_run(cfg, tracking_uri=uri)
    export = export_runs(uri)
    (row,) = (r for _, r in export.runs.iterrows() if r["run_id"] == result.run_id)
    return Trained(MlflowClient(uri).get_run(result.run_id), export, row)


def test_every_metric_a_training_run_logs_is_a_declared_result_diagnostic_or_the_curve(trained):
    declared = {*Metric.RESULTS, *Metric.DIAGNOSTICS, Metric.CURVE}
    assert set(trained.run.data.metrics) <= declared


def test_every_result_key_has_a_runs_csv_column():
    assert set(Metric.RESULTS) <= set(SCALARS.values())


def test_the_export_fills_the_column_of_every_result_key_the_run_logged(trained):
    logged = trained.run.data.metrics
    assert {Metric.LAST_RETURN, Metric.TRAIN_LOSS} <= set(logged)  # else this test would check nothing
    for column, key in SCALARS.items():
        if key in logged:
            assert trained.row[column] == pytest.approx(logged[key]), column
        elif key != Metric.OOM:  # a finished run logs no oom; D4RL alone logs a normalised score
            assert math.isnan(trained.row[column]), column


def test_the_export_reads_the_in_context_curve_of_the_run(trained):
    curve = trained.export.curves[trained.export.curves["run_id"] == trained.row["run_id"]]
    history = MlflowClient(trained.export.source["tracking_uri"]).get_metric_history(trained.row["run_id"],
                                                                                    Metric.CURVE)
    assert len(curve) == len(history) > 0
    assert list(curve["episode"]) == [m.step + 1 for m in sorted(history, key=lambda m: m.step)]


def test_every_setting_the_export_reads_is_a_param_training_logs(trained):
    params = trained.run.data.params
    assert set(SETTINGS) <= set(params)
    assert (trained.row["algo"], trained.row["task"], trained.row["preset"]) == ("dmh", "darkroom", "smoke")
    assert trained.row["c"] == int(params["c"]) and trained.row["n_context"] == int(params["n_context"])


def test_training_sets_the_task_and_algo_tags_the_export_falls_back_on(trained):
    tags = trained.run.data.tags
    assert (tags[Tag.TASK], tags[Tag.ALGO]) == ("darkroom", "dmh")


def test_a_plain_train_run_without_sweep_tags_is_a_completed_trial_of_its_experiments_sweep(trained):
    tags = trained.run.data.tags
    assert Tag.SWEEP not in tags and Tag.STATUS_DETAIL not in tags and Tag.SWEEP_PARENT not in tags
    experiment = trained.row["experiment"]
    assert (trained.row["sweep"], trained.row["outcome"], trained.row["status_detail"]) == (
        experiment, Outcome.COMPLETED, "")
