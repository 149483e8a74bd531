"""A tracked training run: ``Trainer`` inside an MLflow run, with the paper's metrics and the artifacts a reader
needs to trace every number back to its settings. This is what ``dmh train`` and every sweep trial call."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dmh.data.d4rl import normalized_score
from dmh.errors import DmhError
from dmh.evaluation.online import EvalResult, evaluate_online
from dmh.models import scan_backend
from dmh.tracking import TrackedRun, default_tracking_uri, run_tags
from dmh.training.checkpoint import load_checkpoint, model_from_checkpoint
from dmh.training.config import TrainConfig, config_from_dict, to_yaml, torch_device
from dmh.training.train import Trainer, TrainResult, nothing_to_resume, offline_hours_per_10k
from dmh.vocabulary import Metric, Tag

log = logging.getLogger("dmh")


def run_params(trainer: Trainer) -> dict[str, Any]:
    """The resolved config as the run trained it (its model config inside), with the env id and the Mamba backend
    the model takes."""
    return {**dataclasses.asdict(trainer.cfg), "env": trainer.spec.env_id, "backend": scan_backend(trainer.model)}


def log_evaluation(run: TrackedRun, trainer: Trainer, result: EvalResult) -> dict[str, float]:
    """The paper's numbers: in-context curve, last-episode return, D4RL normalised score, Table 4 timings."""
    run.log_curve(result.returns)
    metrics = {
        Metric.LAST_RETURN: result.last_return,
        Metric.FIRST_RETURN: result.first_return,
        Metric.LAST_RETURN_SE: result.last_return_se,
        Metric.ONLINE_MIN: result.online_seconds / 60,
        Metric.OFFLINE_H_PER_10K: offline_hours_per_10k(trainer.train_seconds, trainer.step),
    }
    held_out = trainer.held_out_loss()
    if held_out is not None:
        metrics[Metric.HELD_OUT_LOSS] = held_out
    if trainer.spec.kind == "d4rl":
        metrics[Metric.NORMALIZED_SCORE] = float(np.mean(normalized_score(trainer.spec.name, result.returns[:, -1])))
    run.log_metrics(metrics, step=trainer.step)
    return metrics


def train_run(cfg: TrainConfig, resume: bool = False, tracking_uri: str | None = None,
              tags: dict[str, str] | None = None, resume_from: Path | None = None,
              on_checkpoint: Callable[[Path, int, dict[str, float]], None] | None = None,
              start_if_missing: bool = False) -> TrainResult:
    """Train ``cfg`` inside one MLflow run.

    ``resume`` continues this configuration's checkpoint and MLflow run, and without one stops with an error naming
    the settings that differ from the checkpoint of the same algo, task and seed (``nothing_to_resume``), unless
    ``start_if_missing`` (``--resume-or-start``), which starts a new run and says so. Without ``resume`` an existing
    checkpoint is an error. Both are decided before any work. ``resume_from`` names a checkpoint file to continue
    instead (a Ray Tune trial restored on another worker); ``on_checkpoint`` is called after every checkpoint is
    written (path, step, metrics).
    """
    own = cfg.checkpoint_path
    if resume_from is None and resume and not own.exists():
        if not start_if_missing:
            raise DmhError(nothing_to_resume(cfg))
        log.warning("nothing to resume for these settings (no %s): starting a new run", own)
    elif resume_from is None and not resume and own.exists():
        raise DmhError(f"{own} already exists: pass --resume to continue that run, or change --seed / run_dir")
    trainer = Trainer(cfg, on_checkpoint=on_checkpoint)
    if resume or resume_from is not None:
        trainer.resume_if_possible(resume_from)
    name = cfg.run_name
    # the device the run trains on (by default the tag names the machine's first GPU, even for a run on its CPU)
    device = run_tags(str(trainer.device))["device"]
    with TrackedRun(cfg.experiment, run_name=name, params=run_params(trainer), run_id=trainer.run_id,
                    tags={Tag.TASK: cfg.task, Tag.ALGO: cfg.algo, "device": device, **(tags or {})},
                    tracking_uri=tracking_uri) as run:
        trainer.tracker = run
        trainer.run_id = run.run_id
        run.log_text(to_yaml(cfg), "config.yaml")
        result = trainer.fit()
        metrics = log_evaluation(run, trainer, result.evaluation)
        run.log_artifact(result.checkpoint, "checkpoint")
        log.info("finished %s: last-episode return %.3f (%s)", name, result.evaluation.last_return,
                 ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return result


def evaluate_checkpoint(checkpoint: str | Path, tracking_uri: str | None = None, episodes: int = 0,
                        n_tasks: int = 0, log_to_run: bool = True, seed: int | None = None) -> EvalResult:
    """Online evaluation of a checkpoint (or of an MLflow run's final checkpoint). ``seed`` None is the run's own
    protocol (``TrainConfig.eval_seed``), whose result is logged back to its run; another seed (a measure of how
    much one evaluation varies) is never logged, so the run's recorded final evaluation stays the protocol's."""
    payload = load_checkpoint(checkpoint)
    cfg = config_from_dict(payload["config"])
    model = model_from_checkpoint(payload).to(torch_device("auto"))  # this machine's GPU if it has one
    result = evaluate_online(model, cfg.spec, payload["obs_mean"].numpy(), payload["obs_std"].numpy(),
                             n_tasks=n_tasks or cfg.eval_tasks, episodes=episodes or cfg.eval_episodes,
                             seed=cfg.eval_seed if seed is None else seed, sample=cfg.eval_sample)
    if log_to_run and seed is None and payload.get("run_id"):
        with TrackedRun(cfg.experiment, run_id=payload["run_id"], tracking_uri=tracking_uri) as run:
            run.log_metrics({Metric.LAST_RETURN: result.last_return, Metric.ONLINE_MIN: result.online_seconds / 60},
                            step=payload["step"])
    return result


def checkpoint_of_run(run_id: str, tracking_uri: str | None = None) -> Path:
    """Download a run's final checkpoint artifact to a temporary folder."""
    import mlflow  # here, like in dmh.tracking: importing mlflow costs a second that bad arguments should not pay

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint",
                                                    dst_path=tempfile.mkdtemp(prefix="dmh-ckpt-"),
                                                    tracking_uri=tracking_uri or default_tracking_uri())
    except Exception as exc:  # mlflow raises several types for an unknown run or a missing artifact
        raise DmhError(f"cannot fetch the checkpoint of run {run_id}: {str(exc).splitlines()[0]}") from None
    found = list(Path(local).rglob("*.pt"))
    if not found:
        raise DmhError(f"run {run_id} has no checkpoint artifact")
    return found[0]
