"""Decision Mamba-Hybrid (DM-H, Huang et al. 2024): a Mamba over the coarsened across-episodic context emits a sub-goal
z once per block of `c` steps; a small GPT over the block's 4c tokens (z, s, a, r) x c predicts the block's actions.

High level (§2.3): per block the Mamba reads [RTG] s r_hat d, where s is the block's first state, r_hat the sum of the
block's rewards and d whether the episode ended in the block. z is read at the state token, so it sees only earlier
blocks and the current state. It is Gaussian with tanh-bounded mean and log-variance (the authors' head, §2.3).
Low level (§2.4): the local sequence holds the same z before each step; a_t is read at the s_t token.
Valuable sub-goals (§2.5): a second copy of every local sequence has z replaced by f(s_g), f a frozen random linear
map, and is supervised on the same actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dmh.models.block_layout import BlockLayout, block_layout, valuable_subgoal_index
from dmh.models.layers import ActionEmbedding, ActionHead, ContextShape, ModelConfig, TimestepEmbedding
from dmh.models.losses import action_loss, loss_mask
from dmh.models.policy import Policy


@dataclass
class DMHConfig(ModelConfig):
    """DM-H. Options marked "item N" are the paper's open questions (paper.md §8.2), see docs/reproduction.md."""

    c: int = 20  # steps per sub-goal / local context (paper: 20 for D4RL, Large Grid World, Tmaze; 5 Grid)
    rtg_token: bool = False  # item 1: prepend a return-to-go token to every Mamba block (authors' code; paper: no)
    rtg_scale: float = 1.0  # the data layer divides returns-to-go by this; the policy does the same online
    z_dim: int | None = None  # sub-goal size; None = obs_dim, as the authors' code (item 9)
    valuable_subgoals: bool = True  # item 8: the f(s_g) branch and its loss (off = the paper's ablation)
    subgoal_rule: Literal["paper", "code"] = "paper"  # item 8: s_g by the paper's formula, or the code's
    # previous-episode lookup falling back to the formula (see context.valuable_subgoal_index)
    subgoal_loss_weight: float = 0.5  # item 6: weight of the f(s_g) branch's loss (authors' code 0.5; paper silent)
    freeze_subgoal_proj: bool = True  # item 9: f stays at its random init (paper: frozen; code: detached)
    z_train: Literal["sample", "mean"] = "sample"  # item 10: z in training, reparameterised sample (code) or the mean
    z_eval: Literal["sample", "mean"] = "sample"  # item 10: z online / in eval mode
    z_draw: Literal["block", "step"] = "block"  # item 10: a sampled z is drawn once per block and held for its c steps
    # (Eq. 6: one z prefixes every step of a block), or afresh at every step from the block's mean and variance
    # (the authors' code, in training and online)
    local_context: Literal["block", "sliding"] = "block"  # item 11: online GPT context = the current block (paper,
    # Alg. 1; equals training) or the episode's last c steps with the current z repeated (authors' evaluator)
    local_checkpoint_chunk: int = 128  # local sequences per activation-checkpointed chunk in training (0 = off)
    block_tokens: Literal["separate", "fused"] = "separate"  # Mamba input per block: the paper's separate tokens
    # ([RTG,] s, r_hat, d), or one fused token [RTG +] s_k + r_hat_{k-1} + d_{k-1}: the same information in the same
    # causal order (z_k still sees s_k and every earlier block's r_hat and d) with 3-4x fewer Mamba tokens
    train_blocks: int = 0  # blocks per context whose local sequences are decoded in a training loss (a random
    # subset; 0 = all): an unbiased estimate of the loss at a fraction of the local GPT's cost
    block_dropout: bool = False  # dropout on the Mamba's block tokens too (the authors' code has none there: their
    # dropout is only in the local GPT; the paper is silent)
    done_token: Literal["episode_end", "terminal"] = "episode_end"  # d of a block = the episode ends in it (any end),
    # or only a true termination (the authors' code reads D4RL's `terminals`, so a time-limit end gives d = 0)

    @classmethod
    def fields_for(cls, shape: ContextShape) -> dict[str, Any]:
        return {**super().fields_for(shape), "c": shape.c, "valuable_subgoals": shape.valuable_subgoals,
                "rtg_scale": shape.rtg_scale, "rtg_token": shape.rtg_token}


# The token order of a block in the high-level Mamba (§2.3): [RTG] s r_hat d. The opening tokens are known when the
# block starts (z is read at its state token, so it sees only earlier blocks and s); the closing ones when it ends.
BLOCK_TOKENS = ("rtg", "state", "reward_sum", "done")
# The token order of one step in the local GPT (§2.4): z before each state, and a_t is read at the s_t token.
LOCAL_TOKENS = ("z", "state", "action", "reward")
LOCAL_STATE = LOCAL_TOKENS.index("state")
# Parameter-name prefixes of the high-level network (the authors' `DecisionMamba`); everything else is the low level.
HIGH_LEVEL = ("embed_block_", "block_ln", "mamba", "z_head")

class DecisionMambaHybrid(nn.Module):
    """DM-H: `forward(batch) -> [B, L, act_dim]`, `loss(batch)`, `policy(batch_size, target_return)`."""

    def __init__(self, cfg: DMHConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c = cfg.d_model, cfg.c
        self.z_dim = cfg.z_dim or cfg.obs_dim
        self.block_slots = BLOCK_TOKENS if cfg.rtg_token else BLOCK_TOKENS[1:]  # separate tokens, in order
        self.state_slot = self.block_slots.index("state")  # z is read here; slots after it close the block
        self.tokens_per_block = 1 if cfg.block_tokens == "fused" else len(self.block_slots)
        # high level: Mamba over block tokens
        self.embed_block_rtg = nn.Linear(1, d) if cfg.rtg_token else None
        self.embed_block_state = nn.Linear(cfg.obs_dim, d)
        self.embed_block_reward = nn.Linear(1, d)
        self.embed_block_done = nn.Embedding(2, d)
        self.block_ln = nn.LayerNorm(d)
        self.mamba = cfg.mamba()
        self.z_head = nn.Linear(d, 2 * self.z_dim)
        # low level: GPT over (z, s, a, r) x c
        self.embed_z = nn.Linear(self.z_dim, d)
        self.embed_state = nn.Linear(cfg.obs_dim, d)
        self.embed_action = ActionEmbedding(cfg.act_dim, cfg.discrete, d)
        self.embed_reward = nn.Linear(1, d)
        self.embed_timestep = TimestepEmbedding(cfg.max_timestep, d)
        self.embed_ln = nn.LayerNorm(d)
        self.gpt = cfg.gpt(len(LOCAL_TOKENS) * c)
        self.head = ActionHead(d, cfg.act_dim, cfg.discrete)
        # dropout on the local tokens is the GPT's own (once, on its input, as GPT-2); the Mamba's block tokens get
        # it only with block_dropout
        self.block_drop = nn.Dropout(cfg.dropout) if cfg.block_dropout else nn.Identity()
        if cfg.valuable_subgoals:
            self.subgoal_proj = nn.Linear(cfg.obs_dim, self.z_dim)  # f
            self.subgoal_proj.requires_grad_(not cfg.freeze_subgoal_proj)

    @property
    def done_key(self) -> str:
        """The batch key a block's d token reads: ``done`` (any episode end) or ``terminal`` (a true termination)."""
        return "terminal" if self.cfg.done_token == "terminal" else "done"

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The authors' two networks, whose gradients they clip separately (``grad_clip_scope = "module"``): the
        high level (block embeddings, Mamba, z head) and the low level (local embeddings, GPT, action head, f)."""
        high = [p for name, p in self.named_parameters() if name.startswith(HIGH_LEVEL)]
        low = [p for name, p in self.named_parameters() if not name.startswith(HIGH_LEVEL)]
        return [high, low]

    # ---------------------------------------------------------------------------------------------- high level
    def block_tokens(
        self, state: torch.Tensor, rtg: torch.Tensor | None, reward_sum: torch.Tensor, done: torch.Tensor
    ) -> torch.Tensor:
        """Per-block inputs [..., obs_dim], [...], [...], [...] bool -> Mamba tokens [..., tokens_per_block, d]."""
        embedded = {"state": self.embed_block_state(state),
                    "reward_sum": self.embed_block_reward(reward_sum.unsqueeze(-1)),
                    "done": self.embed_block_done(done.long())}
        if self.embed_block_rtg is not None:
            embedded["rtg"] = self.embed_block_rtg(rtg.unsqueeze(-1))
        return self.block_drop(self.block_ln(torch.stack([embedded[slot] for slot in self.block_slots], dim=-2)))

    def fused_block_token(
        self, state: torch.Tensor, rtg: torch.Tensor | None, prev_reward_sum: torch.Tensor, prev_done: torch.Tensor
    ) -> torch.Tensor:
        """One Mamba token per block: the state [..., obs_dim] plus the previous block's reward sum and done."""
        x = (self.embed_block_state(state) + self.embed_block_reward(prev_reward_sum.unsqueeze(-1))
             + self.embed_block_done(prev_done.long()))
        if self.embed_block_rtg is not None:
            x = x + self.embed_block_rtg(rtg.unsqueeze(-1))
        return self.block_drop(self.block_ln(x))

    def z_distribution(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mamba output at a state token [..., d] -> (mean, log-variance) [..., z_dim], both in (-1, 1)."""
        mean, logvar = torch.tanh(self.z_head(h)).chunk(2, dim=-1)
        return mean, logvar

    def draw_z(
        self, mean: torch.Tensor, logvar: torch.Tensor, mode: str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z [..., z_dim]: the mean, or a reparameterised sample (gradients flow into mean and log-variance)."""
        if mode == "mean":
            return mean
        where = mean.device if generator is None else generator.device  # a CPU generator cannot draw on CUDA
        eps = torch.randn(mean.shape, generator=generator, device=where, dtype=mean.dtype).to(mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def draw_block_z(self, mean: torch.Tensor, logvar: torch.Tensor, mode: str) -> torch.Tensor:
        """Every block's z from its (mean, log-variance) [B, NB, z_dim]: [B, NB, z_dim], or with `z_draw = "step"`
        one independent draw per step of the block, [B, NB, c, z_dim]."""
        if self.cfg.z_draw == "step":
            c = self.cfg.c
            mean, logvar = (x[:, :, None].expand(-1, -1, c, -1) for x in (mean, logvar))
        return self.draw_z(mean, logvar, mode)

    def subgoals(self, batch: dict[str, torch.Tensor], layout: BlockLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of z for every block, [B, NB, z_dim]: one Mamba pass over all block tokens."""
        rewards = layout.gather(batch["rewards"] * batch["mask"])  # [B, NB, c]
        reward_sum = (rewards * layout.valid).sum(-1)  # [B, NB]
        done = (layout.gather(batch[self.done_key]) & layout.valid).any(-1)  # [B, NB]
        start = layout.start
        state = layout.gather(batch["obs"])[:, :, 0]  # [B, NB, obs_dim]
        rtg = batch["rtg"].gather(1, start) if self.cfg.rtg_token else None
        if self.cfg.block_tokens == "fused":  # a context starts an episode: "previous block" = done, reward 0
            prev_reward = torch.cat([reward_sum.new_zeros(reward_sum.shape[0], 1), reward_sum[:, :-1]], dim=1)
            prev_done = torch.cat([done.new_ones(done.shape[0], 1), done[:, :-1]], dim=1)
            return self.z_distribution(self.mamba(self.fused_block_token(state, rtg, prev_reward, prev_done)))
        x = self.block_tokens(state, rtg, reward_sum, done)  # [B, NB, k, d]
        batch_size, n_blocks, k, d = x.shape
        h = self.mamba(x.reshape(batch_size, n_blocks * k, d)).reshape(batch_size, n_blocks, k, d)
        return self.z_distribution(h[:, :, self.state_slot])

    # ----------------------------------------------------------------------------------------------- low level
    def local_tokens(
        self, z: torch.Tensor, obs: torch.Tensor, action: torch.Tensor | None, reward: torch.Tensor | None,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Per-step local tokens: z [..., z_dim], obs [..., obs_dim], action, reward [...], t [...]
        -> [..., 2 or 4, d] = (z, s[, a, r]) each plus the timestep embedding."""
        time = self.embed_timestep(t)
        tokens = [self.embed_z(z) + time, self.embed_state(obs) + time]
        if action is not None:
            tokens += [self.embed_action(action) + time, self.embed_reward(reward.unsqueeze(-1)) + time]
        return self.embed_ln(torch.stack(tokens, dim=-2))

    def step_tokens(
        self, prev_action: torch.Tensor, prev_reward: torch.Tensor, prev_t: torch.Tensor, z: torch.Tensor,
        obs: torch.Tensor, t: torch.Tensor,
    ) -> torch.Tensor:
        """Online: the previous step's (a, r) and this step's (z, s) -> [B, 4, d], the tokens `local_tokens` makes
        for them (each plus its own step's timestep embedding), in sequence order."""
        time = self.embed_timestep(torch.stack([prev_t, t], dim=1))  # [B, 2, d]
        tokens = [self.embed_action(prev_action) + time[:, 0],
                  self.embed_reward(prev_reward.unsqueeze(-1)) + time[:, 0],
                  self.embed_z(z) + time[:, 1], self.embed_state(obs) + time[:, 1]]
        return self.embed_ln(torch.stack(tokens, dim=-2))

    def local_actions(self, batch: dict[str, torch.Tensor], layout: BlockLayout, *zs: torch.Tensor,
                      blocks: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Run the local GPT on every block's (z, s, a, r) x c sequence, once per sub-goal tensor z [B, NB, z_dim]
        (the z branch, and the f(s_g) branch in training; [B, NB, c, z_dim] gives each step its own z) -> one
        prediction [B, L, act_dim] per z.

        ``blocks`` [B, NB] bool restricts decoding to those blocks (other steps predict 0). Only the decoded blocks'
        steps are embedded, and all branches' local sequences go through the GPT in one call."""
        blocks = layout.block_valid if blocks is None else blocks
        c, k = self.cfg.c, len(LOCAL_TOKENS)
        rows, cols = blocks.nonzero(as_tuple=True)  # the decoded blocks, N of them, in [B, NB] order
        index = layout.index[rows, cols]  # [N, c] step of each slot
        steps = rows[:, None].expand_as(index)

        def pick(x: torch.Tensor) -> torch.Tensor:  # per-step x [B, L, ...] -> [N, c, ...]
            return x[steps, index]

        inputs = [pick(batch[key]) for key in ("obs", "actions", "rewards", "timesteps")]
        per_step = [z[rows, cols] if z.dim() == 4 else z[rows, cols][:, None].expand(-1, c, -1) for z in zs]
        seqs = torch.cat([self.local_tokens(z, *inputs) for z in per_step]).flatten(1, 2)  # [len(zs) * N, 4c, d]
        h = self._run_gpt(seqs).unflatten(1, (c, k))[:, :, LOCAL_STATE]  # [len(zs) * N, c, d]
        valid = layout.valid[rows, cols]  # [N, c]
        where = (steps[valid], index[valid])
        shape = (batch["obs"].shape[0], batch["obs"].shape[1], h.shape[-1])
        return [self.head(h.new_zeros(shape).index_put(where, part[valid])) for part in h.split(rows.shape[0])]

    def _run_gpt(self, seqs: torch.Tensor) -> torch.Tensor:
        """Blocks are independent sequences: in training, checkpoint them in chunks so activation memory stays
        bounded by the chunk, not by the context length (20k steps = 1000 local sequences at c = 20)."""
        chunk = self.cfg.local_checkpoint_chunk
        if not (chunk and torch.is_grad_enabled() and seqs.shape[0] > chunk):
            return self.gpt(seqs)
        return torch.cat([checkpoint(self.gpt, p, use_reentrant=False) for p in seqs.split(chunk)], dim=0)

    # --------------------------------------------------------------------------------------------- interface
    def branches(self, batch: dict[str, torch.Tensor], mode: str, sample_blocks: bool = False,
                 subgoal_branch: bool = False) -> tuple[BlockLayout, torch.Tensor | None, list[torch.Tensor]]:
        """One pass of the model over a batch, shared by ``forward`` and ``loss``: the block layout, the blocks
        decoded (``sample_blocks``: ``train_blocks`` of them per context, else None: all), and the per-step action
        predictions [B, L, act_dim] of the z branch (z drawn per ``mode``) and, with ``subgoal_branch``, of the
        f(s_g) branch (the valuable sub-goal's state through ``subgoal_proj``)."""
        layout = block_layout(batch["episode_start"], batch["mask"], self.cfg.c)
        mean, logvar = self.subgoals(batch, layout)
        blocks = self.sampled_blocks(layout) if sample_blocks else None
        zs = [self.draw_block_z(mean, logvar, mode)]
        if subgoal_branch:
            goal = valuable_subgoal_index(
                batch["rewards"], batch["episode_start"], batch["mask"], layout.start, self.cfg.subgoal_rule,
                block_last=layout.last, block_valid=layout.block_valid,
            )
            z_goal = self.subgoal_proj(batch["obs"].gather(1, goal[..., None].expand(*goal.shape, self.cfg.obs_dim)))
            zs.append(z_goal.detach() if self.cfg.freeze_subgoal_proj else z_goal)
        return layout, blocks, self.local_actions(batch, layout, *zs, blocks=blocks)

    def forward(self, batch: dict[str, torch.Tensor], z_mode: str | None = None) -> torch.Tensor:
        """Per-step action predictions [B, L, act_dim] from the z branch (z drawn per `z_train` / `z_eval`)."""
        mode = z_mode or (self.cfg.z_train if self.training else self.cfg.z_eval)
        return self.branches(batch, mode)[2][0]

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Action loss of the z branch, plus `subgoal_loss_weight` x the f(s_g) branch's (same actions, same steps)."""
        mode = self.cfg.z_train if self.training else self.cfg.z_eval
        sample_blocks = self.training and self.cfg.train_blocks > 0
        layout, blocks, predictions = self.branches(batch, mode, sample_blocks, self.cfg.valuable_subgoals)
        mask = loss_mask(batch, self.cfg.loss_on)
        if blocks is not None:
            mask = mask & blocks.gather(1, layout.step_block.clamp(min=0)) & (layout.step_block >= 0)
        loss_z = action_loss(predictions[0], batch["actions"], mask, self.cfg.discrete)
        logs = {"loss_z": loss_z.item()}
        loss = loss_z
        if self.cfg.valuable_subgoals:
            loss_goal = action_loss(predictions[1], batch["actions"], mask, self.cfg.discrete)
            loss = loss_z + self.cfg.subgoal_loss_weight * loss_goal
            logs["loss_goal"] = loss_goal.item()
        logs["loss"] = loss.item()
        return loss, logs

    def sampled_blocks(self, layout: BlockLayout) -> torch.Tensor:
        """[B, NB] bool: ``train_blocks`` valid blocks per context, drawn uniformly without replacement."""
        score = torch.rand(layout.block_valid.shape, device=layout.block_valid.device).masked_fill(
            ~layout.block_valid, -1.0)
        k = min(self.cfg.train_blocks, score.shape[1])
        chosen = torch.zeros_like(layout.block_valid).scatter(1, score.topk(k, dim=1).indices, True)
        return chosen & layout.block_valid

    def policy(
        self, batch_size: int, target_return: float | torch.Tensor = 0.0, z_mode: str | None = None,
        generator: torch.Generator | None = None,
    ) -> DMHPolicy:
        """Online policy; `target_return` (raw) feeds the optional RTG token, `z_mode` overrides `z_eval`."""
        return DMHPolicy(self, batch_size, target_return, z_mode or self.cfg.z_eval, generator)


class DMHPolicy(Policy):
    """Mamba state persists across all episodes since `reset()` and advances only at block boundaries (per row);
    the local GPT's KV cache is cleared at every block start, so it never holds more than 4c tokens.

    Per row and block: at the block's first `act`, the Mamba steps [RTG,] s and z is drawn (with `z_draw = "step"`
    z is drawn afresh at every `act` from the block's mean and variance); when the block is full or the episode
    ends, `observe` steps r_hat, d. The local GPT runs once per environment step: each `act` feeds the
    previous step's (a, r) and this step's (z, s) together, the same tokens in the same order as the training
    sequence. A row that starts a block has no previous step in it: its stale (a, r) go to the cache's last two
    slots, which no real token of a block reaches (its last real token, s_{c-1}, sits at 4c - 3) and no real query
    attends to (keys after the query's position are masked), and its (z, s) start the block at slots 0 and 1.
    With `local_context="sliding"` the GPT instead re-reads the episode's last c steps (at most 4c tokens) each act.
    """

    def __init__(
        self, model: DecisionMambaHybrid, batch_size: int, target_return: float | torch.Tensor, z_mode: str,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__(model, batch_size)
        self.target = self._as(target_return, torch.float32).expand(batch_size) / model.cfg.rtg_scale  # [B]
        self.z_mode, self.generator = z_mode, generator
        self.reset()

    def reset(self) -> None:
        self._prepare()
        m, b = self.model, self.batch_size
        self.mamba_state = m.mamba.init_state(b, self.device)
        self.cache = m.gpt.init_state(b, self.device, unit=len(LOCAL_TOKENS), slides=False)
        self.z = torch.zeros(b, m.z_dim, device=self.device)
        self.z_mean = torch.zeros(b, m.z_dim, device=self.device)  # z_draw "step": the current block's distribution
        self.z_logvar = torch.zeros(b, m.z_dim, device=self.device)
        self.pos = torch.zeros(b, dtype=torch.long, device=self.device)  # step within the current block
        self.prev_action = (torch.full((b,), -1, dtype=torch.long, device=self.device) if m.cfg.discrete
                            else torch.zeros(b, m.cfg.act_dim, device=self.device))  # the last observed step's a, r
        self.prev_reward = torch.zeros(b, device=self.device)
        self.prev_timestep = torch.zeros(b, dtype=torch.long, device=self.device)
        # cache slots of (a_{t-1}, r_{t-1}, z_t, s_t): after the held tokens, or for a row starting a block the last
        # two slots then 0 and 1
        self.slots = torch.arange(len(LOCAL_TOKENS), device=self.device)
        self.starting_slots = (self.slots - 2) % m.gpt.max_tokens
        self.reward_sum = torch.zeros(b, device=self.device)  # rewards so far in the current block
        self.rtg = self.target.clone()  # [B] scaled return still to go in the current episode
        self.timestep = torch.zeros(b, dtype=torch.long, device=self.device)
        self.prev_reward_sum = torch.zeros(b, device=self.device)  # fused block tokens: the previous block's r_hat
        self.prev_done = torch.ones(b, dtype=torch.bool, device=self.device)  # ... and d (a task starts an episode)
        if m.cfg.local_context == "sliding":  # the episode's last c steps: inputs, and how many are held per row
            c = m.cfg.c
            self.window = {
                "obs": torch.zeros(b, c, m.cfg.obs_dim, device=self.device),
                "actions": (torch.full((b, c), -1, dtype=torch.long, device=self.device) if m.cfg.discrete
                            else torch.zeros(b, c, m.cfg.act_dim, device=self.device)),
                "rewards": torch.zeros(b, c, device=self.device),
                "timesteps": torch.zeros(b, c, dtype=torch.long, device=self.device),
            }
            self.window_len = torch.zeros(b, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        m = self.model
        obs, self.timestep = self._as(obs, torch.float32), self._as(timestep, torch.long)
        starting = self.pos == 0  # [B] rows that begin a block at this step
        if bool(starting.any()):
            if m.cfg.block_tokens == "fused":
                token = m.fused_block_token(obs, self.rtg, self.prev_reward_sum, self.prev_done)
                h = m.mamba.step_token(token, self.mamba_state, advance=starting)
            else:
                blank = torch.zeros_like(self.rtg)
                opening = m.block_tokens(obs, self.rtg, blank, blank.bool())[:, : m.state_slot + 1]  # [RTG,] s
                for i in range(opening.shape[1]):
                    h = m.mamba.step_token(opening[:, i], self.mamba_state, advance=starting)
            mean, logvar = m.z_distribution(h)
            if m.cfg.z_draw == "block":
                z = m.draw_z(mean, logvar, self.z_mode, self.generator)
                self.z = torch.where(starting[:, None], z, self.z)
            else:  # the block's distribution, drawn from at every act below
                self.z_mean = torch.where(starting[:, None], mean, self.z_mean)
                self.z_logvar = torch.where(starting[:, None], logvar, self.z_logvar)
        if m.cfg.z_draw == "step":  # a fresh draw for every row at every step
            self.z = m.draw_z(self.z_mean, self.z_logvar, self.z_mode, self.generator)
        if m.cfg.local_context == "sliding":
            return self._act_sliding(obs)
        x = m.step_tokens(self.prev_action, self.prev_reward, self.prev_timestep, self.z, obs, self.timestep)
        pos = torch.where(starting[:, None], self.starting_slots, self.cache.length[:, None] + self.slots)  # [B, 4]
        self.cache.length = pos[:, -1] + 1
        return m.head(m.gpt.step(x, self.cache, pos)[:, -1])

    def _act_sliding(self, obs: torch.Tensor) -> torch.Tensor:
        m, rows, n = self.model, torch.arange(self.batch_size, device=self.device), self.window_len
        self.window["obs"][rows, n] = obs
        self.window["timesteps"][rows, n] = self.timestep
        w = self.window
        z = self.z[:, None].expand(-1, m.cfg.c, -1)
        x = m.local_tokens(z, w["obs"], w["actions"], w["rewards"], w["timesteps"]).flatten(1, 2)  # [B, 4c, d]
        at_state = len(LOCAL_TOKENS) * n + LOCAL_STATE  # [B]; later slots are stale but causally invisible
        return m.head(m.gpt(x)[rows, at_state])

    @torch.no_grad()
    def observe(self, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor,
                terminated: torch.Tensor | None = None) -> None:
        m = self.model
        action, reward, done = self._action(action), self._as(reward, torch.float32), self._as(done, torch.bool)
        if m.cfg.done_token == "terminal":
            if terminated is None:
                raise ValueError("a DM-H policy with done_token='terminal' needs observe(..., terminated=)")
            flag = self._as(terminated, torch.bool) & done  # the block's d token
        else:
            flag = done
        if m.cfg.local_context == "sliding":
            self._observe_sliding(action, reward, done)
        else:  # they enter the GPT with the next act
            self.prev_action, self.prev_reward, self.prev_timestep = action, reward, self.timestep
        self.reward_sum = self.reward_sum + reward
        self.pos = self.pos + 1
        ending = (self.pos == m.cfg.c) | done  # [B] rows whose block is complete
        if bool(ending.any()):
            if m.cfg.block_tokens == "fused":  # r_hat and d enter the Mamba with the next block's token
                self.prev_reward_sum = torch.where(ending, self.reward_sum, self.prev_reward_sum)
                self.prev_done = torch.where(ending, flag, self.prev_done)
            else:
                closing = m.block_tokens(torch.zeros(self.batch_size, m.cfg.obs_dim, device=self.device), self.rtg,
                                         self.reward_sum, flag)[:, m.state_slot + 1 :]  # r_hat, d
                for i in range(closing.shape[1]):
                    m.mamba.step_token(closing[:, i], self.mamba_state, advance=ending)
            self.reward_sum = self.reward_sum.masked_fill(ending, 0.0)
            self.pos = self.pos.masked_fill(ending, 0)
        self.rtg = torch.where(done, self.target, self.rtg - reward / m.cfg.rtg_scale)

    def _observe_sliding(self, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor) -> None:
        rows, c = torch.arange(self.batch_size, device=self.device), self.model.cfg.c
        self.window["actions"][rows, self.window_len] = action
        self.window["rewards"][rows, self.window_len] = reward
        self.window_len = self.window_len + 1
        full = self.window_len == c  # drop the oldest step so the next act has room
        for key, buf in self.window.items():
            shape = (-1,) + (1,) * (buf.dim() - 1)
            self.window[key] = torch.where(full.view(shape), buf.roll(-1, dims=1), buf)
        self.window_len = torch.where(full, c - 1, self.window_len).masked_fill(done, 0)
