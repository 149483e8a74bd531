"""The Tune trainable: one trial = one ``dmh train`` run = one MLflow run.

Two rules shape it. Everything that ends up in the trial's ``TrainConfig`` (tracking URI, data folder, threads)
travels inside the trial's Tune config, which ``Tuner.restore`` brings back unchanged, so a resumed trial rebuilds
exactly the config its checkpoint was made with and continues the same MLflow run. And the MLflow store is chosen
inside the trainable, so trials on remote workers write where the driver does.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from dmh.errors import DmhError
from dmh.sweep.bookkeeping import (
    MLFLOW_PARENT_RUN_ID,
    discard_stale_runs,
    end_trial_runs,
    mark_completed,
    record_out_of_memory,
)
from dmh.tracking.run import SYSTEM_METRICS_SWITCH
from dmh.training.checkpoint import load_checkpoint
from dmh.training.config import TrainConfig, config_from_dict, make_config
from dmh.training.run import evaluate_checkpoint, train_run
from dmh.vocabulary import Metric, Outcome, Tag


class TrialSession:
    """What a trial needs from Tune, behind a small interface so the trial logic also runs without Ray (tests)."""

    @property
    def trial_id(self) -> str:
        return tune.get_context().get_trial_id()

    @property
    def cluster(self) -> str:
        """The GCS address of the Ray cluster running the trial (which cluster a run came from)."""
        return ray.get_runtime_context().gcs_address

    @property
    def node(self) -> str:
        """The Ray node id of the worker running the trial (which machine a run came from); "none" outside Ray."""
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "none"

    @property
    def gpu_ids(self) -> list[str] | None:
        """The GPUs Ray reserved for the trial (empty: none); None outside Ray."""
        return [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else None

    def restore(self, into: Path) -> Path | None:
        """Copy the trial's last reported checkpoint file into ``into``; None on a first start."""
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            into.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / "checkpoint.pt", into / "checkpoint.pt")
        return into / "checkpoint.pt"

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        """Report metrics, with the checkpoint file if given (Tune persists it to storage before returning)."""
        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="dmh-tune-ckpt-") as folder:
            shutil.copy2(checkpoint, Path(folder) / "checkpoint.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trainable(config: dict[str, Any], parent_run_id: str | None = None) -> None:
    """The Tune function trainable. The cell sits under one key, ``trial``, so a grid is a single ``grid_search``
    over whole cells (algos and swept values need not be a product). ``parent_run_id`` comes from the driver
    (``tune.with_parameters``), not from the Tune config: it belongs to the sweep, not to the cell."""
    run_trial(config["trial"], TrialSession(), parent_run_id)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python/numpy MemoryError, or torch's CPU allocator failing (a RuntimeError with this message)."""
    oom_types: tuple[type[BaseException], ...] = (MemoryError, torch.OutOfMemoryError)
    return isinstance(exc, oom_types) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def hide_unreserved_gpus(gpu_ids: list[str] | None) -> None:
    """A trial that reserved no GPU sees none, so ``device=auto`` trains it on the CPU. Ray used to hide the GPUs
    from such a trial itself (``CUDA_VISIBLE_DEVICES=""``); releases where ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` is off
    by default (2.60 among them) leave every GPU visible, and every such trial would train on GPU 0, outside Ray's
    accounting. Set before anything in the trial starts CUDA, as Ray sets it for a trial that reserved GPUs."""
    if gpu_ids is not None and not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def on_reserved_gpus(cfg: TrainConfig, gpu_ids: list[str] | None) -> TrainConfig:
    """A trial that reserved GPUs trains on one: ``device=auto`` becomes ``cuda``, and a CUDA device that torch
    cannot use here (a CPU build of torch, a node without a driver) stops the trial with one line, where ``auto``
    would train the paper preset on the CPU without a word. A trial without GPUs keeps its device (``auto`` is the
    CPU there, its GPUs being hidden)."""
    if not gpu_ids:
        return cfg
    device = "cuda" if cfg.device == "auto" else cfg.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DmhError(
            f"the trial reserved GPU {','.join(gpu_ids)} but torch {torch.__version__} (CUDA build: "
            f"{torch.version.cuda or 'none'}) sees no usable CUDA device here (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): install a CUDA build of torch on the GPU nodes, or "
            "pass --gpus-per-trial 0 to train on CPUs")
    return dataclasses.replace(cfg, device=device)


def run_trial(config: dict[str, Any], session: TrialSession, parent_run_id: str | None = None) -> None:
    """Train one cell (a ``Plan.trials`` entry), reporting each checkpoint to Tune; a restarted trial continues its
    checkpoint and MLflow run. With ``parent_run_id`` the run is nested under the sweep's parent run."""
    hide_unreserved_gpus(session.gpu_ids)
    os.environ.update(config["env"])  # e.g. D4RL_DATASET_DIR, for trials on workers that did not inherit it
    cfg = config_from_dict(config["config"])
    if config.get("searched"):  # a search's trial: its sampled settings over the cell's, resolved into its run
        cfg = make_config(cfg.algo, cfg.task, cfg.preset, cfg.seed,
                          settings={**config["settings"], **config["searched"]})
    cfg = on_reserved_gpus(cfg, session.gpu_ids)
    if session.gpu_ids:  # GPU utilisation and memory beside the run's metrics (MLflow's own switch, read by the run)
        os.environ[SYSTEM_METRICS_SWITCH] = "true"
    uri, trial_id = config["tracking_uri"], session.trial_id
    # A retry lands in a fresh working folder (another worker, or Tune's new session after --resume): the checkpoint
    # Tune kept is the one to continue. A retry in the same folder may also find one written but not yet reported.
    # Paths are relative to the trial's working folder (Tune's cwd for the trial), and per trial in case it is not.
    resume_from = session.restore(Path("dmh-restored") / trial_id)
    local = cfg.checkpoint_path
    if resume_from is None and local.exists():
        resume_from = local
    run_id = load_checkpoint(resume_from)["run_id"] if resume_from is not None else None
    discard_stale_runs(uri, cfg.experiment, config["sweep_run"], trial_id, keep=run_id)
    tags = {Tag.SWEEP: config["sweep"], Tag.SWEEP_RUN: config["sweep_run"], Tag.TRIAL_ID: trial_id,
            Tag.WORKER_PID: str(os.getpid()), Tag.RAY_CLUSTER: session.cluster, Tag.RAY_NODE: session.node,
            Tag.STATUS_DETAIL: Outcome.RUNNING}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    last: dict[str, Any] = {"step": 0}

    def on_checkpoint(path: Path, step: int, metrics: dict[str, float]) -> None:
        last.update(step=step, **metrics)
        if config.get("evaluate_checkpoints"):  # a search on the return needs it at every report (ASHA, Optuna)
            metrics = {**metrics, Metric.LAST_RETURN: evaluate_quietly(path)}
        session.report({"step": step, **metrics}, checkpoint=path)

    try:
        result = train_run(cfg, tracking_uri=uri, tags=tags, resume_from=resume_from, on_checkpoint=on_checkpoint)
    except SystemExit:
        # Tune ends a trial it stops (ASHA, an interrupted driver) with sys.exit(0) in this thread, which would
        # record the unfinished run FINISHED.
        end_trial_runs(uri, cfg.experiment, config["sweep_run"], trial_id, "KILLED", Outcome.STOPPED)
        raise
    except BaseException as exc:
        if not (config["oom_is_result"] and is_out_of_memory(exc)):
            raise
        record_out_of_memory(cfg, uri, tags, exc)
        session.report({"step": last["step"], Metric.OOM: 1})
        return
    mark_completed(uri, result.run_id, log_oom=config["oom_is_result"])
    session.report({"step": result.steps, Metric.TRAIN_LOSS: result.final_loss,
                    Metric.LAST_RETURN: result.evaluation.last_return,
                    Metric.ONLINE_MIN: result.evaluation.online_seconds / 60,
                    Metric.TRAIN_SECONDS: result.train_seconds, Metric.OOM: 0, "run_id": result.run_id})


def evaluate_quietly(checkpoint: Path) -> float:
    """A checkpoint's online last-episode return, leaving the training run's random streams as they were (so a
    resumed trial still trains exactly as an uninterrupted one)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            return evaluate_checkpoint(checkpoint, log_to_run=False).last_return
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
