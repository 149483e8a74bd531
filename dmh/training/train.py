"""``dmh train``: one configuration → data → model → gradient updates with periodic evaluation and checkpoints →
final online evaluation, all recorded in one MLflow run. Read top to bottom: setup, model config, the loop, evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmh.data.format import EpisodeDataset
from dmh.errors import DmhError
from dmh.evaluation.online import EvalResult, evaluate_online
from dmh.io import check_writable_dir
from dmh.models import algorithm, build_model
from dmh.progress import progress
from dmh.tasks import held_out_histories, task_dataset
from dmh.training.checkpoint import (
    config_differences,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from dmh.training.config import TrainConfig, check_against_data, torch_device
from dmh.training.contexts import ContextSampler, ContextSpec, to_device
from dmh.vocabulary import Metric

log = logging.getLogger("dmh")


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch (environments are seeded from it where they are made)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def context_spec(cfg: TrainConfig, data: EpisodeDataset) -> ContextSpec:
    """How the run's contexts are drawn from ``data``: everything from the resolved config, except the history
    stride's default, which follows the data (a context spans half a history)."""
    n = cfg.n_context
    per_history = max(1, data.num_episodes // max(1, len(np.unique(data.episode_history))))
    stride = cfg.history_stride or max(1, per_history // (2 * n))
    kind = algorithm(cfg.algo).context
    window = cfg.model.context_len if kind == "history" and cfg.history_window == "any_offset" else 0
    return ContextSpec(kind=kind, n_context=n, stride=stride, sampling=cfg.context_sampling,
                       episode_len=cfg.dt_context_len, rtg_scale=cfg.spec.rtg_scale, rtg_relabel=cfg.rtg_relabel,
                       window=window)


def clip_groups(model: torch.nn.Module, scope: str) -> list[list[torch.nn.Parameter]]:
    """The parameter groups whose gradient norms are clipped separately: one group (``global``), or with
    ``module`` the model's own networks where it has several (DM-H's high and low level, as the authors' code)."""
    if scope == "module" and hasattr(model, "clip_groups"):
        return model.clip_groups()
    return [list(model.parameters())]


def observation_stats(data: EpisodeDataset) -> tuple[np.ndarray, np.ndarray]:
    """Dataset mean and std per observation dimension (the authors normalise D4RL states the same way)."""
    mean = data.observations.mean(axis=0).astype(np.float32)
    std = (data.observations.std(axis=0) + 1e-6).astype(np.float32)
    return mean, std


@dataclass
class TrainResult:
    """What a finished training run produced."""

    run_id: str | None
    checkpoint: Path
    final_loss: float
    evaluation: EvalResult
    train_seconds: float
    steps: int


class Trainer:
    """Holds a run's state so it can be checkpointed and resumed; ``fit`` runs to ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, tracker: Any = None,
                 on_checkpoint: Callable[[Path, int, dict[str, float]], None] | None = None) -> None:
        self.spec = cfg.spec
        self.device = torch_device(cfg.device)  # before any work: cuda on a machine without it fails here
        check_writable_dir(Path(cfg.run_dir), "run_dir")
        self.cfg = cfg
        self.tracker = tracker
        self.on_checkpoint = on_checkpoint  # called after every checkpoint (path, step, metrics): Ray Tune reporting
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        data_dir = Path(cfg.data_dir) if cfg.data_dir else None
        self.data = task_dataset(self.spec, cfg.data_steps, cfg.data_seed, cfg.dataset_path, data_dir)
        # data read from a file (D4RL, dataset_path): its histories are known only now, before a model is built
        check_against_data(cfg, self.data.num_episodes // self.data.counts()["histories"])
        self.obs_mean, self.obs_std = observation_stats(self.data)
        self.sampler = ContextSampler(self.data, context_spec(cfg, self.data), self.obs_mean, self.obs_std,
                                      seed=cfg.seed)
        self.model = build_model(cfg.algo, cfg.model).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = max(1, cfg.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min((s + 1) / warmup, 1.0))
        self.step = 0
        self.train_seconds = 0.0
        self.checkpoint_path = cfg.checkpoint_path
        self.run_dir = self.checkpoint_path.parent
        self.run_id: str | None = None
        self.last_loss = math.nan
        self.rng = rng_state(self.sampler.rng, self.device)  # the streams fit() starts from (a resume replaces them)
        # one fixed batch of the held-out tasks' histories (Grid World; drawn by its own generator, so training's
        # streams are untouched): the data of held_out_loss
        held_out = None if cfg.dataset_path is not None else held_out_histories(
            self.spec, cfg.data_steps, cfg.data_seed, data_dir)
        self.held_out_batch = None if held_out is None else ContextSampler(
            held_out, context_spec(cfg, held_out), self.obs_mean, self.obs_std, seed=cfg.eval_seed,
        ).sample(cfg.batch_size)

    # ------------------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "algo": self.cfg.algo,
            "config": dataclasses.asdict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self.sampler.rng, self.device),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "run_id": self.run_id,
            "obs_mean": torch.from_numpy(self.obs_mean),
            "obs_std": torch.from_numpy(self.obs_std),
            "last_loss": self.last_loss,
        }

    def save(self) -> None:
        save_checkpoint(self.checkpoint_path, self.state())
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.checkpoint_path, self.step, {Metric.TRAIN_LOSS: self.last_loss})

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint of the same configuration (anything else is refused, naming the fields)."""
        differing = config_differences(payload["config"], self.cfg)
        if differing:
            raise DmhError(f"checkpoint {self.checkpoint_path} was made with different settings: "
                           f"{', '.join(differing)}")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.rng = payload["rng"]
        self.step, self.train_seconds = payload["step"], payload["train_seconds"]
        self.run_id, self.last_loss = payload["run_id"], payload["last_loss"]

    def resume_if_possible(self, checkpoint: Path | None = None) -> bool:
        """Continue from ``checkpoint`` (default: this run's own) if it exists."""
        checkpoint = checkpoint or self.checkpoint_path
        if not checkpoint.exists():
            return False
        self.restore(load_checkpoint(checkpoint))
        log.info("resuming %s from step %d", self.run_dir.name, self.step)
        return True

    # ---------------------------------------------------------------------------------------------------- training
    def train_step(self) -> dict[str, float]:
        """One gradient update; returns its loss (``loss``) and the parts the model reports beside it."""
        self.model.train()
        batch = to_device(self.sampler.sample(self.cfg.batch_size), self.device)
        loss, parts = self.model.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in clip_groups(self.model, self.cfg.grad_clip_scope):
            torch.nn.utils.clip_grad_norm_(group, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {**parts, "loss": float(loss.detach())}

    def evaluate(self) -> EvalResult:
        """Online evaluation without touching the training RNG streams (resume stays exact). Only the training
        device's CUDA stream is forked: forking them all would start a CUDA context on every visible GPU."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return evaluate_online(self.model, self.spec, self.obs_mean, self.obs_std, n_tasks=self.cfg.eval_tasks,
                                   episodes=self.cfg.eval_episodes, seed=self.cfg.eval_seed,
                                   sample=self.cfg.eval_sample)

    def held_out_loss(self) -> float | None:
        """The model's loss (eval mode) on the held-out tasks' batch (None without one), leaving every random stream
        as it was (resume stays exact)."""
        if self.held_out_batch is None:
            return None
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            loss, _ = self.model.loss(to_device(self.held_out_batch, self.device))
        return float(loss)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step)

    def fit(self, stop_after: int | None = None) -> TrainResult | None:
        """Train to ``cfg.steps``; ``stop_after`` stops early after that many updates (to test resume)."""
        cfg = self.cfg
        restore_rng(self.rng, self.sampler.rng, self.device)  # independent of whatever ran in this process before
        window: list[dict[str, float]] = []
        timer = time.perf_counter()
        steps = range(self.step, cfg.steps)
        for updates, _ in enumerate(progress(steps, desc=f"train {self.run_dir.name}", total=len(steps)), start=1):
            window.append(self.train_step())
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.last_loss = float(np.mean([w["loss"] for w in window]))
                parts = {key: float(np.mean([w[key] for w in window])) for key in Metric.LOSS_PARTS if key in window[0]}
                window.clear()
                self.log_metrics({Metric.TRAIN_LOSS: self.last_loss,
                                  **{Metric.LOSS_PARTS[key]: value for key, value in parts.items()}}, self.step)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self.train_seconds += time.perf_counter() - timer
                result = self.evaluate()
                held_out = self.held_out_loss()
                self.log_metrics({Metric.LAST_RETURN_DURING_TRAINING: result.last_return,
                                  Metric.FIRST_RETURN_DURING_TRAINING: result.first_return,
                                  Metric.LAST_RETURN_SE_DURING_TRAINING: result.last_return_se,
                                  **({} if held_out is None else {Metric.HELD_OUT_LOSS_DURING_TRAINING: held_out})},
                                 self.step)
                timer = time.perf_counter()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.train_seconds += time.perf_counter() - timer
                self.save()
                timer = time.perf_counter()
            if stop_after is not None and updates >= stop_after:
                return None
        self.train_seconds += time.perf_counter() - timer
        if not self.checkpoint_path.exists():  # resumed from a checkpoint kept elsewhere (a Tune trial restored on
            # another worker) that had already reached the last update: nothing trained, so nothing saved here yet
            save_checkpoint(self.checkpoint_path, self.state())
        evaluation = self.evaluate()
        return TrainResult(self.run_id, self.checkpoint_path, self.last_loss, evaluation, self.train_seconds,
                           self.step)


def nothing_to_resume(cfg: TrainConfig) -> str:
    """Why ``--resume`` finds no checkpoint for ``cfg``: with the checkpoint of the same algo, task and seed that
    ``run_dir`` holds (the latest), the settings by which it differs; a changed setting changes the run's name."""
    who = f"{cfg.algo} / {cfg.task} / seed {cfg.seed}"
    found = sorted(Path(cfg.run_dir).glob(f"{cfg.algo}_{cfg.task}_n*_c*_s{cfg.seed}_*/checkpoint.pt"),
                   key=lambda path: path.stat().st_mtime)
    if not found:
        return (f"--resume: nothing to resume: no checkpoint {cfg.checkpoint_path}, and none for {who} in "
                f"{cfg.run_dir}; start a new run without --resume (or with --resume-or-start)")
    saved, now = load_checkpoint(found[-1])["config"], dataclasses.asdict(cfg)
    changed = []
    for key in config_differences(saved, cfg):
        if key == "model":  # name the model fields, not two whole mappings
            old, new = saved.get(key) or {}, now[key]
            changed += [f"model.{k} {old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
                        if old.get(k) != new.get(k)]
        else:
            changed.append(f"{key} {saved.get(key)!r} (now {now.get(key)!r})")
    return (f"--resume: no checkpoint for these settings ({cfg.checkpoint_path}); the checkpoint of {who} at "
            f"{found[-1]} was made with other settings: {', '.join(changed) or 'none (another dmh version?)'}. "
            "Resume with those settings, or start a new run without --resume (or with --resume-or-start)")


def offline_hours_per_10k(train_seconds: float, steps: int) -> float:
    """The paper's Table 4 unit: hours per 10k gradient updates."""
    return train_seconds / max(steps, 1) * 10_000 / 3600
