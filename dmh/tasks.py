"""Task names (what ``dmh train --task`` takes) → environment, dataset and the paper's per-task settings.

A task is one of the six Grid World families (``darkroom`` …), ``tmaze-<L>`` (passive T-maze with memory length L)
or a D4RL dataset name (``hopper-medium-v2`` …). The paper's n (episodes per across-episodic context), c (steps per
sub-goal), target return and online episode count per task live here as data (paper.md §4–5).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dmh.data.cache import cached_path, load_or_build
from dmh.data.d4rl import load_d4rl
from dmh.data.format import EpisodeDataset, load_dataset
from dmh.data.histories import check_learning, generate_histories, history_config, summarize_learning
from dmh.data.tmaze import TMazeDataConfig, generate_tmaze
from dmh.envs.core import BatchCore
from dmh.envs.gridworld import FAMILIES, GridWorldCore, grid_family, tasks
from dmh.envs.mujoco import D4RL_DATASETS, MUJOCO_SPECS, MujocoBatch, gym_env_id, mujoco_env_name
from dmh.envs.tmaze import TMazeCore, check_memory_length
from dmh.errors import DmhError

# The paper's n and c (Appendix Table 3). Tmaze: c = 20 from the appendix text (the table says 5), n = 4 ("the default
# length of across-episodic is four trajectories"); see docs/reproduction.md.
PAPER_N_C = {
    "darkroom": (10, 5),
    "darkroom-hard": (10, 5),
    "key-to-door": (4, 5),
    "large-darkroom": (10, 20),
    "large-darkroom-hard": (10, 20),
    "large-key-to-door": (4, 20),
    "tmaze": (4, 20),
    "d4rl": (4, 20),
}
PAPER_C = (1, 5, 10, 15, 20)  # the values of c in the paper's sensitivity study (Fig. 4b)
D4RL_TARGET_RETURN = {"halfcheetah": 12000.0, "hopper": 3600.0, "walker2d": 5000.0}
D4RL_RTG_SCALE = 1000.0  # the authors' code divides D4RL returns-to-go by 1000


@dataclass(frozen=True)
class TaskSpec:
    """Everything about a task that training and evaluation need, independent of the model."""

    name: str  # the task string, e.g. "darkroom", "tmaze-1000", "hopper-medium-v2"
    kind: str  # "grid" | "tmaze" | "d4rl"
    env_id: str  # gymnasium id of the environment
    horizon: int  # longest episode
    obs_dim: int
    act_dim: int  # number of actions (discrete) or action size (continuous)
    discrete: bool
    n_context: int  # the paper's n
    c: int  # the paper's c
    target_return: float  # the paper's test-time target return
    eval_episodes: int  # online episodes per test task (Grid World 20, Tmaze 20, D4RL 10)
    memory_length: int | None = None  # T-maze corridor length
    rtg_scale: float = 1.0  # returns-to-go are divided by this in training and online (D4RL: 1000)
    rtg_token: bool = False  # DM-H conditions its blocks on return-to-go (D4RL, as the authors' code; the paper's
    # Grid World and T-maze DM-H has none)


def resolve_task(name: str) -> TaskSpec:
    """Parse a task name; unknown names are a ``DmhError`` that lists what is valid."""
    if name in {f.name for f in FAMILIES.values()}:
        family = grid_family(name)
        n, c = PAPER_N_C[name]
        return TaskSpec(name, "grid", family.env_id, family.horizon, 2, 5, True, n, c, family.target_return, 20)
    match = re.fullmatch(r"tmaze-(\d+)", name)
    if match:
        length = check_memory_length(int(match.group(1)))
        n, c = PAPER_N_C["tmaze"]
        return TaskSpec(name, "tmaze", "dmh/TMaze-v0", length + 1, 2, 4, True, n, c, 1.0, 20, length)
    if name in D4RL_DATASETS:
        env = mujoco_env_name(name)
        spec = MUJOCO_SPECS[env]
        n, c = PAPER_N_C["d4rl"]
        return TaskSpec(name, "d4rl", gym_env_id(name), 1000, spec.obs_dim, spec.act_dim, False, n, c,
                        D4RL_TARGET_RETURN[env], 10, rtg_scale=D4RL_RTG_SCALE, rtg_token=True)
    grid = ", ".join(f.name for f in FAMILIES.values())
    raise DmhError(f"unknown task {name!r}; valid: {grid}, tmaze-<L> (e.g. tmaze-1000), or a D4RL dataset such as "
                   f"hopper-medium-v2 ({', '.join(D4RL_DATASETS)})")


def task_dataset(spec: TaskSpec, data_steps: int, data_seed: int, dataset_path: str | None,
                 data_dir: Path | None = None) -> EpisodeDataset:
    """The training data of a task: an explicit file, or generated on first use and cached by its settings."""
    if spec.kind == "d4rl":
        return load_d4rl(spec.name, dataset_path)
    if dataset_path is not None:
        dataset = load_dataset(dataset_path)
        if dataset.metadata["env_id"] != spec.env_id or (
                spec.memory_length is not None and dataset.metadata.get("memory_length") != spec.memory_length):
            made_for = dataset.metadata.get("env_name", dataset.metadata["env_id"])
            raise DmhError(f"dataset {dataset_path} is for {made_for}, not for task {spec.name}")
        return dataset
    if spec.kind == "grid":
        cfg = history_config(spec.name, steps=data_steps, seed=data_seed)

        def build() -> EpisodeDataset:
            data = generate_histories(cfg)
            check_learning(summarize_learning(data), cfg.min_improvement)
            return data

        return load_or_build(cached_path(spec.name, asdict(cfg), data_dir), build)[0]
    tcfg = TMazeDataConfig(memory_length=spec.memory_length, seed=data_seed)
    return load_or_build(cached_path(spec.name, asdict(tcfg), data_dir), lambda: generate_tmaze(tcfg))[0]


def held_out_histories(spec: TaskSpec, data_steps: int, data_seed: int, data_dir: Path | None = None
                       ) -> EpisodeDataset | None:
    """Learning histories on the held-out tasks (Grid World; None elsewhere): one learner per held-out task, each
    with as many steps as a training learner gets, made and cached like the training data. What a model's loss on
    tasks it never trained on is measured with (``Trainer.held_out_loss``)."""
    if spec.kind != "grid":
        return None
    train = history_config(spec.name, steps=data_steps, seed=data_seed)
    per_learner = train.steps // (train.num_tasks * train.histories_per_task)
    held_out = len(tasks(spec.env_id, "test"))
    cfg = history_config(spec.name, steps=per_learner * held_out * train.histories_per_task, seed=data_seed,
                         num_tasks=held_out)
    return load_or_build(cached_path(f"{spec.name}-held-out", asdict(cfg), data_dir),
                         lambda: generate_histories(cfg, split="test"))[0]


def held_out_tasks(spec: TaskSpec, count: int | None = None) -> np.ndarray:
    """Held-out test tasks [n, task_dim] (Grid World: the family's test list; T-maze: goal sides drawn at reset)."""
    if spec.kind == "grid":
        held_out = tasks(spec.env_id, "test")
        return held_out[:count] if count else held_out
    return np.zeros((count or 20, 1))


def make_eval_core(spec: TaskSpec, batch_size: int) -> BatchCore:
    """A batched environment core for online evaluation of ``batch_size`` copies (Grid World and T-maze)."""
    if spec.kind == "grid":
        return GridWorldCore(grid_family(spec.name), batch_size)
    if spec.kind == "tmaze":
        return TMazeCore(spec.memory_length, batch_size)
    return MujocoBatch(spec.name, batch_size)
