"""The action loss every model trains on, and which steps of a context it supervises."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def action_loss(pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, discrete: bool) -> torch.Tensor:
    """Mean over supervised steps: cross-entropy (discrete) or MSE over action dims (continuous), as in the paper.

    pred [B, L, act_dim]; actions [B, L] int64 or [B, L, act_dim]; mask [B, L] bool.
    """
    if discrete:
        target = actions.flatten().clamp(0, pred.shape[-1] - 1)  # padding may hold any value
        per_step = F.cross_entropy(pred.flatten(0, 1), target, reduction="none")
    else:
        per_step = ((pred - actions) ** 2).mean(-1).flatten()
    m = mask.flatten()
    return torch.where(m, per_step, 0.0).sum() / m.sum().clamp(min=1)


def last_episode_mask(episode_start: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the valid steps of the last episode in each context (the authors' loss mask, §8.2 item 7)."""
    episode = torch.cumsum(episode_start.long(), dim=1)  # [B, L] episode index within the context
    last = torch.where(mask, episode, -1).amax(dim=1, keepdim=True)
    return mask & (episode == last)


def loss_mask(batch: dict[str, torch.Tensor], loss_on: str) -> torch.Tensor:
    """The steps a model is supervised on, per `ModelConfig.loss_on`."""
    if loss_on == "all":
        return batch["mask"]
    if loss_on == "last_episode":
        return last_episode_mask(batch["episode_start"], batch["mask"])
    raise ValueError(f"loss_on must be all|last_episode, got {loss_on!r}")
