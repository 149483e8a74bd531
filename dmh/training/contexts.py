"""Training contexts as the paper builds them, from an ``EpisodeDataset`` into the models' batch format.

- AD: n episodes of one learning history, in the order the learner played them (every ``stride``-th episode), so
  the context shows improvement to distil.
- DM-H: n episodes of one history (a strided window for Grid World, random episodes elsewhere; or, as the authors'
  D4RL code, a batch of episodes drawn in proportion to their length, sorted and cut into consecutive contexts),
  **sorted by ascending return** (paper §1.2, after the Agentic Transformer's chain of hindsight). With hindsight
  relabelling, every episode's return-to-go is shifted so that it starts at the context's best return (the last
  episode's), which is what the policy is conditioned on online (the target return).
- DT / DM: a window of one episode, with its return-to-go.

Batch keys (``dmh.models`` contract; [B, L] right-padded): obs, actions, rewards, timesteps, episode_start, done,
terminal, mask, rtg.
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

    def _history_episodes(self) -> np.ndarray:
        """n episode ids from one random history: a strided window (in play order) or random episodes."""
        s = self.spec
        episodes = self.histories[self.rng.integers(len(self.histories))]
        if s.kind == "sorted" and s.sampling == "random":
            picked = self.rng.choice(len(episodes), size=s.n_context, replace=len(episodes) < s.n_context)
            return episodes[np.sort(picked)]
        stride = max(1, min(s.stride, (len(episodes) - 1) // max(s.n_context - 1, 1)))
        span = stride * (s.n_context - 1) + 1
        if span > len(episodes):  # a history shorter than n episodes: repeat its last one
            return episodes[np.minimum(np.arange(s.n_context), len(episodes) - 1)]
        first = self.rng.integers(len(episodes) - span + 1)
        return episodes[first + stride * np.arange(s.n_context)]

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
        if self.spec.kind == "sorted" and self.spec.sampling == "length":
            return [self._steps_of(episodes) for episodes in self._length_sorted_batch(batch_size)]
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
        return contexts

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        return self.collate(self.sample_indices(batch_size))

    def collate(self, contexts: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Right-pad the contexts to one length and gather every per-step array."""
        length = max(len(c) for c in contexts)
        index = np.zeros((len(contexts), length), dtype=np.int64)
        mask = np.zeros((len(contexts), length), dtype=bool)
        for b, steps in enumerate(contexts):
            index[b, : len(steps)], mask[b, : len(steps)] = steps, True
        timestep = self.timestep[index]
        episode_start = (timestep == 0) & mask
        episode_start[:, 0] = True  # a window that starts mid-episode still starts the context's first episode
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
