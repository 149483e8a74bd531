"""The one online-inference interface every model exposes through `model.policy(batch_size, ...)`.

A policy is reset once per test task, then acts step by step across many episodes for a batch of environments. It
carries its context itself (recurrent Mamba state or a bounded KV cache), with no gradient updates:

    policy = model.policy(batch_size=8, target_return=...)   # every model accepts target_return
    policy.reset()
    for step in ...:
        out = policy.act(obs, timestep)          # [B, act_dim] logits or tanh-bounded means for the current step
        action = sample_or_argmax(out)            # the caller decides how to turn outputs into actions
        obs, reward, done = envs.step(action)
        policy.observe(action, reward, done, terminated)  # done[b]: row b starts a new episode at the next act
"""

from __future__ import annotations

import torch
from torch import nn


class Policy:
    """Base class: holds the model (switched to eval mode), the batch size and the device."""

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    def reset(self) -> None:
        """Clear all context; call once per test task (not per episode)."""
        raise NotImplementedError

    def act(self, obs: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim], timestep [B] (step index within each row's episode) -> [B, act_dim]."""
        raise NotImplementedError

    def observe(self, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
                terminated: torch.Tensor | None = None) -> None:
        """After the environment step: action [B] int64 or [B, act_dim], reward [B], done [B] bool (the episode
        ended); terminated [B] bool (it ended by termination, not a time limit), read only by DM-H with
        ``done_token = "terminal"``."""
        raise NotImplementedError

    def _prepare(self) -> None:
        self.model.eval()

    def _as(self, x: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
        """Environment outputs (numpy arrays, int64 Grid World positions, float64 rewards) as model inputs: always a
        copy, so a policy that keeps an input for a later step (DM-H keeps the previous timestep) never sees the
        caller change it in place (the online loop advances its timestep array with ``+=``)."""
        return torch.as_tensor(x, device=self.device).to(dtype, copy=True)

    def _action(self, action: torch.Tensor) -> torch.Tensor:
        return self._as(action, torch.long if self.model.cfg.discrete else torch.float32)
