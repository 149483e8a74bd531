"""Checkpoints: everything needed to resume exactly (model, optimizer, scheduler, RNG states, step, MLflow run id,
resolved config, observation normaliser), written atomically and loaded with ``torch.load(weights_only=True)`` so a
checkpoint file can never execute code."""

from __future__ import annotations

import dataclasses
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmh.errors import DmhError
from dmh.io import atomic_path
from dmh.models import build_model, config_class
from dmh.tasks import resolve_task
from dmh.training.config import DEFAULTS, task_defaults
from dmh.vocabulary import RUNTIME_FIELDS

CHECKPOINT_FORMAT = 3  # 3: the config is the resolved run, its model config inside (2 kept the model config beside
# a config of overrides; 1 also called DM-H's c block_size)


def rng_state(sampler_rng: np.random.Generator, device: torch.device | None = None) -> dict[str, Any]:
    """Every random stream training draws from, as plain types and tensors (loadable with weights_only). Training on
    a CUDA ``device`` also draws from that device's generator (dropout, DM-H's block choice and z samples)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
             "sampler": sampler_rng.bit_generator.state, "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)  # a CPU tensor, like the others
    return state


def restore_rng(state: dict[str, Any], sampler_rng: np.random.Generator, device: torch.device | None = None) -> None:
    """Back to ``state``; a CUDA ``device`` gets the saved CUDA stream if there is one (a checkpoint made on a GPU,
    resumed on any GPU; one made on a CPU leaves the seeded CUDA stream as it is)."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    sampler_rng.bit_generator.state = state["sampler"]
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(x: Any) -> Any:
    """Lists back to tuples (what random/numpy expect) after a round trip."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load safely (no code execution); a missing, truncated or foreign file is a ``DmhError``."""
    path = Path(path)
    if not path.is_file():
        raise DmhError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise DmhError(f"{path} is not a readable dmh checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") not in (1, 2, CHECKPOINT_FORMAT):
        raise DmhError(f"{path} is not a dmh checkpoint of format {CHECKPOINT_FORMAT}")
    if payload["format"] < CHECKPOINT_FORMAT:
        upgrade(payload)
    return payload


def upgrade(payload: dict[str, Any]) -> None:
    """A format 1 or 2 checkpoint as format 3: the model config it kept beside its config goes inside it, and the
    settings it left to the task are filled in by today's rules (what those versions did for every setting but
    ``history_window``, whose ``auto`` was ``aligned`` for every AD before the any-offset windows)."""
    model = payload.pop("model_config")
    if "block_size" in model:  # format 1
        model["c"] = model.pop("block_size")
    config = payload["config"]
    config["history_window"] = "aligned" if config.get("history_window", "auto") == "auto" else config["history_window"]
    config.update(task_defaults({**DEFAULTS, **config}, resolve_task(config["task"])), model=model)
    payload["format"] = CHECKPOINT_FORMAT


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights strictly."""
    algo = payload["algo"]
    model = build_model(algo, config_class(algo)(**payload["config"]["model"]))
    load_weights(model, payload["model"], "checkpoint")
    return model


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; a different architecture is a ``DmhError`` naming the first mismatching parameters."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:3]
        raise DmhError(f"{source} is from a different architecture: {' '.join(s.strip() for s in first)}") from None


def config_differences(saved: dict[str, Any], current: Any) -> list[str]:
    """Fields whose values differ between a saved config dict and the current config dataclass (runtime fields
    such as the device excepted)."""
    now = dataclasses.asdict(current)
    return sorted(k for k in set(saved) | set(now) if k not in RUNTIME_FIELDS and saved.get(k) != now.get(k))
