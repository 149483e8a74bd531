"""Environments: Grid World families and T-maze (gymnasium classes over shared batched cores), D4RL MuJoCo ids."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dmh.envs.core import BatchCore, CoreEnv
from dmh.envs.gridworld import FAMILIES, GridFamily, GridWorldCore, GridWorldEnv, grid_family
from dmh.envs.gridworld import tasks as _grid_tasks
from dmh.envs.tmaze import TMazeCore, TMazeEnv

TMAZE_IDS = {"dmh/TMaze-v0": False, "dmh/TMazeActive-v0": True}  # id -> active variant


def register_envs() -> None:
    """Register every dmh environment with gymnasium (idempotent; called when ``dmh`` is imported)."""
    for env_id, family in FAMILIES.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="dmh.envs.gridworld:GridWorldEnv", kwargs={"family": family.name})
    for env_id, active in TMAZE_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="dmh.envs.tmaze:TMazeEnv", kwargs={"active": active})


def tasks(env_id: str, split: str = "train") -> np.ndarray:
    """A Grid World family's fixed task list (``split`` = "train": 60 tasks, or "test": held out)."""
    return _grid_tasks(env_id, split)


__all__ = [
    "FAMILIES",
    "TMAZE_IDS",
    "BatchCore",
    "CoreEnv",
    "GridFamily",
    "GridWorldCore",
    "GridWorldEnv",
    "TMazeCore",
    "TMazeEnv",
    "grid_family",
    "register_envs",
    "tasks",
]
