"""Grid World learning histories: the in-context RL training data (AD, DM-H) that the paper made with "gradient-based
RL algorithms such as DQN" and never released.

A vectorised tabular Q-learner (one Q-table per (task, seed) learner, all stepped together through the shared
``GridWorldCore``) plays every training task from a near-random first episode to convergence; every episode is kept,
in the order it was played. Tabular Q-learning is exact for these small deterministic grids and runs at millions of
steps per second in numpy, so the paper's scale (60 tasks, 1M steps per family) takes seconds. The 40×40 grids need
directed exploration: their learners start optimistic (Q₀ > 0), so unvisited cells look attractive and the learner
sweeps the grid instead of random-walking near the start. Choices and their reasons: ``docs/reproduction.md``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from dmh.data.format import EpisodeDataset
from dmh.envs.gridworld import FAMILIES, GridFamily, GridWorldCore, grid_family, tasks
from dmh.errors import DmhError
from dmh.progress import progress


@dataclass(frozen=True)
class QLearningConfig:
    """The source RL learner: ε-greedy tabular Q-learning with optional optimistic initialisation."""

    lr: float = 0.5  # α, step size of the Q update
    gamma: float = 0.9  # discount
    epsilon_start: float = 1.0  # ε of the first episode (1 = the near-random start the history must show)
    epsilon_end: float = 0.0  # ε after the decay
    epsilon_decay_fraction: float = 0.5  # fraction of the history over which ε falls linearly to epsilon_end
    optimistic_init: float = 0.0  # Q₀ for every state-action; > 0 makes the learner seek unvisited cells
    replay_sweeps: int = 0  # backward passes over each finished episode (propagates a goal or a frontier to the start)


@dataclass(frozen=True)
class HistoryConfig:
    """What ``generate_histories`` produces for one Grid World family."""

    env: str  # family short name or gymnasium id, e.g. "darkroom" or "dmh/Darkroom-v0"
    steps: int = 1_000_000  # environment steps budget for the family (the paper: 1M), split evenly over learners
    histories_per_task: int = 1  # learners (seeds) per training task
    num_tasks: int = 60  # training tasks used (the first num_tasks of the family's fixed 60)
    seed: int = 0  # seeds the learners' exploration and the Key-to-Door starts
    learner: QLearningConfig = field(default_factory=QLearningConfig)  # the source RL algorithm's settings
    min_improvement: float = 0.1  # fail unless last-10% mean return − first-10% ≥ this × the family's target return


# Per-family learner settings as data. The 9×9 grids learn with plain ε-greedy Q-learning from a random start. The
# 40×40 grids, with ~80 (Darkroom) or ~33 (Key-to-Door) episodes per learner at the paper's 1M steps, need directed
# exploration: an optimistic Q₀ below the goal reward (unvisited cells attract until a reward is found, then the reward
# wins), γ = 0.99 so a goal 40 cells away still beats Q₀, and one backward replay of each episode so what the episode
# found reaches the start in one pass. Measured effect: docs/reproduction.md.
_LARGE = QLearningConfig(lr=1.0, gamma=0.99, optimistic_init=0.5, epsilon_start=0.2, replay_sweeps=1)
LEARNER_PRESETS: dict[str, QLearningConfig] = {
    "darkroom": QLearningConfig(),
    "darkroom-hard": QLearningConfig(),
    "key-to-door": QLearningConfig(gamma=0.95),
    "large-darkroom": _LARGE,
    "large-darkroom-hard": _LARGE,
    "large-key-to-door": _LARGE,
}


def history_config(env: str, **overrides: object) -> HistoryConfig:
    """The default ``HistoryConfig`` for a family (its learner preset), with field overrides."""
    family = grid_family(env)
    return replace(HistoryConfig(env=family.name, learner=LEARNER_PRESETS[family.name]), **overrides)


def check_history_config(cfg: HistoryConfig) -> GridFamily:
    """Reject impossible settings before any work starts; return the family."""
    family = grid_family(cfg.env)
    if cfg.steps <= 0 or cfg.histories_per_task <= 0:
        raise DmhError(f"steps and histories_per_task must be positive, got {cfg.steps} and {cfg.histories_per_task}")
    if not 0 < cfg.num_tasks <= len(tasks(family.env_id, "train")):
        raise DmhError(f"num_tasks must be in [1, {len(tasks(family.env_id, 'train'))}], got {cfg.num_tasks}")
    if cfg.steps < cfg.num_tasks * cfg.histories_per_task * family.horizon * 2:
        raise DmhError(f"steps={cfg.steps} is too few: each of the {cfg.num_tasks * cfg.histories_per_task} learners "
                       f"needs at least 2 episodes of {family.horizon} steps")
    lc = cfg.learner
    if not (0 < lc.lr <= 1 and 0 <= lc.gamma < 1 and 0 <= lc.epsilon_end <= lc.epsilon_start <= 1
            and 0 < lc.epsilon_decay_fraction <= 1 and lc.replay_sweeps >= 0):
        raise DmhError(f"learner settings out of range: {lc}")
    return family


def generate_histories(cfg: HistoryConfig, show_progress: bool = True, split: str = "train") -> EpisodeDataset:
    """Train one Q-learner per (task, seed) and return every episode it played, history by history, in order.
    ``split`` "test": on the first ``num_tasks`` held-out tasks instead (the data a held-out loss is measured on)."""
    family = check_history_config(cfg)
    if cfg.num_tasks > len(tasks(family.env_id, split)):
        raise DmhError(f"num_tasks must be at most the {len(tasks(family.env_id, split))} {split} tasks of "
                       f"{family.name}, got {cfg.num_tasks}")
    lc = cfg.learner
    task_rows = np.repeat(np.arange(cfg.num_tasks), cfg.histories_per_task)  # [L] task of each learner
    learners = task_rows.size
    episodes = cfg.steps // (learners * family.horizon)
    H = family.horizon
    rng = np.random.default_rng(cfg.seed)
    core = GridWorldCore(family, learners)
    task_list = tasks(family.env_id, split)[task_rows]
    key_states = 2 if family.rule == "key_to_door" else 1  # Key-to-Door learners also know whether they hold the key
    q = np.full((learners, family.size * family.size * key_states, core.num_actions), lc.optimistic_init)
    rows = np.arange(learners)

    obs_buf = np.zeros((learners, episodes, H, 2), dtype=np.int16)  # [L, E, H, 2]
    act_buf = np.zeros((learners, episodes, H), dtype=np.int8)
    rew_buf = np.zeros((learners, episodes, H), dtype=np.float32)
    term_buf = np.zeros((learners, episodes, H), dtype=bool)
    trunc_buf = np.zeros((learners, episodes, H), dtype=bool)
    valid = np.zeros((learners, episodes, H), dtype=bool)
    state_buf = np.zeros((learners, H), dtype=np.int64)  # [L, H] learner state index of this episode's steps
    next_buf = np.zeros((learners, H), dtype=np.int64)

    def state_index(pos: np.ndarray, holding: np.ndarray) -> np.ndarray:
        return pos[:, 1] * family.size + pos[:, 0] + holding * family.size * family.size

    decay_episodes = max(1.0, lc.epsilon_decay_fraction * episodes)
    start = time.perf_counter()
    for ep in progress(range(episodes), desc=f"learning histories {family.name}", enabled=show_progress):
        epsilon = lc.epsilon_start + (lc.epsilon_end - lc.epsilon_start) * min(1.0, ep / decay_episodes)
        pos = core.reset(rng, task_list)
        holding = np.zeros(learners, dtype=np.int64)
        for t in range(H):
            live = ~core.ended
            if not live.any():
                break
            s = state_index(pos, holding)
            qs = q[rows, s]  # [L, A]
            ties = qs == qs.max(axis=1, keepdims=True)
            greedy = np.argmax(ties * rng.random(qs.shape), axis=1)  # uniform among the maximal actions
            explore = rng.random(learners) < epsilon
            action = np.where(explore, rng.integers(0, core.num_actions, learners), greedy)
            next_pos, reward, terminated, truncated = core.step(action)
            next_holding = core.has_key.astype(np.int64) if key_states == 2 else holding
            target = reward + lc.gamma * q[rows, state_index(next_pos, next_holding)].max(axis=1) * ~terminated
            update = np.flatnonzero(live)
            q[update, s[update], action[update]] += lc.lr * (target[update] - q[update, s[update], action[update]])
            obs_buf[live, ep, t] = pos[live]
            act_buf[live, ep, t] = action[live]
            rew_buf[live, ep, t] = reward[live]
            term_buf[live, ep, t] = terminated[live]
            trunc_buf[live, ep, t] = truncated[live]
            valid[live, ep, t] = True
            state_buf[:, t], next_buf[:, t] = s, state_index(next_pos, next_holding)
            pos, holding = next_pos, next_holding
        for _ in range(lc.replay_sweeps):
            for t in reversed(range(H)):
                idx = np.flatnonzero(valid[:, ep, t])
                s, s2, a = state_buf[idx, t], next_buf[idx, t], act_buf[idx, ep, t]
                target = rew_buf[idx, ep, t] + lc.gamma * q[idx, s2].max(axis=1) * ~term_buf[idx, ep, t]
                q[idx, s, a] += lc.lr * (target - q[idx, s, a])
    seconds = time.perf_counter() - start

    return EpisodeDataset(
        observations=obs_buf[valid].astype(np.float32),
        actions=act_buf[valid].astype(np.int64),
        rewards=rew_buf[valid],
        terminals=term_buf[valid],
        timeouts=trunc_buf[valid],
        episode_task=np.repeat(task_rows, episodes).astype(np.int64),
        episode_history=np.repeat(rows, episodes).astype(np.int64),
        tasks=task_list[:: cfg.histories_per_task].astype(np.float64),
        metadata={
            "env_id": family.env_id,
            "env_name": family.name,
            "split": split,
            "discrete": True,
            "num_actions": core.num_actions,
            "horizon": H,
            "seed": cfg.seed,
            "generator": {"name": "tabular_q_learning", "settings": asdict(cfg)},
            "episodes_per_history": episodes,
            "generation_seconds": round(seconds, 3),
        },
    )


@dataclass(frozen=True)
class LearningSummary:
    """How much a family's learning histories improve: the check that the data can teach in-context learning."""

    env: str
    first_return: float  # mean return over the first 10% of every history's episodes
    last_return: float  # mean return over the last 10%
    target_return: float  # the paper's target return for the family
    episodes_per_history: int
    histories: int

    @property
    def improvement(self) -> float:
        return self.last_return - self.first_return

    def line(self) -> str:
        return (f"{self.env:<20} histories {self.histories:>3} × {self.episodes_per_history:>4} episodes   "
                f"return first 10% {self.first_return:7.3f} → last 10% {self.last_return:7.3f}")


def summarize_learning(dataset: EpisodeDataset) -> LearningSummary:
    """Mean return of the first and last 10% of each history's episodes, averaged over histories."""
    family = grid_family(dataset.metadata["env_id"])
    returns = dataset.episode_returns
    per_history = [returns[dataset.episode_history == h] for h in np.unique(dataset.episode_history)]
    tenth = [max(1, len(r) // 10) for r in per_history]
    return LearningSummary(
        env=family.name,
        first_return=float(np.mean([r[:k].mean() for r, k in zip(per_history, tenth, strict=True)])),
        last_return=float(np.mean([r[-k:].mean() for r, k in zip(per_history, tenth, strict=True)])),
        target_return=family.target_return,
        episodes_per_history=int(np.median([len(r) for r in per_history])),
        histories=len(per_history),
    )


def policy_entropy_floor(dataset: EpisodeDataset) -> float:
    """Mean entropy (nats per step) of the source learners' ε-greedy policies over the dataset's steps, from each
    episode's ε (its place in its history and the learner's schedule, ``metadata["generator"]``), counting a single
    greedy action: ties among greedy actions only add entropy, so this is a lower bound.

    It is the floor of the action loss: a model that knew the learner's Q-table and ε exactly would still pay this
    cross-entropy on average, so a model whose training loss sits near it has nothing left to learn from the data."""
    settings = dataset.metadata["generator"]["settings"]
    learner = QLearningConfig(**settings["learner"])
    actions = int(dataset.metadata["num_actions"])
    per_history = int(dataset.metadata["episodes_per_history"])
    decay = max(1.0, learner.epsilon_decay_fraction * per_history)
    episode = np.zeros(dataset.num_episodes)  # each episode's index in its history (histories in play order)
    for h in np.unique(dataset.episode_history):
        mine = np.flatnonzero(dataset.episode_history == h)
        episode[mine] = np.arange(len(mine))
    eps = learner.epsilon_start + (learner.epsilon_end - learner.epsilon_start) * np.minimum(1.0, episode / decay)
    greedy = 1.0 - eps + eps / actions  # [episodes] probability of the greedy action
    other = eps / actions  # each other action's
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(greedy * np.log(greedy)) - (actions - 1) * np.nan_to_num(other * np.log(other))
    return float(np.average(entropy, weights=dataset.episode_lengths))


def check_learning(summary: LearningSummary, min_improvement: float) -> None:
    """Fail loudly when a family's histories do not show learning (the data would teach nothing in context)."""
    needed = min_improvement * summary.target_return
    if summary.improvement < needed:
        raise DmhError(f"{summary.env}: learning histories do not improve enough (first 10% {summary.first_return:.3f}"
                       f", last 10% {summary.last_return:.3f}; need +{needed:.3f}). Raise --steps or change the "
                       "learner settings.")


GRID_NAMES = tuple(f.name for f in FAMILIES.values())
