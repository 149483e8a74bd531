"""The one dataset format every trainer reads: episodes stored end to end in an HDF5 file, with metadata.

Layout (top-level HDF5 datasets, D4RL-style names so D4RL data converts without renaming):

    observations    [N, obs_dim] float32   observation at each step
    actions         [N] int64 (discrete) or [N, act_dim] float32
    rewards         [N] float32            reward received after the step's action
    terminals       [N] bool               the environment ended the episode at this step
    timeouts        [N] bool               the time limit ended the episode at this step
    episode_task    [E] int64              index into ``tasks`` of each episode
    episode_history [E] int64              learning history (source learner) each episode belongs to; episodes of
                                           one history are stored in the order the learner played them
    tasks           [T, task_dim] float64  the task parameters (goal cell, key and door cells, T-maze goal side…)

Episode boundaries are where ``terminals | timeouts``; every episode, including the last, must end with one. Every
reader and ``save_dataset`` check a dataset against its environment's spaces with ``dmh.data.checks``.
The ``metadata`` attribute is a JSON object: env id, generator name and settings, seed, format version, counts.
Files are written atomically (temporary name, then rename), so an interrupted run never leaves a file that looks
complete, and an existing file is replaced only by a complete one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dmh.data.checks import EPISODE_KEYS, REQUIRED_METADATA, STEP_KEYS, check_dataset, require_keys
from dmh.errors import DmhError
from dmh.io import atomic_path, open_hdf5

FORMAT_VERSION = 1
REQUIRED_KEYS = (*STEP_KEYS, *EPISODE_KEYS, "tasks")
__all__ = ["EPISODE_KEYS", "FORMAT_VERSION", "REQUIRED_KEYS", "REQUIRED_METADATA", "STEP_KEYS", "EpisodeDataset",
           "load_dataset", "save_dataset"]


@dataclass
class EpisodeDataset:
    """Episodes of one environment family, stored end to end (see the module docstring for the layout)."""

    observations: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N] int64 (discrete) or [N, act_dim] float32
    rewards: np.ndarray  # [N] float32
    terminals: np.ndarray  # [N] bool
    timeouts: np.ndarray  # [N] bool
    episode_task: np.ndarray  # [E] int64
    episode_history: np.ndarray  # [E] int64
    tasks: np.ndarray  # [T, task_dim] float64
    metadata: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------------------------------------- derived views
    @property
    def num_steps(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_task.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def discrete(self) -> bool:
        return bool(self.metadata["discrete"])

    @property
    def episode_ends(self) -> np.ndarray:
        """[E] index one past the last step of each episode."""
        return np.flatnonzero(self.terminals | self.timeouts) + 1

    @property
    def episode_starts(self) -> np.ndarray:
        """[E] index of the first step of each episode."""
        ends = self.episode_ends
        return np.concatenate([[0], ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)

    @property
    def episode_returns(self) -> np.ndarray:
        """[E] undiscounted return of each episode."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts) if self.num_steps else np.zeros(0)

    def counts(self) -> dict[str, int]:
        return {
            "steps": self.num_steps,
            "episodes": self.num_episodes,
            "histories": int(np.unique(self.episode_history).size),
            "tasks": int(self.tasks.shape[0]),
        }

    # ------------------------------------------------------------------------------------------------- validation
    def validate(self, source: str = "dataset") -> None:
        """Raise ``DmhError`` naming the first problem against the dataset's environment (``dmh.data.checks``)."""
        check_dataset({k: getattr(self, k) for k in REQUIRED_KEYS}, self.metadata, source)

    # ------------------------------------------------------------------------------------------------ selections
    def select_episodes(self, episode_mask: np.ndarray) -> EpisodeDataset:
        """A new dataset with only the episodes where ``episode_mask`` [E] is true (order kept)."""
        step_mask = np.repeat(episode_mask, self.episode_lengths)
        return EpisodeDataset(
            **{k: getattr(self, k)[step_mask] for k in STEP_KEYS},
            episode_task=self.episode_task[episode_mask],
            episode_history=self.episode_history[episode_mask],
            tasks=self.tasks,
            metadata=dict(self.metadata),
        )


def save_dataset(dataset: EpisodeDataset, path: str | os.PathLike) -> Path:
    """Validate ``dataset`` and write it to ``path`` atomically; return the path."""
    path = Path(path)
    metadata = {**dataset.metadata, "format_version": FORMAT_VERSION, "counts": dataset.counts()}
    replace(dataset, metadata=metadata).validate(str(path))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key in REQUIRED_KEYS:
            f.create_dataset(key, data=getattr(dataset, key), compression="gzip", compression_opts=4)
        f.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
    return path


def load_dataset(path: str | os.PathLike) -> EpisodeDataset:
    """Read and validate a dataset file; every problem is a ``DmhError`` naming the file and what is wrong."""
    path = Path(path)
    with open_hdf5(path, "dataset file") as f:
        require_keys(f, REQUIRED_KEYS, str(path))
        if "metadata" not in f.attrs:
            raise DmhError(f"{path} has no 'metadata' attribute: not a dmh dataset")
        groups = [k for k in REQUIRED_KEYS if not isinstance(f[k], h5py.Dataset)]
        if groups:
            raise DmhError(f"{path}: '{groups[0]}' is an HDF5 group, not an array")
        try:
            metadata = json.loads(f.attrs["metadata"])
            arrays = {k: f[k][()] for k in REQUIRED_KEYS}
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise DmhError(f"{path} is corrupt (cannot read its contents): {exc}") from None
    if not isinstance(metadata, dict):
        raise DmhError(f"{path}: its 'metadata' attribute is not a JSON object: not a dmh dataset")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise DmhError(f"{path} has dataset format version {version}; this dmh reads version {FORMAT_VERSION}")
    dataset = EpisodeDataset(**arrays, metadata=metadata)
    dataset.validate(str(path))
    counts = metadata.get("counts", {})
    if counts and counts != dataset.counts():
        raise DmhError(f"{path}: contents {dataset.counts()} do not match the counts in its metadata {counts}")
    return dataset
