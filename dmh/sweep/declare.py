"""What a sweep script declares: its grid of cells (:class:`Trial`) per preset, as a :class:`Sweep`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dmh.errors import DmhError

DEFAULT_SEEDS = {"smoke": 1, "cpu": 1, "paper": 10}  # the paper reports 10 seeds everywhere
DEFAULT_GPUS = {"smoke": 0.0, "cpu": 0.0, "paper": 1.0}  # GPUs per trial: the paper preset is for GPU clusters


class SweepError(DmhError):
    """A bad sweep argument, reported before Ray starts."""


@dataclass(frozen=True)
class Trial:
    """One cell of a grid: one ``dmh train`` run."""

    algo: str
    task: str
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)  # dmh settings this cell sets (the swept values: c, …)


@dataclass(frozen=True)
class Sweep:
    """What a script declares: its name, its grid per preset and the dmh settings each preset adds."""

    name: str  # script name: default MLflow experiment and Tune run name
    description: str  # one line for --help
    grid: Callable[[argparse.Namespace], list[Trial]]  # (parsed args: preset, seeds, script options) → cells
    preset_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset → dmh settings for every trial
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # script-specific options
    default_name: Callable[[argparse.Namespace], str] | None = None  # the Tune run name without --name (None:
    # <name>_<preset>)
    oom_is_result: bool = False  # Tmaze: running out of memory is a recorded outcome (paper Fig. 3), not an error


def product(algos: Iterable[str], tasks: Iterable[str], seeds: int | Iterable[int],
            values: Iterable[dict[str, Any]] = ({},)) -> list[Trial]:
    """algos × tasks × swept values × seeds (a count from 0, or the seeds themselves: a grid gets
    ``range(--first-seed, --first-seed + --seeds)``), in that nesting order (so the first trials cover every algo)."""
    seeds = range(seeds) if isinstance(seeds, int) else seeds
    return [Trial(algo, task, seed, dict(settings)) for seed in seeds for settings in values for task in tasks
            for algo in algos]
