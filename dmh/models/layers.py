"""Layers shared by every model: the common config (which builds the GPT and Mamba backbones), the embeddings and
the action head. Each model file only arranges these into its own token sequence; the loss is in ``losses.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from dmh.models.gpt import GPT
from dmh.models.mamba import Backend, MambaBackbone


@dataclass(frozen=True)
class ContextShape:
    """What a task and a training configuration fix about a model: the data's sizes and the context's n and c.
    The training layer fills it; each config class picks the fields it needs (``ModelConfig.fields_for``)."""

    obs_dim: int  # observation size
    act_dim: int  # number of actions (discrete) or action size (continuous)
    discrete: bool  # categorical actions
    horizon: int  # longest episode
    n_context: int  # episodes per across-episodic context (AD, DM-H)
    c: int  # DM-H steps per sub-goal
    episode_window: int  # steps per single-episode window (DT, DM)
    rtg_scale: float  # returns-to-go are divided by this (the task's scale)
    rtg_token: bool  # DM-H conditions its blocks on return-to-go (the task decides)
    valuable_subgoals: bool  # DM-H's valuable-sub-goal branch (off = the paper's ablation)


@dataclass
class ModelConfig:
    """Fields every model shares. Defaults are the paper's (§5, Table 3) where it gives one."""

    obs_dim: int  # observation size
    act_dim: int  # number of actions if discrete, else action vector size
    discrete: bool = True  # categorical actions (cross-entropy) vs continuous in [-1, 1] (tanh mean, MSE)
    max_timestep: int = 1000  # longest episode: timestep embedding has max_timestep + 1 rows (larger ones clamp)
    d_model: int = 128  # embedding width of every token and both backbones (paper: 128)
    dropout: float = 0.1  # embedding, attention and residual dropout (paper: 0.1)
    # --- transformer backbone (DT, AD (Transformer), DM-H's local GPT) ---
    n_layer: int = 3  # GPT blocks (paper: 3)
    n_head: int = 1  # attention heads; paper says 3, impossible with d=128, authors' code uses 1 (§8.2 item 3)
    activation: Literal["relu", "gelu"] = "relu"  # GPT MLP activation (paper: ReLU)
    gpt_init: Literal["gpt2", "torch"] = "gpt2"  # GPT weights: GPT-2's normal(0, 0.02) and zero biases (the
    # authors' and DT's trajectory_gpt2), or PyTorch's defaults
    # --- Mamba backbone (DM, AD (Mamba), DM-H's high level) ---
    n_mamba_layer: int = 2  # residual Mamba blocks (paper: 2)
    d_state: int = 16  # SSM state size (paper silent; code and mamba_ssm default 16)
    d_conv: int = 4  # Mamba conv width (paper: 4)
    expand: int = 2  # Mamba expand factor (paper: 2)
    mamba_backend: Backend = "auto"  # auto: CUDA kernels when importable and tensors are on CUDA, else pure torch
    scan_chunk: int = 64  # tokens per chunk of the pure-torch parallel scan
    checkpoint_scan: bool = True  # recompute scan chunks in backward: bounded memory at 20k-token contexts
    # --- loss ---
    loss_on: Literal["all", "last_episode"] = "all"  # steps supervised: all valid steps, or only the context's last
    # episode (authors' code for DM-H, §8.2 item 7); single-episode models (DT, DM) ignore it

    @classmethod
    def fields_for(cls, shape: ContextShape) -> dict[str, Any]:
        """The config fields a task and a context fix for this model (each model class adds its own)."""
        return dict(obs_dim=shape.obs_dim, act_dim=shape.act_dim, discrete=shape.discrete, max_timestep=shape.horizon)

    def mamba(self, n_layer: int | None = None) -> MambaBackbone:
        """A Mamba backbone built from these fields."""
        return MambaBackbone(
            self.d_model, n_layer or self.n_mamba_layer, d_state=self.d_state, d_conv=self.d_conv,
            expand=self.expand, backend=self.mamba_backend, scan_chunk=self.scan_chunk,
            checkpoint_scan=self.checkpoint_scan,
        )

    def gpt(self, max_tokens: int, position_embedding: bool = False) -> GPT:
        """A GPT backbone built from these fields."""
        return GPT(
            self.d_model, self.n_layer, self.n_head, max_tokens, dropout=self.dropout, activation=self.activation,
            position_embedding=position_embedding, init=self.gpt_init,
        )


class ActionEmbedding(nn.Module):
    """Action -> d_model: a lookup table for discrete actions (with one extra row for "no action yet"), a linear map
    for continuous ones (where "no action" is the zero vector)."""

    def __init__(self, act_dim: int, discrete: bool, d_model: int) -> None:
        super().__init__()
        self.discrete = discrete
        self.none_index = act_dim
        self.embed = nn.Embedding(act_dim + 1, d_model) if discrete else nn.Linear(act_dim, d_model)

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        """action [...] int64 (discrete, -1 = none) or [..., act_dim] float -> [..., d_model]."""
        if self.discrete:
            return self.embed(torch.where(action < 0, self.none_index, action))
        return self.embed(action)


def shift_right(x: torch.Tensor, fill: float | int) -> torch.Tensor:
    """x [B, L, ...] -> the value at t-1 for every t (`fill` at t=0): previous action / reward tokens of AD."""
    first = torch.full_like(x[:, :1], fill)
    return torch.cat([first, x[:, :-1]], dim=1)


class TimestepEmbedding(nn.Embedding):
    """Within-episode timestep -> d_model (DT's absolute timestep embedding); out-of-range steps clamp."""

    def __init__(self, max_timestep: int, d_model: int) -> None:
        super().__init__(max_timestep + 1, d_model)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return super().forward(t.clamp(0, self.num_embeddings - 1))


class ActionHead(nn.Module):
    """d_model -> action logits (discrete) or tanh-bounded means in [-1, 1] (continuous)."""

    def __init__(self, d_model: int, act_dim: int, discrete: bool) -> None:
        super().__init__()
        self.discrete = discrete
        self.proj = nn.Linear(d_model, act_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.proj(h)
        return out if self.discrete else torch.tanh(out)
