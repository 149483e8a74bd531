"""Grid World (Darkroom, Darkroom Hard, Dark Key-to-Door and their 40×40 Large versions), after AD (Laskin et al. 2023).

The agent observes only its own integer (x, y); the goal (or the key and the door) is invisible and must be inferred
from rewards, which is what makes in-context learning necessary. Rules (``docs/reference/environments.md``):

- Darkroom: +1 on every step the agent stands on the goal; the episode ends only at the horizon H.
- Darkroom Hard: +1 the first time the goal is reached, and the episode ends there (or at H).
- Dark Key-to-Door: +1 the first time the key is reached, +1 on reaching the door while holding the key, which ends
  the episode (or H). Start: a random cell drawn from the environment's RNG. A key and a door never share a cell.

Actions: 0 left (x−1), 1 right (x+1), 2 up (y+1), 3 down (y−1), 4 stay; moves off the grid leave the agent in place.
Rewards are given for the cell the agent is in after its move, so an agent that starts on the goal is rewarded only
if it stays there.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from dmh.envs.core import BatchCore, CoreEnv
from dmh.errors import DmhError

MOVES = np.array([[-1, 0], [1, 0], [0, 1], [0, -1], [0, 0]], dtype=np.int64)  # left, right, up, down, stay
NUM_TRAIN_TASKS = 60  # the paper: "we randomly create 60 tasks" per environment


@dataclass(frozen=True)
class GridFamily:
    """One Grid World task family: its size, horizon and reward rule."""

    env_id: str  # gymnasium id, e.g. "dmh/Darkroom-v0"
    name: str  # short name used by the CLI and configs, e.g. "darkroom"
    size: int  # the grid is size × size cells
    horizon: int  # episode length H
    rule: str  # "darkroom" | "darkroom_hard" | "key_to_door"
    num_test_tasks: int  # held-out tasks for evaluation, disjoint from the 60 training tasks
    target_return: float  # the paper's test-time target return (Appendix Table 3)

    @property
    def random_start(self) -> bool:
        return self.rule == "key_to_door"

    @property
    def task_dim(self) -> int:
        return 4 if self.rule == "key_to_door" else 2

    @property
    def max_return(self) -> float:
        """Return of an agent that knows the task and starts where the worst task puts it (a bound, not a mean)."""
        return {"darkroom": float(self.horizon), "darkroom_hard": 1.0, "key_to_door": 2.0}[self.rule]


# Test-task counts: every unseen goal cell for the 9×9 Darkrooms (81 − 60 = 21); 20 elsewhere, which keeps online
# evaluation of the transformer baselines affordable on a CPU. See docs/reproduction.md.
FAMILIES: dict[str, GridFamily] = {
    f.env_id: f
    for f in (
        GridFamily("dmh/Darkroom-v0", "darkroom", 9, 20, "darkroom", 21, 20.0),
        GridFamily("dmh/DarkroomHard-v0", "darkroom-hard", 9, 20, "darkroom_hard", 21, 1.0),
        GridFamily("dmh/DarkKeyToDoor-v0", "key-to-door", 9, 50, "key_to_door", 20, 2.0),
        GridFamily("dmh/LargeDarkroom-v0", "large-darkroom", 40, 200, "darkroom", 20, 15.0),
        GridFamily("dmh/LargeDarkroomHard-v0", "large-darkroom-hard", 40, 200, "darkroom_hard", 20, 1.0),
        GridFamily("dmh/LargeDarkKeyToDoor-v0", "large-key-to-door", 40, 500, "key_to_door", 20, 2.0),
    )
}


def grid_family(name_or_id: str) -> GridFamily:
    """Look up a family by gymnasium id or short name; unknown names get a ``DmhError`` listing the valid ones."""
    for family in FAMILIES.values():
        if name_or_id in (family.env_id, family.name):
            return family
    valid = ", ".join(f"{f.name} ({f.env_id})" for f in FAMILIES.values())
    raise DmhError(f"unknown Grid World environment {name_or_id!r}; valid: {valid}")


def _all_tasks_shuffled(family: GridFamily) -> np.ndarray:
    """Every needed task of the family in a fixed pseudo-random order (seeded by the family name, not by time)."""
    rng = np.random.default_rng(zlib.crc32(family.name.encode()))
    cells = family.size * family.size
    needed = NUM_TRAIN_TASKS + family.num_test_tasks
    if family.rule == "key_to_door":
        pairs = rng.choice(cells * (cells - 1), size=needed, replace=False)
        key, door = pairs // (cells - 1), pairs % (cells - 1)
        door = door + (door >= key)  # skip the key's own cell: key and door are always distinct
        flat = np.stack([key, door], axis=1)
    else:
        flat = rng.permutation(cells)[:needed, None]
    xy = np.stack([flat % family.size, flat // family.size], axis=-1)  # [needed, 1 or 2, 2]
    return xy.reshape(needed, -1).astype(np.int64)


def tasks(env_id: str, split: str = "train") -> np.ndarray:
    """The family's fixed task list: ``split="train"`` (60 tasks) or ``"test"`` (held out, disjoint from train).

    Rows are (goal_x, goal_y) for the Darkrooms and (key_x, key_y, door_x, door_y) for Key-to-Door.
    """
    family = grid_family(env_id)
    ordered = _all_tasks_shuffled(family)
    if split == "train":
        return ordered[:NUM_TRAIN_TASKS].copy()
    if split == "test":
        return ordered[NUM_TRAIN_TASKS:].copy()
    raise DmhError(f"unknown task split {split!r}; use 'train' or 'test'")


def spaces(family: GridFamily) -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    """The observation space (the agent's integer (x, y), inside the grid) and the action space of a family: what the
    gymnasium class declares and what a dataset of the family is checked against (``dmh.envs.spaces``)."""
    return gym.spaces.Box(0, family.size - 1, shape=(2,), dtype=np.int64), gym.spaces.Discrete(len(MOVES))


def check_task(family: GridFamily, task: np.ndarray) -> np.ndarray:
    """Validate task rows [B, task_dim] (integers inside the grid, key ≠ door) and return them as int64."""
    task = np.asarray(task)
    if task.ndim != 2 or task.shape[1] != family.task_dim:
        raise DmhError(f"{family.name}: a task has {family.task_dim} coordinates, got shape {task.shape[1:]}")
    as_int = np.rint(task).astype(np.int64)
    if not np.array_equal(as_int, task) or as_int.min() < 0 or as_int.max() >= family.size:
        raise DmhError(f"{family.name}: task coordinates must be integers in [0, {family.size}), got {task.tolist()}")
    if family.rule == "key_to_door" and (as_int[:, :2] == as_int[:, 2:]).all(axis=1).any():
        raise DmhError(f"{family.name}: the key and the door must be different cells, got {task.tolist()}")
    return as_int


class GridWorldCore(BatchCore):
    """The Grid World rules over a batch of independent copies; a copy whose episode ended stays frozen."""

    num_actions = len(MOVES)

    def __init__(self, family: GridFamily, batch_size: int) -> None:
        self.family = family
        self.batch_size = batch_size
        self.observation_space, self.action_space = spaces(family)
        self._tasks = np.zeros((batch_size, family.task_dim), dtype=np.int64)
        self.pos = np.zeros((batch_size, 2), dtype=np.int64)  # [B, 2] agent (x, y)
        self.t = np.zeros(batch_size, dtype=np.int64)  # [B] steps taken this episode
        self.has_key = np.zeros(batch_size, dtype=bool)  # [B] Key-to-Door: key collected this episode
        self.ended = np.ones(batch_size, dtype=bool)  # [B] the episode is over (until the next reset)

    @property
    def tasks(self) -> np.ndarray:
        return self._tasks

    def reset(self, rng: np.random.Generator, tasks: np.ndarray | None = None,
              rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.ones(self.batch_size, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
        if tasks is not None:
            new_tasks = check_task(self.family, np.broadcast_to(tasks, self._tasks.shape))
            self._tasks = np.where(rows[:, None], new_tasks, self._tasks)
        if self.family.random_start:
            start = rng.integers(0, self.family.size, size=(self.batch_size, 2))
        else:
            start = np.full((self.batch_size, 2), self.family.size // 2, dtype=np.int64)
        self.pos = np.where(rows[:, None], start, self.pos)
        self.t[rows] = 0
        self.has_key[rows] = False
        self.ended[rows] = False
        return self.pos.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        live = ~self.ended
        moved = np.clip(self.pos + MOVES[actions], 0, self.family.size - 1)
        self.pos = np.where(live[:, None], moved, self.pos)
        self.t += live
        at_first = (self.pos == self._tasks[:, :2]).all(axis=1) & live  # goal, or key for Key-to-Door
        if self.family.rule == "darkroom":
            reward, terminated = at_first.astype(np.float32), np.zeros_like(live)
        elif self.family.rule == "darkroom_hard":
            reward, terminated = at_first.astype(np.float32), at_first
        else:
            at_door = (self.pos == self._tasks[:, 2:]).all(axis=1) & live
            got_key = at_first & ~self.has_key
            opened = at_door & self.has_key
            self.has_key |= got_key
            reward, terminated = (got_key.astype(np.float32) + opened), opened
        truncated = live & ~terminated & (self.t >= self.family.horizon)
        self.ended |= terminated | truncated
        return self.pos.copy(), reward, terminated, truncated


class GridWorldEnv(CoreEnv):
    """Gymnasium view of one Grid World copy. ``task=`` fixes the task; otherwise each reset draws one from the
    family's ``split`` task list with the seeded RNG."""

    def __init__(self, family: str, task: np.ndarray | tuple | None = None, split: str = "train") -> None:
        self.family = grid_family(family)
        self._task_list = tasks(self.family.env_id, split)
        if task is not None:
            task = check_task(self.family, np.asarray(task).reshape(1, -1))
        super().__init__(GridWorldCore(self.family, 1), task)

    def _draw_task(self, rng: np.random.Generator) -> np.ndarray:
        return self._task_list[rng.integers(len(self._task_list))][None]
