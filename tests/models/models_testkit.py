"""Synthetic batches and tiny configs shared by the model tests (no environments or datasets involved).

A plain module with a unique name (not a conftest.py) so it cannot clash with other test directories."""

from __future__ import annotations

import torch

from dmh.models import AlgorithmDistillation, config_class

ALGOS = ["dmh", "dm", "dt", "ad-transformer", "ad-mamba"]
SINGLE_EPISODE = {"dm", "dt"}


def tiny_config(algo: str, discrete: bool = True, **overrides):
    """A few-thousand-parameter config of `algo` (dropout 0 so train-mode comparisons are deterministic)."""
    fields = dict(
        obs_dim=3, act_dim=4 if discrete else 2, discrete=discrete, max_timestep=32, d_model=16, n_layer=2,
        n_head=2, n_mamba_layer=2, d_state=4, dropout=0.0, mamba_backend="torch", scan_chunk=8,
    )
    if algo == "dmh":
        fields.update(c=3, rtg_token=True, z_eval="mean", z_train="mean", local_checkpoint_chunk=2)
    elif algo in SINGLE_EPISODE:
        fields.update(context_len=16)
    else:
        fields.update(context_len=40)
    fields.update(overrides)
    return config_class(algo)(**fields)


def make_batch(
    episode_lengths: list[list[int]], obs_dim: int = 3, act_dim: int = 4, discrete: bool = True,
    length: int | None = None, target_return: float = 5.0, rtg_scale: float = 1.0, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """One row per list of episode lengths: the episodes concatenated in order, right-padded to `length`.

    `rtg` is (target_return - rewards collected so far in the episode) / rtg_scale, i.e. what a policy conditioned on
    `target_return` computes online, so forward and step see the same return-to-go tokens."""
    g = torch.Generator().manual_seed(seed)
    length = length or max(sum(row) for row in episode_lengths)
    batch_size = len(episode_lengths)
    obs = torch.randn(batch_size, length, obs_dim, generator=g)
    if discrete:
        actions = torch.randint(0, act_dim, (batch_size, length), generator=g)
    else:
        actions = torch.rand(batch_size, length, act_dim, generator=g) * 1.8 - 0.9
    rewards = (torch.rand(batch_size, length, generator=g) < 0.3).float() * torch.rand(batch_size, length, generator=g)
    timesteps = torch.zeros(batch_size, length, dtype=torch.long)
    episode_start = torch.zeros(batch_size, length, dtype=torch.bool)
    done = torch.zeros(batch_size, length, dtype=torch.bool)
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    rtg = torch.zeros(batch_size, length)
    for b, row in enumerate(episode_lengths):
        t0 = 0
        for n in row:
            sl = slice(t0, t0 + n)
            timesteps[b, sl] = torch.arange(n)
            episode_start[b, t0] = True
            done[b, t0 + n - 1] = True
            mask[b, sl] = True
            collected = torch.cumsum(rewards[b, sl], 0) - rewards[b, sl]
            rtg[b, sl] = (target_return - collected) / rtg_scale
            t0 += n
    rewards = rewards * mask
    terminal = done & (timesteps % 2 == 0)  # episodes of odd length end by termination, the others by a time limit
    return dict(obs=obs, actions=actions, rewards=rewards, timesteps=timesteps, episode_start=episode_start,
                done=done, terminal=terminal, mask=mask, rtg=rtg)


def policy_outputs(model, batch: dict[str, torch.Tensor], target_return: float = 5.0, **policy_kwargs) -> torch.Tensor:
    """Drive `model.policy` through the batch's trajectories step by step -> outputs [B, L, act_dim]."""
    batch_size, length = batch["mask"].shape
    kwargs = dict(policy_kwargs)
    if not isinstance(model, AlgorithmDistillation):
        kwargs.setdefault("target_return", target_return)
    policy = model.policy(batch_size, **kwargs)
    policy.reset()
    outs = []
    for t in range(length):
        outs.append(policy.act(batch["obs"][:, t], batch["timesteps"][:, t]))
        policy.observe(batch["actions"][:, t], batch["rewards"][:, t], batch["done"][:, t], batch["terminal"][:, t])
    return torch.stack(outs, dim=1)

