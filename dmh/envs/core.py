"""What every environment family here shares: a batched numpy core holding the rules, and one gymnasium adapter.

Each family (Grid World, T-maze) writes its rules once, as a ``BatchCore`` that steps many independent copies of the
environment at once (data generation and evaluation use it directly). The gymnasium classes are the same core with a
batch of one, so the two paths cannot disagree.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np


class BatchCore(ABC):
    """Rules of one environment family over a batch of ``B`` independent copies (numpy, no Python loop over B)."""

    num_actions: int
    observation_space: gym.spaces.Box  # from the family's ``spaces`` function, which datasets are checked against
    action_space: gym.spaces.Discrete

    @abstractmethod
    def reset(self, rng: np.random.Generator, tasks: np.ndarray | None = None,
              rows: np.ndarray | None = None) -> np.ndarray:
        """Start a new episode in every copy (or only where ``rows`` [B] is true) and return observations [B, obs_dim].

        ``tasks`` [B, task_dim] fixes each copy's task; None draws them (or keeps the current ones) from ``rng``.
        Copies outside ``rows`` keep their state, task and episode (online evaluation restarts each copy on its own).
        """

    @abstractmethod
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Apply actions [B]; return (observations [B, obs_dim], rewards [B], terminated [B], truncated [B])."""

    @property
    @abstractmethod
    def tasks(self) -> np.ndarray:
        """[B, task_dim] the current task of every copy."""


class CoreEnv(gym.Env):
    """A gymnasium environment that is a ``BatchCore`` with a batch of one."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(self, core: BatchCore, task: np.ndarray | None = None) -> None:
        self.core = core
        self.action_space = core.action_space
        self.observation_space = core.observation_space
        self._fixed_task = None if task is None else np.asarray(task, dtype=np.float64).reshape(1, -1)

    def _draw_task(self, rng: np.random.Generator) -> np.ndarray | None:
        """The task for the next episode when none was fixed; None lets the core draw it."""
        return None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and options.get("task") is not None:
            self._fixed_task = np.asarray(options["task"], dtype=np.float64).reshape(1, -1)
        task = self._fixed_task if self._fixed_task is not None else self._draw_task(self.np_random)
        obs = self.core.reset(self.np_random, task)
        return obs[0], {"task": self.core.tasks[0].copy()}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}; expected an integer in [0, {self.core.num_actions})")
        obs, reward, terminated, truncated = self.core.step(np.asarray([action], dtype=np.int64))
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}
