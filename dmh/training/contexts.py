"""Training contexts as the paper builds them, from an ``EpisodeDataset`` into the models' batch format.

- AD: n episodes of one learning history, in the order the learner played them (every ``stride``-th episode), so
  the context shows improvement to distil; or (``ContextSpec.window``) a window of that many steps starting at any
  step of such a run of episodes, as AD (Transformer) meets its context online once its window slides step by step
  (Laskin et al. train AD on windows at every offset). A window that starts mid-episode carries the step before it
  as its first token's previous action and reward (``prev_actions``, ``prev_rewards``), as the online window does.
- DM-H: n episodes of one history (a strided window for Grid World, random episodes elsewhere; or, as the authors'
  D4RL code, a batch of episodes drawn in proportion to their length, sorted and cut into consecutive contexts),
  **sorted by ascending return** (paper §1.2, after the Agentic Transformer's chain of hindsight). With hindsight
  relabelling, every episode's return-to-go is shifted so that it starts at the context's best return (the last
  episode's), which is what the policy is conditioned on online (the target return).
- DT / DM: a window of one episode, with its return-to-go.

Batch keys (``dmh.models`` contract; [B, L] right-padded): obs, actions, rewards, timesteps, episode_start, done,
terminal, mask, rtg, and prev_actions, prev_rewards (each step's previous step in the context's play order: the
step before a window that starts mid-sequence, "none" (-1 or zeros) and 0 before a context's first episode start).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmh.data.format import EpisodeDataset


@dataclass(frozen=True)
class ContextSpec:
    """How contexts are drawn."""

    kind: str  # "history" (AD), "sorted" (DM-H) or "episode" (DT, DM)
    n_context: int  # episodes per context (history / sorted)
    stride: int  # history episodes between consecutive context episodes (history / window sampling)
    sampling: str  # sorted: "window" (a strided window of one history), "random" (random episodes of one history)
    # or "length" (the authors' D4RL batches: episodes drawn in proportion to length, sorted, cut into contexts)
    episode_len: int  # episode: steps per window
    rtg_scale: float  # returns-to-go are divided by this
    rtg_relabel: bool = False  # sorted: every episode's return-to-go relabelled to start at the context's best return
    window: int = 0  # history: steps per context, from any step of a run of strided episodes, as many as fill it
    # (0 = n whole episodes from an episode start)


class ContextSampler:
    """Draws batches of contexts with its own numpy generator (its state is saved in checkpoints)."""

    def __init__(self, data: EpisodeDataset, spec: ContextSpec, obs_mean: np.ndarray, obs_std: np.ndarray,
                 seed: int) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(seed)
        self.obs = ((data.observations - obs_mean) / obs_std).astype(np.float32)  # [N, obs_dim] normalised
        self.actions = data.actions
        self.rewards = data.rewards.astype(np.float32)
        self.starts, self.lengths = data.episode_starts, data.episode_lengths
        self.returns = data.episode_returns
        suffix = np.cumsum(self.rewards[::-1].astype(np.float64))[::-1]  # [N] sum of rewards from step i to the end
        episode_of_step = np.repeat(np.arange(len(self.starts)), self.lengths)
        after_episode = np.concatenate([suffix, [0.0]])[self.starts + self.lengths][episode_of_step]
        self.rtg = ((suffix - after_episode) / spec.rtg_scale).astype(np.float32)  # [N] return-to-go in the episode
        self.timestep = (np.arange(data.num_steps) - self.starts[episode_of_step]).astype(np.int64)  # [N]
        self.last_step = self.timestep == self.lengths[episode_of_step] - 1  # [N] the episode's final step
        self.terminal = data.terminals.astype(bool)  # [N] the episode ended by termination (not a time limit)
        self.episode_of_step = episode_of_step  # [N]
        histories = data.episode_history
        self.histories = [np.flatnonzero(histories == h) for h in np.unique(histories)]  # episode ids per history
        self.episode_of_history = np.searchsorted(np.unique(histories), histories)  # [E] index into histories

    def _history_episodes(self, count: int | None = None) -> np.ndarray:
        """``count`` (default n) episode ids from one random history: a strided window (in play order) or random
        episodes."""
        s = self.spec
        count = count or s.n_context
        episodes = self.histories[self.rng.integers(len(self.histories))]
        if s.kind == "sorted" and s.sampling == "random":
            picked = self.rng.choice(len(episodes), size=count, replace=len(episodes) < count)
            return episodes[np.sort(picked)]
        stride = max(1, min(s.stride, (len(episodes) - 1) // max(count - 1, 1)))
        span = stride * (count - 1) + 1
        if span > len(episodes):  # a history shorter than n episodes: repeat its last one
            return episodes[np.minimum(np.arange(count), len(episodes) - 1)]
        first = self.rng.integers(len(episodes) - span + 1)
        return episodes[first + stride * np.arange(count)]

    def _offset_window(self) -> tuple[np.ndarray, int]:
        """A history window of ``spec.window`` steps starting at any step of the first of n + 1 strided episodes
        (every phase of an episode, so every window the online policy holds once its window slides), and the step
        before it (-1 where the window starts at the history's first step: nothing before it in play order).

        The window is always full, as online once ``window`` steps are played: where n + 1 episodes hold fewer steps
        than it needs (episodes that end early, as a learner's later episodes on Darkroom Hard or Key-to-Door),
        further episodes of the same stride follow, and where the history ends first, the window is its last
        ``window`` steps at that stride."""
        s = self.spec
        episodes = self._history_episodes(s.n_context + 1)
        offset = int(self.rng.integers(self.lengths[episodes[0]]))
        history = self.histories[int(self.episode_of_history[episodes[0]])]
        stride = max(int(np.diff(np.searchsorted(history, episodes[:2]))[0]), 1)  # in the history's play order
        if self.lengths[episodes].sum() < offset + s.window:
            first = episodes[0]
            episodes = self._strided_run(history, first, stride, offset + s.window)
            if episodes[0] != first:  # extended backwards: the history's last steps at this stride
                offset = max(int(self.lengths[episodes].sum()) - s.window, 0)
        steps = self._steps_of(episodes)
        before = int(steps[offset - 1]) if offset else self._step_before(history, episodes[0], stride)
        return steps[offset: offset + s.window], before

    def _strided_run(self, history: np.ndarray, first: int, stride: int, needed: int) -> np.ndarray:
        """Episodes of ``history`` at ``stride`` from ``first`` on until they hold ``needed`` steps; where the
        history ends before that, its last episodes at that stride that hold them (or all it has)."""
        row = history[(int(np.searchsorted(history, first)) % stride)::stride]  # the history at this stride
        start = int(np.searchsorted(row, first))
        held = np.cumsum(self.lengths[row[start:]])
        last = int(np.searchsorted(held, needed))  # the first episode at which ``needed`` steps are held
        if last < len(held):
            return row[start: start + last + 1]
        back = np.cumsum(self.lengths[row[::-1]])
        count = min(int(np.searchsorted(back, needed)) + 1, len(row))
        return row[len(row) - count:]

    def _step_before(self, history: np.ndarray, episode: int, stride: int) -> int:
        """The last step of the episode ``stride`` before ``episode`` in ``history`` (-1: none)."""
        position = int(np.searchsorted(history, episode)) - stride
        if position < 0:
            return -1
        previous = history[position]
        return int(self.starts[previous] + self.lengths[previous] - 1)

    def _steps_of(self, episodes: np.ndarray) -> np.ndarray:
        return np.concatenate([np.arange(self.starts[e], self.starts[e] + self.lengths[e]) for e in episodes])

    def _length_sorted_batch(self, batch_size: int) -> list[np.ndarray]:
        """The authors' D4RL contexts: batch_size × n episodes of the whole dataset drawn with replacement in
        proportion to their length, sorted by return, cut into consecutive runs of n (so each context's episodes
        have neighbouring returns, ascending)."""
        n = self.spec.n_context
        drawn = self.rng.choice(len(self.starts), size=batch_size * n, replace=True,
                                p=self.lengths / self.lengths.sum())
        drawn = drawn[np.argsort(self.returns[drawn], kind="stable")]
        return [drawn[b * n:(b + 1) * n] for b in range(batch_size)]

    def sample_indices(self, batch_size: int) -> list[np.ndarray]:
        """Step indices of each context (a list of [L_b] int arrays)."""
        return self.sample_contexts(batch_size)[0]

    def sample_contexts(self, batch_size: int) -> tuple[list[np.ndarray], list[int]]:
        """Step indices of each context (a list of [L_b] int arrays) and the step before each (-1: none)."""
        if self.spec.kind == "sorted" and self.spec.sampling == "length":
            contexts = [self._steps_of(episodes) for episodes in self._length_sorted_batch(batch_size)]
            return contexts, [-1] * batch_size
        if self.spec.kind == "history" and self.spec.window:
            windows = [self._offset_window() for _ in range(batch_size)]
            return [w for w, _ in windows], [lead for _, lead in windows]
        contexts = []
        for _ in range(batch_size):
            if self.spec.kind == "episode":
                e = self.rng.integers(len(self.starts))
                length = self.lengths[e]
                window = min(self.spec.episode_len, length)
                first = self.starts[e] + self.rng.integers(length - window + 1)
                contexts.append(np.arange(first, first + window))
                continue
            episodes = self._history_episodes()
            if self.spec.kind == "sorted":
                episodes = episodes[np.argsort(self.returns[episodes], kind="stable")]
            contexts.append(self._steps_of(episodes))
        return contexts, [-1] * batch_size

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        return self.collate(*self.sample_contexts(batch_size))

    def collate(self, contexts: list[np.ndarray], leads: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Right-pad the contexts to one length and gather every per-step array; ``leads`` are the steps before
        each context (-1 or None: none)."""
        length = max(len(c) for c in contexts)
        index = np.zeros((len(contexts), length), dtype=np.int64)
        mask = np.zeros((len(contexts), length), dtype=bool)
        for b, steps in enumerate(contexts):
            index[b, : len(steps)], mask[b, : len(steps)] = steps, True
        timestep = self.timestep[index]
        # the real flag: a window that starts mid-episode starts no episode (block layouts start a block there
        # anyway, dmh.models.block_layout)
        episode_start = (timestep == 0) & mask
        prev = np.concatenate([np.array(leads or [-1] * len(contexts), dtype=np.int64)[:, None], index[:, :-1]],
                              axis=1)  # [B, L] the step before each step in play order, -1 none
        none = -1 if self.actions.ndim == 1 else 0
        prev_actions = np.where((prev >= 0).reshape(prev.shape + (1,) * (self.actions.ndim - 1)),
                                self.actions[np.maximum(prev, 0)], none).astype(self.actions.dtype)
        prev_rewards = np.where(prev >= 0, self.rewards[np.maximum(prev, 0)], 0.0).astype(np.float32)
        done = self.last_step[index] & mask
        rtg = self.rtg[index]
        if self.spec.rtg_relabel and self.spec.kind == "sorted":
            rtg = rtg + self.relabel_offset(contexts, index)
        return {
            "obs": torch.from_numpy(self.obs[index]),
            "actions": torch.from_numpy(self.actions[index]),
            "rewards": torch.from_numpy(self.rewards[index] * mask),
            "timesteps": torch.from_numpy(timestep * mask),
            "episode_start": torch.from_numpy(episode_start),
            "done": torch.from_numpy(done),
            "terminal": torch.from_numpy(self.terminal[index] & mask),
            "mask": torch.from_numpy(mask),
            "rtg": torch.from_numpy((rtg * mask).astype(np.float32)),
            "prev_actions": torch.from_numpy(prev_actions),
            "prev_rewards": torch.from_numpy(prev_rewards * mask),
        }

    def relabel_offset(self, contexts: list[np.ndarray], index: np.ndarray) -> np.ndarray:
        """[B, L] what hindsight relabelling adds to each step's return-to-go: the context's best return minus the
        return of the step's own episode (scaled), so every episode's return-to-go starts at the best return and
        falls by the rewards it collects, as the policy's does online from the target return."""
        episode = self.episode_of_step[index]  # [B, L]
        best = np.array([self.returns[self.episode_of_step[steps]].max() for steps in contexts])  # [B]
        return ((best[:, None] - self.returns[episode]) / self.spec.rtg_scale).astype(np.float32)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A sampled batch on the training device. To a GPU through pinned memory: only a copy from pinned memory is
    asynchronous (``non_blocking`` from pageable memory is a staged copy the host waits for), so the host goes on
    queueing the forward while the batch is in flight. Not on a CPU, where pinning has nothing to gain (and fails
    without CUDA)."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
