"""Which gymnasium MuJoCo environment evaluates each D4RL locomotion dataset, and how to build it.

D4RL's v2 data were collected in gym's mujoco-py ``HalfCheetah-v3`` / ``Hopper-v3`` / ``Walker2d-v3``, which no longer
run. Online evaluation uses gymnasium's maintained **v5** environments: same observations, actions, reward terms and
1000-step limit. One exception keeps the data's dynamics: v5's Walker2d model gives the right foot friction 1.9 where
v2-v4 (and so the D4RL data) had 0.9, so Walker2d-v5 is built from the v2-v4 model file ``walker2d.xml``, which
gymnasium still ships. The reasons and the remaining differences are in docs/d4rl.md.

MuJoCo itself is the optional extra ``dmh[mujoco]``: it is imported only when an environment is built.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from dmh.errors import DmhError

logger = logging.getLogger(__name__)

D4RL_ENVS = ("halfcheetah", "hopper", "walker2d")
D4RL_DATASET_KINDS = ("medium", "medium-replay", "medium-expert")
# The nine datasets of the DM-H paper, in D4RL's own naming ("hopper-medium-replay-v2").
D4RL_DATASETS = tuple(f"{env}-{kind}-v2" for env in D4RL_ENVS for kind in D4RL_DATASET_KINDS)
MAX_EPISODE_STEPS = 1000  # D4RL's episode length, and the time limit of the gymnasium environments
ACTION_LOW, ACTION_HIGH = -1.0, 1.0  # every actuator's control range, in the data and in the environments


@dataclass(frozen=True)
class MujocoSpec:
    """The gymnasium environment that evaluates one D4RL environment family."""

    gym_id: str  # gymnasium id, e.g. "Hopper-v5"
    obs_dim: int  # observation size, identical in the D4RL files and the gymnasium environment
    act_dim: int  # action size (every action lies in [ACTION_LOW, ACTION_HIGH])
    make_kwargs: dict[str, Any] = field(default_factory=dict)  # extra gymnasium.make arguments


MUJOCO_SPECS: dict[str, MujocoSpec] = {
    "halfcheetah": MujocoSpec("HalfCheetah-v5", obs_dim=17, act_dim=6),
    "hopper": MujocoSpec("Hopper-v5", obs_dim=11, act_dim=3),
    # The v2-v4 model: both feet as in the data (v5's walker2d_v5.xml raises the right foot's friction to 1.9).
    "walker2d": MujocoSpec("Walker2d-v5", obs_dim=17, act_dim=6, make_kwargs={"xml_file": "walker2d.xml"}),
}


def _unknown(name: object, kind: str, valid: tuple[str, ...]) -> DmhError:
    """An error naming the bad value, the closest valid one if any, and every valid value."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DmhError(f"unknown {kind} {name!r}{hint}; valid: {', '.join(valid)}")


def parse_d4rl_name(name: str) -> tuple[str, str]:
    """Split a dataset name such as ``"hopper-medium-replay-v2"`` into ``("hopper", "medium-replay")``."""
    if name not in D4RL_DATASETS:
        raise _unknown(name, "D4RL dataset", D4RL_DATASETS)
    env, rest = name.split("-", 1)
    return env, rest.removesuffix("-v2")


def mujoco_env_name(name: str) -> str:
    """The environment family (``"hopper"``) of an environment name or of one of the nine dataset names."""
    if name in D4RL_ENVS:
        return name
    if name in D4RL_DATASETS:
        return parse_d4rl_name(name)[0]
    raise _unknown(name, "D4RL environment or dataset", D4RL_ENVS + D4RL_DATASETS)


def mujoco_spec(name: str) -> MujocoSpec:
    """The evaluation environment of an environment family or dataset name."""
    return MUJOCO_SPECS[mujoco_env_name(name)]


def mujoco_spaces(name: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The observation space (unbounded) and the action space ([-1, 1] per actuator) of a D4RL environment or dataset,
    built without MuJoCo. ``make_mujoco_env`` refuses an environment whose spaces differ, so the two cannot drift."""
    spec = mujoco_spec(name)
    return (gym.spaces.Box(-np.inf, np.inf, shape=(spec.obs_dim,), dtype=np.float64),
            gym.spaces.Box(ACTION_LOW, ACTION_HIGH, shape=(spec.act_dim,), dtype=np.float32))


def gym_env_id(name: str) -> str:
    """The gymnasium id that evaluates a D4RL dataset or environment: ``"hopper-medium-v2"`` -> ``"Hopper-v5"``."""
    return mujoco_spec(name).gym_id


def make_mujoco_env(name: str, **kwargs: Any) -> gym.Env:
    """Build the evaluation environment of a D4RL dataset or environment; ``kwargs`` go to ``gymnasium.make``."""
    spec = mujoco_spec(name)
    try:
        import mujoco
    except ImportError:
        raise DmhError(
            f"{spec.gym_id} needs MuJoCo, which is not installed: pip install 'dmh[mujoco]' (gymnasium[mujoco])"
        ) from None
    # gymnasium's half_cheetah.xml uses a compiler attribute MuJoCo 3+ deprecates; left alone, MuJoCo prints the
    # warning and appends it to MUJOCO_LOG.TXT in the working directory on every build. Log it instead.
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: logger.debug("MuJoCo (%s): %s", spec.gym_id, message))
    try:
        env = gym.make(spec.gym_id, **{**spec.make_kwargs, **kwargs})
    finally:
        mujoco.set_mju_user_warning(previous)
    observation_space, action_space = mujoco_spaces(name)
    if env.observation_space.shape != observation_space.shape or env.action_space != action_space:
        env.close()
        raise DmhError(f"{spec.gym_id} has observation space {env.observation_space} and action space "
                       f"{env.action_space}, but its D4RL data have {observation_space} and {action_space}: this "
                       "gymnasium version changed the environment")
    return env


class MujocoBatch:
    """The ``BatchCore`` protocol over a list of gymnasium MuJoCo environments, one per row (online D4RL evaluation).

    MuJoCo steps one environment at a time anyway; this only gives evaluation the same per-row interface as the
    numpy cores: reset chosen rows, step all, and freeze a row whose episode ended until it is reset.
    """

    def __init__(self, name: str, batch_size: int) -> None:
        self.envs = [make_mujoco_env(name) for _ in range(batch_size)]
        self.batch_size = batch_size
        self.num_actions = mujoco_spec(name).act_dim
        self.observation_space = self.envs[0].observation_space
        self.ended = np.ones(batch_size, dtype=bool)
        self._obs = np.zeros((batch_size, self.observation_space.shape[0]), dtype=np.float32)

    @property
    def tasks(self) -> np.ndarray:
        return np.zeros((self.batch_size, 1))

    def reset(self, rng: np.random.Generator, tasks: np.ndarray | None = None,
              rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.ones(self.batch_size, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
        for b in np.flatnonzero(rows):
            self._obs[b] = self.envs[b].reset(seed=int(rng.integers(2**31)))[0]
            self.ended[b] = False
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        reward = np.zeros(self.batch_size, dtype=np.float32)
        terminated = np.zeros(self.batch_size, dtype=bool)
        truncated = np.zeros(self.batch_size, dtype=bool)
        for b in np.flatnonzero(~self.ended):
            obs, r, terminated[b], truncated[b], _ = self.envs[b].step(np.asarray(actions[b], dtype=np.float32))
            self._obs[b], reward[b] = obs, r
        self.ended |= terminated | truncated
        return self._obs.copy(), reward, terminated, truncated
