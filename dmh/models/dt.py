"""Decision Transformer (Chen et al. 2021) and Decision Mamba (the paper's DM: DT with a Mamba backbone).

Tokens per step: (return-to-go, state, action), each plus the within-episode timestep embedding; the action of step
t is read from the output at its state token. The context is a window of `context_len` steps of a single episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from dmh.models.layers import ActionEmbedding, ActionHead, ContextShape, ModelConfig, TimestepEmbedding
from dmh.models.losses import action_loss
from dmh.models.policy import Policy


@dataclass
class DTConfig(ModelConfig):
    """Decision Transformer. `backbone` is the only difference between DT and DM."""

    backbone: Literal["transformer", "mamba"] = "transformer"  # DT: GPT; DM: Mamba (paper §2.1)
    context_len: int = 20  # K, steps per training window and online window (Tmaze: the horizon, paper §4.2)
    rtg_scale: float = 1.0  # the data layer divides returns-to-go by this; the policy does the same online

    @classmethod
    def fields_for(cls, shape: ContextShape) -> dict[str, Any]:
        return {**super().fields_for(shape), "context_len": shape.episode_window, "rtg_scale": shape.rtg_scale}


@dataclass
class DMConfig(DTConfig):
    """Decision Mamba: DT with its transformer replaced by Mamba."""

    backbone: Literal["transformer", "mamba"] = "mamba"


class DecisionTransformer(nn.Module):
    """DT / DM: `forward(batch) -> [B, L, act_dim]`, `loss(batch)`, `policy(batch_size, target_return)`."""

    tokens_per_step = 3

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed_rtg = nn.Linear(1, d)
        self.embed_state = nn.Linear(cfg.obs_dim, d)
        self.embed_action = ActionEmbedding(cfg.act_dim, cfg.discrete, d)
        self.embed_timestep = TimestepEmbedding(cfg.max_timestep, d)
        self.embed_ln = nn.LayerNorm(d)
        # a GPT drops its input tokens itself (once, as GPT-2); a Mamba backbone does not, so DM's are dropped here
        self.drop = nn.Dropout(cfg.dropout) if cfg.backbone == "mamba" else nn.Identity()
        if cfg.backbone == "transformer":
            self.backbone = cfg.gpt(self.tokens_per_step * cfg.context_len)
        else:
            self.backbone = cfg.mamba()
        self.head = ActionHead(d, cfg.act_dim, cfg.discrete)

    def embed(
        self, rtg: torch.Tensor | None, obs: torch.Tensor | None, actions: torch.Tensor | None, t: torch.Tensor
    ) -> torch.Tensor:
        """The given tokens of each step, in (rtg, s, a) order, each plus the timestep embedding: rtg [B, L],
        obs [B, L, obs_dim], actions [B, L(, act_dim)], t [B, L] -> [B, L, tokens given, d]. Online, the policy
        embeds (rtg, s) before acting and a after it."""
        time = self.embed_timestep(t)
        tokens = []
        if rtg is not None:
            tokens.append(self.embed_rtg(rtg.unsqueeze(-1)) + time)
        if obs is not None:
            tokens.append(self.embed_state(obs) + time)
        if actions is not None:
            tokens.append(self.embed_action(actions) + time)
        return self.drop(self.embed_ln(torch.stack(tokens, dim=2)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-step action predictions [B, L, act_dim] (logits or tanh means) for a window of one episode."""
        x = self.embed(batch["rtg"], batch["obs"], batch["actions"], batch["timesteps"])  # [B, L, 3, d]
        batch_size, length = x.shape[:2]
        h = self.backbone(x.reshape(batch_size, length * 3, -1)).reshape(batch_size, length, 3, -1)
        return self.head(h[:, :, 1])  # predict a_t from the state token s_t

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = action_loss(self(batch), batch["actions"], batch["mask"], self.cfg.discrete)
        return loss, {"loss": loss.item()}

    def policy(self, batch_size: int, target_return: float | torch.Tensor = 0.0,
               generator: torch.Generator | None = None) -> DTPolicy:  # generator: accepted as by DM-H, nothing drawn
        """Online policy conditioned on `target_return` (raw, unscaled return; per row or shared)."""
        return DTPolicy(self, batch_size, target_return)


class DTPolicy(Policy):
    """Single-episode context: a row's context is cleared when its episode ends; the transformer keeps a KV cache of
    at most `context_len` steps (sliding), the Mamba backbone a recurrent state over the whole episode."""

    def __init__(self, model: DecisionTransformer, batch_size: int, target_return: float | torch.Tensor) -> None:
        super().__init__(model, batch_size)
        self.target = self._as(target_return, torch.float32).expand(batch_size) / model.cfg.rtg_scale  # [B]
        self.reset()

    def reset(self) -> None:
        self._prepare()
        m = self.model
        self.state = m.backbone.init_state(self.batch_size, self.device, unit=m.tokens_per_step)
        self.rtg = self.target.clone()  # [B] scaled return still to go in the current episode
        self.timestep = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        obs, self.timestep = self._as(obs, torch.float32), self._as(timestep, torch.long)
        x = self.model.embed(self.rtg[:, None], obs[:, None], None, self.timestep[:, None])  # [B, 1, 2, d]
        h = self.model.backbone.step(x[:, 0], self.state)  # [B, 2, d]
        return self.model.head(h[:, 1])

    @torch.no_grad()
    def observe(self, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
                terminated: torch.Tensor | None = None) -> None:
        m = self.model
        a = m.embed(None, None, self._action(action)[:, None], self.timestep[:, None])  # [B, 1, 1, d]
        m.backbone.step(a[:, 0], self.state)
        done = self._as(done, torch.bool)
        self.rtg = torch.where(done, self.target, self.rtg - self._as(reward, torch.float32) / m.cfg.rtg_scale)
        m.backbone.reset_rows(self.state, done)
