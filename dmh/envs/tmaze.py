"""T-maze (Ni et al. 2023, "When Do Transformers Shine in RL?", ``TMazeClassicPassive`` / ``TMazeClassicActive``).

A corridor x = 0 … o + L along y = 0 (o = 0 passive, o = 1 active: the clue lies one cell behind the start), with two
goal cells (x = o + L, y = ±1). The goal side g ∈ {−1, +1} is drawn at reset (it is the task). Observations are
ambiguous 2-vectors: ``[0, g]`` at the clue cell x = 0 on its first visit only, ``[0, 0]`` elsewhere in the corridor,
``[1, y]`` at the junction or a goal cell. Actions: 0 right, 1 up, 2 left, 3 down; illegal moves leave the agent in
place. The episode lasts o + L + 1 steps (+ o more for the step back in the active variant: L + 3 in all), after which
the reward is 1 if y = g. Every earlier step costs 1/L while the agent lags the optimal pace (x < t − o), so the
maximum return is 1 and it needs the first observation remembered for L steps.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dmh.envs.core import BatchCore, CoreEnv
from dmh.errors import DmhError

MOVES = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)  # right, up, left, down


def check_memory_length(memory_length: object) -> int:
    """The corridor length L must be a positive integer."""
    if isinstance(memory_length, bool) or not isinstance(memory_length, int | np.integer) or memory_length <= 0:
        raise DmhError(f"T-maze memory_length must be a positive integer, got {memory_length!r}")
    return int(memory_length)


def spaces() -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    """The observation space (``[0 or 1, y or g]``, every entry in [-1, 1]) and the action space of both variants at
    every memory length: what the gymnasium class declares and what a T-maze dataset is checked against."""
    return gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32), gym.spaces.Discrete(len(MOVES))


class TMazeCore(BatchCore):
    """The T-maze rules over a batch of independent copies (passive, or active with ``active=True``)."""

    num_actions = len(MOVES)

    def __init__(self, memory_length: int, batch_size: int, active: bool = False) -> None:
        self.observation_space, self.action_space = spaces()
        self.memory_length = check_memory_length(memory_length)
        self.batch_size = batch_size
        self.oracle_length = 1 if active else 0  # o: cells between the clue and the start
        self.junction = self.oracle_length + self.memory_length  # x of the junction and the goal cells
        self.horizon = self.memory_length + 1 + 2 * self.oracle_length  # episode length
        self.penalty = -1.0 / self.memory_length  # per step behind the optimal pace (Ni et al.'s registered value)
        self.goal = np.ones(batch_size, dtype=np.int64)  # [B] goal side g ∈ {−1, +1}
        self.x = np.zeros(batch_size, dtype=np.int64)  # [B]
        self.y = np.zeros(batch_size, dtype=np.int64)  # [B]
        self.t = np.zeros(batch_size, dtype=np.int64)  # [B] steps taken this episode
        self.clue_seen = np.zeros(batch_size, dtype=bool)  # [B] the clue has been shown once
        self.ended = np.ones(batch_size, dtype=bool)  # [B] the episode is over (until the next reset)

    @property
    def tasks(self) -> np.ndarray:
        return self.goal[:, None].astype(np.float64)

    @property
    def max_return(self) -> float:
        return 1.0

    def _observe(self) -> np.ndarray:
        at_clue = (self.x == 0) & ~self.clue_seen
        self.clue_seen |= self.x == 0
        at_end = self.x == self.junction
        obs = np.zeros((self.batch_size, 2), dtype=np.float32)
        obs[:, 0] = at_end
        obs[:, 1] = np.where(at_clue, self.goal, np.where(at_end, self.y, 0))
        return obs

    def reset(self, rng: np.random.Generator, tasks: np.ndarray | None = None,
              rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.ones(self.batch_size, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
        if tasks is None:
            goal = rng.choice(np.array([-1, 1]), size=self.batch_size)
        else:
            goal = np.broadcast_to(np.asarray(tasks, dtype=np.float64).reshape(-1), (self.batch_size,))
            if not np.isin(goal, (-1.0, 1.0)).all():
                raise DmhError(f"a T-maze task is the goal side, -1 or +1; got {goal.tolist()}")
        self.goal = np.where(rows, goal.astype(np.int64), self.goal)
        self.x[rows] = self.oracle_length
        self.y[rows] = 0
        self.t[rows] = 0
        self.clue_seen[rows] = False
        self.ended[rows] = False
        return self._observe()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        live = ~self.ended
        nx, ny = self.x + MOVES[actions, 0], self.y + MOVES[actions, 1]
        in_corridor = (ny == 0) & (nx >= 0) & (nx <= self.junction)
        in_goal_cell = (nx == self.junction) & (np.abs(ny) == 1)
        legal = live & (in_corridor | in_goal_cell)
        self.x = np.where(legal, nx, self.x)
        self.y = np.where(legal, ny, self.y)
        self.t += live
        truncated = live & (self.t >= self.horizon)
        lagging = self.x < self.t - self.oracle_length
        reward = np.where(truncated, (self.y == self.goal).astype(np.float32), lagging * np.float32(self.penalty))
        reward = np.where(live, reward, 0.0).astype(np.float32)
        self.ended |= truncated
        return self._observe(), reward, np.zeros_like(truncated), truncated


class TMazeEnv(CoreEnv):
    """Gymnasium view of one T-maze: ``gymnasium.make("dmh/TMaze-v0", memory_length=L)``."""

    def __init__(self, memory_length: int = 10, active: bool = False, task: float | None = None) -> None:
        super().__init__(TMazeCore(memory_length, 1, active=active), None if task is None else np.array([task]))
