"""D4RL MuJoCo locomotion data (Fu et al. 2020) as ``EpisodeDataset``s, D4RL normalised scores, and a stand-in file.

``load_d4rl`` looks for a dataset in this order and never downloads anything:

1. an explicit HDF5 file in D4RL's raw layout;
2. the ``d4rl`` package's cache, ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``, under d4rl's own file name;
3. a Minari-format copy ``D4RL/<env>/<dataset>-v2`` that the user converted from D4RL's files and keeps on disk
   (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``): Minari publishes no D4RL locomotion datasets, so this route
   exists only for data already kept in Minari's format (docs/d4rl.md).

D4RL's raw layout (the v2 files): ``observations`` [N, obs_dim], ``next_observations``, ``actions`` [N, act_dim],
``rewards`` [N], ``terminals`` [N], ``timeouts`` [N] at the top level, plus ``infos/*`` (``qpos``, ``qvel``,
``action_log_probs``) and ``metadata/*`` (``algorithm``, ``iteration``, ``policy/*``). Episodes end where
``terminals | timeouts``. The steps after the last flag are a trajectory cut off when data collection stopped; they are
dropped (recorded as ``dropped_trailing_steps`` in the metadata), as D4RL-based codebases do.

No D4RL file can be downloaded on the machines this project is tested on, so ``write_d4rl_sample`` writes a small file
in exactly that layout by rolling out a uniform-random policy (the policy of D4RL's own ``random`` datasets) in the
gymnasium environment that evaluates the dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dmh.data.checks import EPISODE_KEYS, STEP_KEYS, as_flags, check_steps, require_keys
from dmh.data.format import FORMAT_VERSION, EpisodeDataset, load_dataset
from dmh.envs.mujoco import (
    D4RL_DATASETS,
    MAX_EPISODE_STEPS,
    make_mujoco_env,
    mujoco_env_name,
    mujoco_spec,
    parse_d4rl_name,
)
from dmh.errors import DmhError
from dmh.io import atomic_path, check_writable_output, open_hdf5

__all__ = [
    "D4RL_DATASETS",
    "REF_MAX_SCORE",
    "REF_MIN_SCORE",
    "d4rl_cache_path",
    "episodes_from_arrays",
    "episodes_from_minari",
    "load_d4rl",
    "load_dataset_file",
    "minari_dataset_id",
    "normalized_score",
    "parse_d4rl_name",
    "rollout_random_policy",
    "write_d4rl_sample",
]

logger = logging.getLogger(__name__)

# D4RL's reference returns, which define every published D4RL normalised score (DM-H's included): the average return
# of a random policy (0) and of an expert policy (100). Source: d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE of
# '<env>-random-v0', which infos.py copies to every v1 and v2 dataset of the environment; the same numbers are
# HOPPER_RANDOM_SCORE ... WALKER_EXPERT_SCORE in d4rl/gym_mujoco/__init__.py (github.com/Farama-Foundation/D4RL).
REF_MIN_SCORE = {"halfcheetah": -280.178953, "hopper": -20.272305, "walker2d": 1.629008}
REF_MAX_SCORE = {"halfcheetah": 12135.0, "hopper": 3234.3, "walker2d": 4592.3}

D4RL_STEP_KEYS = STEP_KEYS  # the project format took D4RL's names
SAMPLE_ALGORITHM = "uniform-random"  # written to metadata/algorithm of a stand-in file


# --------------------------------------------------------------------------------------------------------- scores
def normalized_score(name: str, returns: float | np.ndarray) -> float | np.ndarray:
    """D4RL normalised score 100 * (R - R_random) / (R_expert - R_random) of ``returns`` in env or dataset ``name``.

    The ratio is taken before scaling by 100 so that the reference returns map to exactly 0.0 and 100.0.
    """
    env = mujoco_env_name(name)
    low, high = REF_MIN_SCORE[env], REF_MAX_SCORE[env]
    if np.ndim(returns) == 0:
        return 100.0 * ((float(returns) - low) / (high - low))
    return 100.0 * ((np.asarray(returns, dtype=np.float64) - low) / (high - low))


# ------------------------------------------------------------------------------------------------ where data live
def d4rl_cache_path(name: str) -> Path:
    """Where the ``d4rl`` package keeps dataset ``name``: ``$D4RL_DATASET_DIR`` (default ``~/.d4rl/datasets``).

    The file name is the last part of d4rl's download URL, built in d4rl/infos.py as
    ``env + '_' + dataset.replace('-', '_') + '-v2'`` (``hopper_medium_replay-v2.hdf5``); d4rl/offline_env.py joins it
    to ``os.environ.get('D4RL_DATASET_DIR', '~/.d4rl/datasets')``.
    """
    env, kind = parse_d4rl_name(name)
    root = os.environ.get("D4RL_DATASET_DIR") or "~/.d4rl/datasets"
    return Path(root).expanduser() / f"{env}_{kind.replace('-', '_')}-v2.hdf5"


def minari_dataset_id(name: str) -> str:
    """The Minari id under which dataset ``name`` is looked for: ``"D4RL/hopper/medium-replay-v2"``."""
    env, kind = parse_d4rl_name(name)
    return f"D4RL/{env}/{kind}-v2"


def _minari_local_dir(dataset_id: str) -> Path:
    """Minari's local folder of ``dataset_id``, computed without importing minari (which creates folders)."""
    root = os.environ.get("MINARI_DATASETS_PATH") or "~/.minari/datasets"
    return Path(root).expanduser() / dataset_id


def d4rl_available(name: str) -> bool:
    """Whether dataset ``name`` is on disk (the d4rl cache file or a local Minari copy), checked without reading it:
    reading nine 1M-step datasets only to see that they exist would cost minutes."""
    return d4rl_cache_path(name).exists() or (_minari_local_dir(minari_dataset_id(name)) / "data").is_dir()


# ----------------------------------------------------------------------------------------------------- conversion
def episodes_from_arrays(name: str, arrays: Mapping[str, Any], source: str) -> EpisodeDataset:
    """Check D4RL-layout step arrays of dataset ``name`` and convert them to an ``EpisodeDataset``.

    Every problem is a ``DmhError`` naming ``source`` and the array at fault (``dmh.data.checks``, with D4RL's 0/1
    numeric flags allowed). Steps after the last episode end are a cut-off trajectory and are dropped.
    """
    env, kind = parse_d4rl_name(name)
    spec = mujoco_spec(env)
    require_keys(arrays, D4RL_STEP_KEYS, source)
    data = {k: np.asarray(arrays[k]) for k in D4RL_STEP_KEYS}
    for key in ("rewards", "terminals", "timeouts"):
        if data[key].ndim == 2 and data[key].shape[1] == 1:  # some D4RL files store these as [N, 1]
            data[key] = data[key][:, 0]
    check_steps(data, name, source, numeric_flags=True)
    terminals = as_flags(data["terminals"], "terminals", source, numeric=True)
    timeouts = as_flags(data["timeouts"], "timeouts", source, numeric=True)

    ends = terminals | timeouts
    if not ends.any():
        raise DmhError(f"{source}: no step has a terminals or timeouts flag, so it holds no complete episode")
    kept = int(np.flatnonzero(ends)[-1]) + 1
    dropped = int(ends.shape[0]) - kept
    if dropped:
        logger.info("%s: dropped the last %d steps, a trajectory cut off without terminal or timeout", source, dropped)
    episodes = int(ends[:kept].sum())
    dataset = EpisodeDataset(
        observations=data["observations"][:kept].astype(np.float32),  # [N, obs_dim]
        actions=data["actions"][:kept].astype(np.float32),  # [N, act_dim]
        rewards=data["rewards"][:kept].astype(np.float32),  # [N]
        terminals=terminals[:kept],  # [N]
        timeouts=timeouts[:kept],  # [N]
        episode_task=np.zeros(episodes, dtype=np.int64),  # one task: the environment itself
        episode_history=np.zeros(episodes, dtype=np.int64),  # D4RL has no learning histories
        tasks=np.zeros((1, 1), dtype=np.float64),
        metadata={
            "env_id": name,
            "gym_env_id": spec.gym_id,
            "generator": {"name": "d4rl", "source": source, "dataset": kind},
            "seed": None,  # D4RL does not record the seeds its data were collected with
            "discrete": False,
            "format_version": FORMAT_VERSION,
            "obs_dim": spec.obs_dim,
            "act_dim": spec.act_dim,
            "dropped_trailing_steps": dropped,
        },
    )
    dataset.validate(source)
    return dataset


def _read_hdf5(name: str, path: Path) -> EpisodeDataset:
    """Read a raw D4RL HDF5 file; a corrupt file, a missing key or bad values are a ``DmhError``."""
    with open_hdf5(path, "D4RL file") as f:
        try:
            missing = [k for k in D4RL_STEP_KEYS if not isinstance(f.get(k), h5py.Dataset)]
            arrays = {k: f[k][()] for k in D4RL_STEP_KEYS if k not in missing}
            meta = {k: f[f"metadata/{k}"][()] for k in ("algorithm", "gym_env_id") if f"metadata/{k}" in f}
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise DmhError(f"{path} is corrupt (cannot read its contents): {exc}") from None
    if missing:
        raise DmhError(f"{path} lacks required key(s): {', '.join(missing)}")
    meta = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in meta.items()}
    expected = mujoco_spec(name).gym_id
    if meta.get("gym_env_id", expected) != expected:  # only dmh stand-ins record their environment
        raise DmhError(f"{path} was written for {meta['gym_env_id']}, not for {name} ({expected})")
    dataset = episodes_from_arrays(name, arrays, str(path))
    if "algorithm" in meta:  # "SAC" in D4RL's policy datasets; SAMPLE_ALGORITHM marks a dmh stand-in
        dataset.metadata["generator"]["algorithm"] = meta["algorithm"]
    return dataset


def episodes_from_minari(name: str, episodes: Iterable[Any], source: str) -> EpisodeDataset:
    """Convert Minari episodes (``observations`` [T+1, obs_dim], ``actions`` [T, act_dim], ``rewards``,
    ``terminations``, ``truncations`` [T]) of dataset ``name`` to an ``EpisodeDataset``.

    Minari stores each episode on its own, so an episode's end is known even when its last step carries no flag
    (a recording stopped by a step limit outside the environment): that step is marked as a timeout.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in D4RL_STEP_KEYS}
    for index, episode in enumerate(episodes):
        rewards = np.asarray(episode.rewards)
        observations = np.asarray(episode.observations)
        actions = np.asarray(episode.actions)
        terminals = np.asarray(episode.terminations)
        truncations = np.asarray(episode.truncations)
        steps = rewards.shape[0] if rewards.ndim == 1 else 0
        shapes_ok = (
            steps > 0
            and observations.ndim == 2 and observations.shape[0] == steps + 1
            and actions.ndim == 2 and actions.shape[0] == steps
            and terminals.shape == truncations.shape == (steps,)
        )
        if not shapes_ok:
            raise DmhError(
                f"{source}: episode {index} has mismatched lengths: observations {observations.shape}, actions "
                f"{actions.shape}, rewards {rewards.shape}, terminations {terminals.shape}, truncations "
                f"{truncations.shape} (expected [steps + 1, obs_dim], [steps, act_dim] and [steps])"
            )
        terminals = as_flags(terminals, "terminations", f"{source} episode {index}", numeric=True)
        truncations = as_flags(truncations, "truncations", f"{source} episode {index}", numeric=True)
        timeouts = truncations & ~terminals
        timeouts[-1] |= not terminals[-1]
        parts["observations"].append(observations[:steps])  # the final observation starts no step
        parts["actions"].append(actions)
        parts["rewards"].append(rewards)
        parts["terminals"].append(terminals)
        parts["timeouts"].append(timeouts)
    if not parts["rewards"]:
        raise DmhError(f"{source} holds no episodes")
    try:
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
    except ValueError as exc:  # episodes disagree on the observation or action size
        raise DmhError(f"{source}: episodes have inconsistent shapes: {exc}") from None
    return episodes_from_arrays(name, arrays, source)


def _read_minari(name: str, dataset_id: str) -> EpisodeDataset:
    """Read a Minari dataset that is on disk, without touching the network."""
    try:
        import minari
    except ImportError:
        raise DmhError(f"Minari dataset {dataset_id} is on disk but minari is not installed: "
                       "pip install 'dmh[minari]'") from None
    source = f"minari:{dataset_id}"
    try:
        dataset = minari.load_dataset(dataset_id, download=False)
        return episodes_from_minari(name, dataset.iterate_episodes(), source)
    except DmhError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise DmhError(f"{source} ({_minari_local_dir(dataset_id)}) cannot be read: {exc}") from None


def _d4rl_name_of_file(path: Path, recorded: object) -> str:
    """Which D4RL dataset a raw file holds: what a dmh stand-in records (``metadata/dataset``), else the dataset whose
    d4rl file name it has (``hopper_medium_replay-v2.hdf5``)."""
    if recorded is not None:
        name = recorded.decode(errors="replace") if isinstance(recorded, bytes) else str(recorded)
        if name not in D4RL_DATASETS:
            raise DmhError(f"{path} records dataset {name!r}, not one of {', '.join(D4RL_DATASETS)}")
        return name
    for name in D4RL_DATASETS:
        if d4rl_cache_path(name).name == path.name:
            return name
    raise DmhError(f"{path} is in D4RL's layout but does not say which dataset it holds: pass --name (one of "
                   f"{', '.join(D4RL_DATASETS)}) or give it d4rl's file name (hopper_medium-v2.hdf5, …)")


def load_dataset_file(path: str | os.PathLike, name: str | None = None) -> EpisodeDataset:
    """Read a dataset file in either layout, checked against its environment: the project format (told apart by its
    ``metadata`` attribute or its episode arrays, which D4RL files lack) or D4RL's raw layout, for dataset ``name``
    (default: the one the file names)."""
    path = Path(path)
    with open_hdf5(path, "dataset file") as f:
        project = "metadata" in f.attrs or any(k in f for k in (*EPISODE_KEYS, "tasks"))
        try:
            recorded = f["metadata/dataset"][()] if not project and "metadata/dataset" in f else None
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise DmhError(f"{path} is corrupt (cannot read its contents): {exc}") from None
    if project:
        dataset = load_dataset(path)
        if name is not None and dataset.metadata["env_id"] != name:
            raise DmhError(f"{path} holds a dataset of {dataset.metadata['env_id']}, not of {name}")
        return dataset
    return load_d4rl(name or _d4rl_name_of_file(path, recorded), path)


def load_d4rl(name: str, path: str | os.PathLike | None = None) -> EpisodeDataset:
    """Load D4RL dataset ``name`` (e.g. ``"hopper-medium-v2"``) from ``path``, the d4rl cache or local Minari data."""
    parse_d4rl_name(name)
    if path is not None:
        return _read_hdf5(name, Path(path))
    cache = d4rl_cache_path(name)
    if cache.exists():
        return _read_hdf5(name, cache)
    dataset_id = minari_dataset_id(name)
    minari_dir = _minari_local_dir(dataset_id)
    if (minari_dir / "data").is_dir():
        return _read_minari(name, dataset_id)
    raise DmhError(
        f"D4RL dataset {name} not found: looked for the d4rl cache file {cache} (set D4RL_DATASET_DIR to its folder) "
        f"and a local Minari-format conversion {dataset_id} in {minari_dir}. Download {cache.name} on a networked "
        "machine from "
        f"http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{cache.name} and copy it there or pass its "
        f"path, or write a small stand-in with `dmh data d4rl-sample --name {name} --out OUT.hdf5` and pass that path."
    )


# ------------------------------------------------------------------------------------------------ stand-in sample
def rollout_random_policy(name: str, *, episodes: int, max_episode_steps: int, seed: int) -> dict[str, np.ndarray]:
    """Roll out uniform-random actions in the evaluation environment of ``name``; return D4RL-layout arrays.

    ``qpos``/``qvel`` are recorded before each step, so they describe the step's observation, as in D4RL.
    A step is a timeout only when the time limit ended an episode that did not terminate, so at most one flag is set.
    """
    spec = mujoco_spec(name)
    env = make_mujoco_env(name, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    nq, nv = env.unwrapped.data.qpos.size, env.unwrapped.data.qvel.size
    capacity = episodes * max_episode_steps
    out = {
        "observations": np.zeros((capacity, spec.obs_dim), np.float32),
        "next_observations": np.zeros((capacity, spec.obs_dim), np.float32),
        "actions": np.zeros((capacity, spec.act_dim), np.float32),
        "rewards": np.zeros(capacity, np.float32),
        "terminals": np.zeros(capacity, bool),
        "timeouts": np.zeros(capacity, bool),
        "infos/qpos": np.zeros((capacity, nq), np.float64),
        "infos/qvel": np.zeros((capacity, nv), np.float64),
    }
    n = 0
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed if episode == 0 else None)
            done = False
            while not done:
                action = rng.uniform(low, high).astype(np.float32)
                out["infos/qpos"][n] = env.unwrapped.data.qpos
                out["infos/qvel"][n] = env.unwrapped.data.qvel
                next_obs, reward, terminated, truncated, _ = env.step(action)
                out["observations"][n], out["next_observations"][n], out["actions"][n] = obs, next_obs, action
                out["rewards"][n] = reward
                out["terminals"][n] = terminated
                out["timeouts"][n] = truncated and not terminated
                obs, done, n = next_obs, terminated or truncated, n + 1
    finally:
        env.close()
    arrays = {k: v[:n] for k, v in out.items()}
    # The density of a uniform action, as D4RL's own random-policy collection records it.
    arrays["infos/action_log_probs"] = np.full(n, -np.log(np.prod(high - low, dtype=np.float64)), np.float32)
    return arrays


def _check_positive_int(value: object, what: str, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise DmhError(f"{what} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise DmhError(f"{what} must be at most {maximum} (D4RL's episode length), got {value}")


def write_d4rl_sample(
    name: str,
    path: str | os.PathLike,
    *,
    episodes: int = 5,
    max_episode_steps: int = MAX_EPISODE_STEPS,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a small stand-in for dataset ``name`` in D4RL's exact HDF5 layout, by a uniform-random policy.

    Arguments and the output path are checked before the rollout starts; the file appears atomically and replaces an
    existing one only with ``overwrite``. ``metadata/*`` holds D4RL's ``algorithm`` plus what dmh adds to mark a
    stand-in (``dmh_sample``, ``dataset``, ``gym_env_id``, ``seed``), so it is never mistaken for real D4RL data.
    """
    parse_d4rl_name(name)
    _check_positive_int(episodes, "episodes")
    _check_positive_int(max_episode_steps, "max_episode_steps", MAX_EPISODE_STEPS)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DmhError(f"seed must be a non-negative integer, got {seed!r}")
    path = Path(path)
    check_writable_output(path, overwrite)
    arrays = rollout_random_policy(name, episodes=episodes, max_episode_steps=max_episode_steps, seed=seed)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, compression="gzip")
        f["metadata/algorithm"] = np.bytes_(SAMPLE_ALGORITHM)
        f["metadata/dmh_sample"] = True
        f["metadata/dataset"] = np.bytes_(name)
        f["metadata/gym_env_id"] = np.bytes_(mujoco_spec(name).gym_id)
        f["metadata/seed"] = np.int64(seed)
    return path
