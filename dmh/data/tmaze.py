"""T-maze offline data: episodes of a noisy oracle whose noise falls along each "history", so returns spread from
about −1 (dawdled early) through 0 (wrong side) to 1 (optimal) at any memory length.

The paper does not say how its T-maze data were made. An oracle knows the goal side from the clue. In each episode,
with probability η it *forgets* the clue (picks a side at random at the junction) and, independently with probability
η, it *dawdles* once at a uniformly random step (one step without progress, after which the junction cannot be
reached in time: every later step is penalised and the final reward is 0). η falls linearly from ``noise_start`` to
``noise_end`` along each history, so each history looks like a learner improving, which AD-style models can use, and
the sorted-by-return contexts of DM-H see the whole spread. Reasons: docs/reproduction.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dmh.data.format import EpisodeDataset
from dmh.envs.tmaze import TMazeCore, check_memory_length
from dmh.errors import DmhError

RIGHT, UP, LEFT, DOWN = 0, 1, 2, 3


@dataclass(frozen=True)
class TMazeDataConfig:
    """What ``generate_tmaze`` produces."""

    memory_length: int = 100  # corridor length L (the paper: 1k–20k)
    active: bool = False  # False: passive T-maze (the paper's, per Ni et al.); True: active variant
    histories: int = 10  # independent noisy-oracle runs
    episodes_per_history: int = 20  # episodes per run; the noise η falls linearly across them
    noise_start: float = 1.0  # η of each history's first episode
    noise_end: float = 0.0  # η of its last episode
    seed: int = 0  # seeds goal sides, forgetting and dawdling


def check_tmaze_config(cfg: TMazeDataConfig) -> None:
    check_memory_length(cfg.memory_length)
    if cfg.histories <= 0 or cfg.episodes_per_history <= 0:
        raise DmhError(f"histories and episodes_per_history must be positive, got {cfg.histories}, "
                       f"{cfg.episodes_per_history}")
    if not (0 <= cfg.noise_end <= 1 and 0 <= cfg.noise_start <= 1):
        raise DmhError(f"noise levels must lie in [0, 1], got {cfg.noise_start} and {cfg.noise_end}")


def generate_tmaze(cfg: TMazeDataConfig) -> EpisodeDataset:
    """Play every episode of every history at once (one batch row per episode) and store them history by history."""
    check_tmaze_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    rows = cfg.histories * cfg.episodes_per_history
    core = TMazeCore(cfg.memory_length, rows, active=cfg.active)
    H, o = core.horizon, core.oracle_length
    eta = np.tile(np.linspace(cfg.noise_start, cfg.noise_end, cfg.episodes_per_history), cfg.histories)  # [rows]
    obs = core.reset(rng)
    forgets = rng.random(rows) < eta
    believed = np.where(forgets, rng.choice(np.array([-1, 1]), size=rows), core.goal)  # side it will turn to
    dawdle_at = np.where(rng.random(rows) < eta, rng.integers(o, H - 1, size=rows), -1)  # step of the one dawdle

    obs_buf = np.zeros((rows, H, 2), dtype=np.float32)
    act_buf = np.zeros((rows, H), dtype=np.int64)
    rew_buf = np.zeros((rows, H), dtype=np.float32)
    end_buf = np.zeros((rows, H), dtype=bool)
    for t in range(H):
        action = np.full(rows, RIGHT)
        if o and t == 0:
            action[:] = LEFT  # active variant: step back to the clue first
        action = np.where(core.x == core.junction, np.where(believed > 0, UP, DOWN), action)
        action = np.where(dawdle_at == t, DOWN, action)  # "down" in the corridor is illegal: no progress
        obs_buf[:, t] = obs
        act_buf[:, t] = action
        obs, rew_buf[:, t], _, end_buf[:, t] = core.step(action)

    goal_index = (core.goal > 0).astype(np.int64)  # task 0: goal at y = −1, task 1: y = +1
    return EpisodeDataset(
        observations=obs_buf.reshape(-1, 2),
        actions=act_buf.reshape(-1),
        rewards=rew_buf.reshape(-1),
        terminals=np.zeros(rows * H, dtype=bool),
        timeouts=end_buf.reshape(-1),
        episode_task=goal_index,
        episode_history=np.repeat(np.arange(cfg.histories), cfg.episodes_per_history),
        tasks=np.array([[-1.0], [1.0]]),
        metadata={
            "env_id": "dmh/TMazeActive-v0" if cfg.active else "dmh/TMaze-v0",
            "env_name": f"tmaze-{cfg.memory_length}",
            "memory_length": cfg.memory_length,
            "discrete": True,
            "num_actions": core.num_actions,
            "horizon": H,
            "seed": cfg.seed,
            "generator": {"name": "noisy_oracle", "settings": asdict(cfg)},
        },
    )
