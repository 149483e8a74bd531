"""Every check a dataset passes before anything uses it, in one place. The project format's reader and writer
(``dmh.data.format``) and the D4RL readers (raw HDF5 files and local Minari copies, ``dmh.data.d4rl``) all call these,
so a file is accepted or refused by the same rules whichever way it is read.

A dataset is checked against the environment it names, through ``dmh.envs.spaces`` (the definitions the gymnasium
classes use), and its first problem is one ``DmhError`` line naming the source, the key and the first bad step:

1. keys and dtypes: observations and rewards floating point, ``terminals``/``timeouts`` bool, discrete actions
   integers and continuous ones floating point; nothing is cast silently (a terminal of 0.5 is not a flag);
2. shapes and lengths: one step per row in every step array, and at least one step;
3. values: no NaN/inf; discrete actions in [0, n); continuous actions inside the action space's bounds; observations
   inside the observation space where it is bounded (Grid World positions are integer cells of the grid);
4. episode bookkeeping (project format): the last step ends an episode, one ``episode_task``/``episode_history`` entry
   per episode, task indices inside ``tasks``.

Two tolerances exist for what the real D4RL v2 files hold:

- The replay datasets (``*-medium-replay-v2``) were converted from rlkit replay buffers by D4RL's
  scripts/generation/mujoco/convert_buffer.py, which takes ``terminals``/``timeouts`` from the buffer's ``env_infos``,
  arrays of numpy's default float64: flags of 0.0/1.0 (in D4RL issue #86 the v1 replay files' flag counts print as
  ``849.0``, the others' as integers; TFDS declares the replay files float64). Numeric flags are accepted from D4RL
  files when every value is exactly 0 or 1, and refused otherwise.
- Actions come from SAC's tanh-squashed Gaussian in float32 (scripts/generation/mujoco/collect_data.py) or uniform
  samples of the action space, so they lie in the closed interval [-1, 1] and reach exactly ±1.0 where tanh saturates
  (why IQL/jaxrl loaders clip them to ±(1 - 1e-5) before taking atanh). No real file is known to hold actions outside
  [-1, 1]; ``ACTION_TOLERANCE`` admits rounding from a re-encoding, while an action of 1.01 is still refused.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from dmh.envs import spaces
from dmh.envs.mujoco import D4RL_DATASETS, mujoco_env_name
from dmh.errors import DmhError

STEP_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")  # D4RL's names, shared by both layouts
FLAG_KEYS = ("terminals", "timeouts")
EPISODE_KEYS = ("episode_task", "episode_history")
REQUIRED_METADATA = ("env_id", "generator", "seed", "discrete")
ACTION_TOLERANCE = 1e-4  # how far outside a bounded action space an action may lie (float rounding, see above)


def _label(env_id: str) -> str:
    """How messages name an environment: D4RL datasets by their MuJoCo family ("hopper"), others by their id."""
    return mujoco_env_name(env_id) if env_id in D4RL_DATASETS else env_id


def _bad_rows(source: str, key: str, bad: np.ndarray, what: str, values: np.ndarray, unit: str = "step") -> DmhError:
    """A refusal that counts the bad rows (``bad`` [N] true where a row is bad) and shows the first one."""
    rows = np.flatnonzero(bad)
    first = int(rows[0])
    shown = np.round(values[first], 6) if values.dtype.kind == "f" else values[first]  # float32 noise hides the value
    return DmhError(f"{source}: '{key}' has {rows.size} {unit}(s) {what} (first at {unit} {first}: {shown.tolist()})")


def _interval(low: np.ndarray, high: np.ndarray) -> str:
    lo, hi = np.unique(low), np.unique(high)
    if lo.size == 1 and hi.size == 1:
        return f"[{lo[0]:g}, {hi[0]:g}]"
    return f"[{low.tolist()}, {high.tolist()}]"


def require_keys(container: Container[str], keys: tuple[str, ...], source: str) -> None:
    """Refuse a file or mapping that lacks any of ``keys``, naming every missing one."""
    missing = [k for k in keys if k not in container]
    if missing:
        raise DmhError(f"{source} lacks required key(s): {', '.join(missing)}")


def as_flags(arr: np.ndarray, key: str, source: str, *, numeric: bool = False) -> np.ndarray:
    """Episode-end flags [N] as bool. A bool array is returned as is. A numeric one is accepted only with ``numeric``
    (D4RL's replay datasets store float 0.0/1.0, see the module docstring) and only when every value is 0 or 1."""
    if arr.dtype == np.bool_:
        return arr
    if not numeric:
        raise DmhError(f"{source}: '{key}' has dtype {arr.dtype}; episode flags must be bool (a number is not cast "
                       "to a flag)")
    if arr.dtype.kind not in "iuf":
        raise DmhError(f"{source}: '{key}' has dtype {arr.dtype}; episode flags must be bool, or 0/1")
    not_flag = (arr != 0) & (arr != 1)
    if not_flag.any():
        raise _bad_rows(source, key, not_flag, f"that are neither 0 nor 1 (dtype {arr.dtype}; flags must be bool or "
                        "0/1)", arr)
    return arr == 1


def check_steps(arrays: Mapping[str, Any], env_id: str, source: str, *,
                numeric_flags: bool = False) -> tuple[gym.spaces.Box, gym.spaces.Space]:
    """Check the step arrays (``STEP_KEYS``) of a dataset of environment ``env_id`` (see the module docstring) and
    return the environment's (observation space, action space) they were checked against, resolved once here.

    ``numeric_flags`` accepts 0/1 numbers as flags (D4RL files only).
    """
    try:
        observation_space, action_space = spaces(env_id)
    except DmhError as exc:
        raise DmhError(f"{source}: {exc}") from None
    label = _label(env_id)
    data = {k: np.asarray(arrays[k]) for k in STEP_KEYS}
    for key, arr in data.items():
        if arr.dtype.kind not in "biuf":
            raise DmhError(f"{source}: '{key}' holds {arr.dtype} values, not numbers")
        if arr.ndim == 0:
            raise DmhError(f"{source}: '{key}' is a single value, not an array of steps")
    lengths = {k: int(a.shape[0]) for k, a in data.items()}
    values, counts = np.unique(list(lengths.values()), return_counts=True)
    if values.size > 1:
        common = int(values[np.argmax(counts)])
        odd = next(k for k, n in lengths.items() if n != common)
        raise DmhError(f"{source}: '{odd}' has {lengths[odd]} steps but the other arrays have {common} (mismatched "
                       "lengths: " + ", ".join(f"{k} {n}" for k, n in lengths.items()) + ")")
    n = lengths["rewards"]
    if n == 0:
        raise DmhError(f"{source} holds no steps (an empty dataset)")
    for key in ("rewards", *FLAG_KEYS):
        if data[key].ndim != 1:
            raise DmhError(f"{source}: '{key}' must be 1-d [steps], got shape {data[key].shape}")
    for key in FLAG_KEYS:
        as_flags(data[key], key, source, numeric=numeric_flags)
    if data["observations"].ndim != 2:
        shape = data["observations"].shape
        raise DmhError(f"{source}: 'observations' must be 2-d [steps, obs_dim], got shape {shape}")
    for key in ("observations", "rewards"):
        if data[key].dtype.kind != "f":
            raise DmhError(f"{source}: '{key}' has dtype {data[key].dtype}; it must be floating point")
    for key in ("observations", "actions", "rewards"):
        arr = data[key]
        if arr.dtype.kind == "f":
            finite = np.isfinite(arr.reshape(n, -1)).all(axis=1)
            if not finite.all():
                first = int(np.flatnonzero(~finite)[0])
                raise DmhError(f"{source}: '{key}' contains NaN or inf (first at step {first})")
    _check_observations(data["observations"], observation_space, label, source)
    _check_actions(data["actions"], action_space, label, source)
    return observation_space, action_space


def _check_actions(actions: np.ndarray, space: gym.spaces.Space, label: str, source: str) -> None:
    if isinstance(space, gym.spaces.Discrete):
        if actions.dtype.kind not in "iu" or actions.ndim != 1:
            raise DmhError(f"{source}: 'actions' has dtype {actions.dtype} and shape {actions.shape}, but {label} has "
                           f"{space.n} discrete actions: they must be a 1-d integer array [steps]")
        outside = (actions < space.start) | (actions >= space.start + space.n)
        if outside.any():
            interval = f"[{space.start}, {space.start + space.n})"
            raise _bad_rows(source, "actions", outside, f"outside {label}'s actions {interval}", actions)
        return
    shape = (actions.shape[0], *space.shape)
    if actions.dtype.kind != "f":
        raise DmhError(f"{source}: 'actions' has dtype {actions.dtype}; {label}'s actions are continuous, so they "
                       "must be floating point")
    if actions.shape != shape:
        raise DmhError(f"{source}: 'actions' has shape {actions.shape} but {label} has {space.shape[0]} per step")
    outside = ((actions < space.low - ACTION_TOLERANCE) | (actions > space.high + ACTION_TOLERANCE)).any(axis=1)
    if outside.any():
        interval = _interval(space.low, space.high)
        raise _bad_rows(source, "actions", outside, f"outside {label}'s action bounds {interval} (tolerance "
                        f"{ACTION_TOLERANCE:g})", actions)


def _check_observations(observations: np.ndarray, space: gym.spaces.Box, label: str, source: str) -> None:
    if observations.shape[1:] != space.shape:
        raise DmhError(f"{source}: 'observations' has shape {observations.shape} but {label} has {space.shape[0]} "
                       "per step")
    outside = ((observations < space.low) | (observations > space.high)).any(axis=1)
    if outside.any():
        interval = _interval(space.low, space.high)
        raise _bad_rows(source, "observations", outside, f"outside {label}'s observation space {interval}",
                        observations)
    if space.dtype.kind in "iu":
        fractional = (observations != np.round(observations)).any(axis=1)
        if fractional.any():
            raise _bad_rows(source, "observations", fractional, f"with non-integer values, but {label}'s "
                            "observations are integers", observations)


def check_dataset(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], source: str) -> None:
    """Check a whole dataset in the project format (its arrays by key, as ``EpisodeDataset`` holds them, and its
    metadata): the metadata, the steps against its environment, and the episode bookkeeping."""
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise DmhError(f"{source}: metadata lacks {', '.join(missing)}")
    env_id = meta["env_id"]
    if not isinstance(env_id, str):
        raise DmhError(f"{source}: metadata 'env_id' must be an environment id, got {env_id!r}")
    if not isinstance(meta["discrete"], bool):
        raise DmhError(f"{source}: metadata 'discrete' must be true or false, got {meta['discrete']!r}")
    _, action_space = check_steps({k: arrays[k] for k in STEP_KEYS}, env_id, source)
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if meta["discrete"] != discrete:
        raise DmhError(f"{source}: metadata says discrete={meta['discrete']}, but {_label(env_id)}'s actions are "
                       f"{'discrete' if discrete else 'continuous'}")
    _check_episodes(arrays, source)


def _check_episodes(arrays: Mapping[str, np.ndarray], source: str) -> None:
    ends = arrays["terminals"] | arrays["timeouts"]
    if not ends[-1]:
        raise DmhError(f"{source}: the last episode has no terminal or timeout flag (truncated data?)")
    episodes = int(ends.sum())
    for key in EPISODE_KEYS:
        arr = np.asarray(arrays[key])
        if arr.dtype.kind not in "iu":
            raise DmhError(f"{source}: '{key}' has dtype {arr.dtype}; it must hold integer indices")
        if arr.ndim != 1 or arr.shape[0] != episodes:
            raise DmhError(f"{source}: '{key}' has {arr.shape[0] if arr.ndim else 0} entries but the data has "
                           f"{episodes} episodes (terminals | timeouts)")
    tasks = np.asarray(arrays["tasks"])
    if tasks.dtype.kind not in "iuf" or tasks.ndim != 2:
        raise DmhError(f"{source}: 'tasks' must be a 2-d array of numbers [tasks, task_dim], got {tasks.dtype} of "
                       f"shape {tasks.shape}")
    if tasks.dtype.kind == "f" and not np.isfinite(tasks).all():
        first = int(np.flatnonzero(~np.isfinite(tasks).all(axis=1))[0])
        raise DmhError(f"{source}: 'tasks' contains NaN or inf (first at task {first})")
    outside = (arrays["episode_task"] < 0) | (arrays["episode_task"] >= tasks.shape[0])
    if outside.any():
        raise _bad_rows(source, "episode_task", outside, f"indexing beyond the {tasks.shape[0]} tasks",
                        arrays["episode_task"], unit="episode")
    if (arrays["episode_history"] < 0).any():
        raise _bad_rows(source, "episode_history", arrays["episode_history"] < 0, "that are negative",
                        arrays["episode_history"], unit="episode")
