"""Datasets cached on disk, keyed by the settings that made them: the same settings never generate twice, and
different settings never share a file."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmh.data.format import EpisodeDataset, load_dataset, save_dataset
from dmh.io import check_writable_dir

DATA_DIR_ENV = "DMH_DATA_DIR"


def default_data_dir() -> Path:
    """``$DMH_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cached_path(name: str, settings: dict[str, Any], data_dir: Path | None = None) -> Path:
    return (data_dir or default_data_dir()) / f"{name}-{settings_key(settings)}.h5"


def load_or_build(
    path: Path, build: Callable[[], EpisodeDataset], rebuild: bool = False
) -> tuple[EpisodeDataset, bool]:
    """Load ``path`` if it exists (and ``rebuild`` is false), else build, save atomically and return it.

    Returns (dataset, built_now).
    """
    if path.exists() and not rebuild:
        return load_dataset(path), False
    check_writable_dir(path.parent, "data folder")  # before the build: generating data is the expensive part
    dataset = build()
    save_dataset(dataset, path)
    return dataset, True
