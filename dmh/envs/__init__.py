"""Environments: Grid World families and T-maze (gymnasium classes over shared batched cores), D4RL MuJoCo ids."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dmh.envs.core import BatchCore, CoreEnv
from dmh.envs.gridworld import FAMILIES, GridFamily, GridWorldCore, GridWorldEnv, grid_family
from dmh.envs.gridworld import spaces as _grid_spaces
from dmh.envs.gridworld import tasks as _grid_tasks
from dmh.envs.mujoco import D4RL_DATASETS, mujoco_spaces
from dmh.envs.tmaze import TMazeCore, TMazeEnv
from dmh.envs.tmaze import spaces as _tmaze_spaces
from dmh.errors import DmhError

TMAZE_IDS = {"dmh/TMaze-v0": False, "dmh/TMazeActive-v0": True}  # id -> active variant
# What a dataset's metadata may name as its environment: a gymnasium id of ours, or a D4RL dataset name.
KNOWN_ENV_IDS = (*FAMILIES, *TMAZE_IDS, *D4RL_DATASETS)


def register_envs() -> None:
    """Register every dmh environment with gymnasium (idempotent; called when ``dmh`` is imported)."""
    for env_id, family in FAMILIES.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="dmh.envs.gridworld:GridWorldEnv", kwargs={"family": family.name})
    for env_id, active in TMAZE_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="dmh.envs.tmaze:TMazeEnv", kwargs={"active": active})


def spaces(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Space]:
    """(observation space, action space) of an environment in ``KNOWN_ENV_IDS``, built without instantiating it
    (MuJoCo may be absent): the same definitions the gymnasium classes use, so data checked against them fit the
    environments that evaluate. Any other id is a ``DmhError`` listing the known ones."""
    if env_id in FAMILIES:
        return _grid_spaces(FAMILIES[env_id])
    if env_id in TMAZE_IDS:
        return _tmaze_spaces()
    if env_id in D4RL_DATASETS:
        return mujoco_spaces(env_id)
    raise DmhError(f"unknown environment {env_id!r}; known: {', '.join(KNOWN_ENV_IDS)}")


def tasks(env_id: str, split: str = "train") -> np.ndarray:
    """A Grid World family's fixed task list (``split`` = "train": 60 tasks, or "test": held out)."""
    return _grid_tasks(env_id, split)


__all__ = [
    "FAMILIES",
    "KNOWN_ENV_IDS",
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
    "spaces",
    "tasks",
]
