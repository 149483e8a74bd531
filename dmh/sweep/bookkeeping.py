"""The MLflow side of a sweep: its parent run, which groups its trials, and the trials' runs, so that every trial ends
with exactly one run in a terminal state, however the sweep was interrupted, retried or resumed.

A sweep's runs are found by tag ``sweep_run`` (its Tune folder), not by experiment or script, which leaves other
sweeps of the same script alone. The parent run carries that tag too, and ``Tag.SWEEP_PARENT``, so that nothing
here (nor the report) ever counts it as a trial.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dmh.sweep.plan import Plan
from dmh.tracking import TrackedRun, open_client
from dmh.training.config import TrainConfig
from dmh.vocabulary import Metric, Outcome, Tag

MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's system tag: the UI nests a run under the run it names


# ------------------------------------------------------------------------------------------------------ the parent
def open_parent_run(plan: Plan) -> str:
    """The sweep's parent run, RUNNING: a new one, or with ``--resume`` the one the sweep started with.

    Opened through ``TrackedRun`` for what it brings (the experiment created beside the store, the driver's
    provenance tags), but not held open over the sweep: its SIGINT handler would pre-empt Tune's graceful stop, and
    the parent's status depends on how the trials ended (:func:`end_parent_run`).
    """
    found = parent_run(plan.tracking_uri, plan.experiment, plan.path) if plan.resume else None
    tags = {Tag.SWEEP: plan.sweep.name, Tag.SWEEP_RUN: plan.path, Tag.SWEEP_PARENT: "true"}
    with TrackedRun(plan.experiment, run_name=plan.name, tags=tags, run_id=found,
                    tracking_uri=plan.tracking_uri) as run:
        run_id = run.run_id
    open_client(plan.tracking_uri).update_run(run_id, status="RUNNING")
    return run_id


def parent_run(uri: str, experiment: str, sweep_run: str) -> str | None:
    """The id of the latest parent run of the sweep ``sweep_run``, if it has one."""
    client = open_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = f"tags.{Tag.SWEEP_RUN} = '{sweep_run}' and tags.{Tag.SWEEP_PARENT} = 'true'"
    runs = client.search_runs([found.experiment_id], filter_string=query, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def end_parent_run(uri: str, run_id: str, finished: bool) -> None:
    """FINISHED when every trial finished, else KILLED (``--resume`` reopens it)."""
    open_client(uri).set_terminated(run_id, status="FINISHED" if finished else "KILLED")


# ------------------------------------------------------------------------------------------------------ the trials
def trial_runs(uri: str, experiment: str, sweep_run: str, trial_id: str | None = None) -> list[Any]:
    """The trial runs of one sweep, or of one of its trials; deleted runs and the parent run excluded."""
    client = open_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.{Tag.SWEEP_RUN} = '{sweep_run}'" + (f" and tags.{Tag.TRIAL_ID} = '{trial_id}'" if trial_id else "")
    runs = client.search_runs([found.experiment_id], filter_string=query, max_results=50_000)
    return [run for run in runs if Tag.SWEEP_PARENT not in run.data.tags]


def discard_stale_runs(uri: str, experiment: str, sweep_run: str, trial_id: str, keep: str | None) -> None:
    """Delete this trial's runs other than ``keep``: attempts that died before their first checkpoint, which a
    restart cannot continue. Deleting them keeps one run per trial (MLflow can still restore a deleted run)."""
    client = open_client(uri)
    for run in trial_runs(uri, experiment, sweep_run, trial_id):
        if run.info.run_id != keep:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, Tag.STATUS_DETAIL, Outcome.SUPERSEDED)
            client.delete_run(run.info.run_id)


def end_trial_runs(uri: str, experiment: str, sweep_run: str, trial_id: str, status: str, detail: str) -> None:
    """Mark one trial's runs ``status`` with ``status_detail=detail``."""
    client = open_client(uri)
    for run in trial_runs(uri, experiment, sweep_run, trial_id):
        client.set_terminated(run.info.run_id, status=status)
        client.set_tag(run.info.run_id, Tag.STATUS_DETAIL, detail)


def close_unfinished_runs(uri: str, experiment: str, sweep_run: str) -> int:
    """After the sweep, when no trial process is left: every run that did not complete (ASHA stopped it, the driver
    was interrupted, its process died before it could say so) ends KILLED with ``status_detail=stopped``; ``--resume``
    reopens those of unfinished trials. Completed means FINISHED with a final evaluation, or out of memory: a stopped
    trial's thread can end its run FINISHED on the way out (Tune stops it with ``sys.exit(0)``). Returns how many."""
    client = open_client(uri)
    closed = 0
    for run in trial_runs(uri, experiment, sweep_run):
        detail = run.data.tags.get(Tag.STATUS_DETAIL)
        completed = run.info.status == "FINISHED" and (Metric.LAST_RETURN in run.data.metrics
                                                       or detail == Outcome.OUT_OF_MEMORY)
        if completed:
            if detail not in Outcome.RESULTS:
                client.set_tag(run.info.run_id, Tag.STATUS_DETAIL, Outcome.COMPLETED)
        elif run.info.status != "KILLED" or detail != Outcome.STOPPED:
            client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, Tag.STATUS_DETAIL, Outcome.STOPPED)
            closed += 1
    return closed


def mark_completed(uri: str, run_id: str | None, log_oom: bool) -> None:
    """Tag a run completed; where out-of-memory is a possible outcome, log ``oom=0`` so every run has the metric."""
    if run_id:
        client = open_client(uri)
        client.set_tag(run_id, Tag.STATUS_DETAIL, Outcome.COMPLETED)
        if log_oom:
            client.log_metric(run_id, Metric.OOM, 0.0)


def record_out_of_memory(cfg: TrainConfig, uri: str, tags: dict[str, str], exc: BaseException) -> None:
    """An out-of-memory trial is a result (the paper's Fig. 3 marks DT and DM "out of memory" at 20k): its run ends
    FINISHED with ``status_detail=out_of_memory`` and metric ``oom=1``, whether or not training had started a run."""
    found = trial_runs(uri, cfg.experiment, tags[Tag.SWEEP_RUN], tags[Tag.TRIAL_ID])
    run_id = found[0].info.run_id if found else None
    params = None if run_id else dataclasses.asdict(cfg)
    tags = {**tags, Tag.TASK: cfg.task, Tag.ALGO: cfg.algo, Tag.STATUS_DETAIL: Outcome.OUT_OF_MEMORY}
    with TrackedRun(cfg.experiment, run_name=cfg.run_name, params=params, run_id=run_id, tracking_uri=uri,
                    tags=tags) as run:
        run.log_metrics({Metric.OOM: 1.0}, step=0)
        run.log_text(f"{type(exc).__name__}: {exc}\n", "out_of_memory.txt")
