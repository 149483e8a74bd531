"""Algorithm Distillation (Laskin et al. 2023) over the across-episodic context, with a transformer or Mamba backbone.

Two token layouts (`ADConfig.tokens`; the paper does not say which its AD uses, docs/reproduction.md):

- "step" (default): one token per step, a linear map of (state s_t, previous action a_{t-1}, previous reward r_{t-1},
  episode-start flag) plus the within-episode timestep embedding. The previous action and reward cross episode
  boundaries on purpose: the last reward of an episode is evidence about the task. At the first step of a context
  there is no previous step ("none" action, reward 0). The same information as AD's three tokens at a third of the
  sequence length, which is what makes the 4000-step contexts affordable on a CPU.
- "separate": AD's original three tokens per step, s_t, a_t, r_t (each plus the timestep embedding); a_t is read at
  the s_t token, which sees every earlier step's (s, a, r).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dmh.models.layers import ActionEmbedding, ActionHead, ContextShape, ModelConfig, TimestepEmbedding, shift_right
from dmh.models.losses import action_loss, loss_mask
from dmh.models.policy import Policy


@dataclass
class ADConfig(ModelConfig):
    """Algorithm Distillation with a transformer backbone (the paper's "AD (Transformer)")."""

    backbone: Literal["transformer", "mamba"] = "transformer"  # AD (Transformer) vs AD (Mamba), paper §2.1
    context_len: int = 4000  # steps in a training window and in the transformer's online window (n * episode length)
    tokens: Literal["step", "separate"] = "step"  # one token per step, or AD's (s_t, a_t, r_t) as three tokens
    window_hop: int = 1  # transformer online: steps a full window drops at once. 1 = always the last context_len
    # steps (re-encoded at every step once full); h > 1 re-encodes once per h steps, attending to the last
    # context_len - h + 1 .. context_len steps

    @classmethod
    def fields_for(cls, shape: ContextShape) -> dict[str, Any]:
        return {**super().fields_for(shape), "context_len": shape.n_context * shape.horizon}


@dataclass
class ADMambaConfig(ADConfig):
    """AD (Mamba): the same tokens with a Mamba backbone; online it keeps all test episodes in its state."""

    backbone: Literal["transformer", "mamba"] = "mamba"


# The token order of one step in the "separate" layout: a_t is read at the s_t token.
SEPARATE_TOKENS = ("state", "action", "reward")


class AlgorithmDistillation(nn.Module):
    """AD: `forward(batch) -> [B, L, act_dim]`, `loss(batch)`, `policy(batch_size)`."""

    def __init__(self, cfg: ADConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.unit = len(SEPARATE_TOKENS) if cfg.tokens == "separate" else 1  # tokens per step
        if cfg.tokens == "separate":
            self.embed_state = nn.Linear(cfg.obs_dim, d)
            self.embed_action = ActionEmbedding(cfg.act_dim, cfg.discrete, d)
            self.embed_reward = nn.Linear(1, d)
        else:
            act_feat = cfg.act_dim + 1 if cfg.discrete else cfg.act_dim  # one-hot with a "none" slot / the vector
            self.embed_step = nn.Linear(cfg.obs_dim + act_feat + 2, d)  # (s_t, a_{t-1}, r_{t-1}, episode_start_t)
        self.embed_timestep = TimestepEmbedding(cfg.max_timestep, d)
        self.embed_ln = nn.LayerNorm(d)
        # a GPT drops its input tokens itself (once, as GPT-2); a Mamba backbone does not, so AD (Mamba)'s are
        # dropped here
        self.drop = nn.Dropout(cfg.dropout) if cfg.backbone == "mamba" else nn.Identity()
        if cfg.backbone == "transformer":
            self.backbone = cfg.gpt(self.unit * cfg.context_len, position_embedding=True)
        else:
            self.backbone = cfg.mamba()
        self.head = ActionHead(d, cfg.act_dim, cfg.discrete)

    def _action_features(self, action: torch.Tensor) -> torch.Tensor:
        """a [...] int64 (-1 = none) or [..., act_dim] -> features [..., act_feat]."""
        if self.cfg.discrete:
            return F.one_hot(torch.where(action < 0, self.cfg.act_dim, action), self.cfg.act_dim + 1).float()
        return action

    def embed(
        self, obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor, episode_start: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Step tokens: obs [B, L, obs_dim], prev_action [B, L(, act_dim)], prev_reward, episode_start, t [B, L]
        -> [B, L, d]."""
        feats = torch.cat([obs, self._action_features(prev_action), prev_reward.unsqueeze(-1),
                           episode_start.float().unsqueeze(-1)], dim=-1)
        return self.drop(self.embed_ln(self.embed_step(feats) + self.embed_timestep(t)))

    def separate_tokens(self, t: torch.Tensor, obs: torch.Tensor | None = None, action: torch.Tensor | None = None,
                        reward: torch.Tensor | None = None) -> torch.Tensor:
        """The "separate" layout's tokens of the given parts of a step, in `SEPARATE_TOKENS` order: t [...] and obs
        [..., obs_dim], action [...(, act_dim)], reward [...] -> [..., n, d] (n = how many parts were given)."""
        time = self.embed_timestep(t)
        parts = [] if obs is None else [self.embed_state(obs)]
        if action is not None:
            parts += [self.embed_action(action), self.embed_reward(reward.unsqueeze(-1))]
        return self.drop(self.embed_ln(torch.stack([p + time for p in parts], dim=-2)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-step action predictions [B, L, act_dim] over an across-episodic context."""
        if self.cfg.tokens == "separate":
            x = self.separate_tokens(batch["timesteps"], batch["obs"], batch["actions"], batch["rewards"])
            h = self.backbone(x.flatten(1, 2)).unflatten(1, (x.shape[1], self.unit))  # [B, L, 3, d]
            return self.head(h[:, :, SEPARATE_TOKENS.index("state")])
        if "prev_actions" in batch:  # the data layer's: a window may start mid-episode, after a real step
            prev_action, prev_reward = batch["prev_actions"], batch["prev_rewards"]
        else:  # a context that starts a task: nothing before its first step
            prev_action = shift_right(batch["actions"], -1 if self.cfg.discrete else 0.0)
            prev_reward = shift_right(batch["rewards"], 0.0)
        x = self.embed(batch["obs"], prev_action, prev_reward, batch["episode_start"], batch["timesteps"])  # [B, L, d]
        return self.head(self.backbone(x))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        mask = loss_mask(batch, self.cfg.loss_on)
        loss = action_loss(self(batch), batch["actions"], mask, self.cfg.discrete)
        return loss, {"loss": loss.item()}

    def policy(self, batch_size: int, target_return: float | torch.Tensor = 0.0,
               generator: torch.Generator | None = None) -> ADPolicy:  # generator: accepted as by DM-H, nothing drawn
        """Online policy. AD conditions on no return; ``target_return`` is accepted so every model's policy is built
        the same way."""
        return ADPolicy(self, batch_size)


class ADPolicy(Policy):
    """Across-episodic context that is never cleared within a task: a sliding window of `context_len` steps (KV cache)
    for the transformer, the recurrent state over every step since `reset()` for Mamba."""

    def __init__(self, model: AlgorithmDistillation, batch_size: int) -> None:
        super().__init__(model, batch_size)
        self.reset()

    def reset(self) -> None:
        self._prepare()
        cfg, b = self.model.cfg, self.batch_size
        hop = {"hop": cfg.window_hop} if cfg.backbone == "transformer" else {}
        self.state = self.model.backbone.init_state(b, self.device, unit=self.model.unit, **hop)
        self.timestep = torch.zeros(b, dtype=torch.long, device=self.device)
        self.prev_action = (torch.full((b,), -1, dtype=torch.long, device=self.device) if cfg.discrete
                            else torch.zeros(b, cfg.act_dim, device=self.device))
        self.prev_reward = torch.zeros(b, device=self.device)
        self.episode_start = torch.ones(b, dtype=torch.bool, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        obs, timestep = self._as(obs, torch.float32), self._as(timestep, torch.long)
        if self.model.cfg.tokens == "separate":
            self.timestep = timestep  # the step's (a, r) tokens carry it too
            h = self.model.backbone.step(self.model.separate_tokens(timestep, obs), self.state)  # [B, 1, d]
            return self.model.head(h[:, 0])
        x = self.model.embed(obs[:, None], self.prev_action[:, None], self.prev_reward[:, None],
                             self.episode_start[:, None], timestep[:, None])  # [B, 1, d]
        return self.model.head(self.model.backbone.step(x, self.state)[:, 0])

    @torch.no_grad()
    def observe(self, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
                terminated: torch.Tensor | None = None) -> None:
        self.prev_action = self._action(action)
        self.prev_reward = self._as(reward, torch.float32)
        if self.model.cfg.tokens == "separate":
            self.model.backbone.step(self.model.separate_tokens(self.timestep, None, self.prev_action,
                                                                self.prev_reward), self.state)
        self.episode_start = self._as(done, torch.bool)
