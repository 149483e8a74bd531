"""DM-H's blocks of `c` steps (one sub-goal each): where every step of a context sits in its block, and the valuable
sub-goal rule that picks each block's s_g.

These are the single place in the code for two paper concepts (§2.3 Eq. 5 and §2.5), so the data layer can reuse
them and a reader finds them by name. (Training contexts themselves are built in ``dmh/training/contexts.py``.)

Block layout. Inside a context (several episodes concatenated, right-padded), every episode is cut into blocks of `c`
consecutive steps that START at the episode's first step; the last block of an episode may be partial (an episode of
T steps has ceil(T / c) blocks). The first step of a context also starts a block, even if the context begins in the
middle of an episode. Blocks are numbered in context order, so block k's Mamba tokens come after block k-1's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class BlockLayout:
    """Where each step of a [B, L] context sits in the [B, NB, c] grid of blocks."""

    index: torch.Tensor  # [B, NB, c] int64 step index of each slot (0 in empty slots)
    valid: torch.Tensor  # [B, NB, c] bool slot holds a real (unpadded) step; empty slots only at a block's end
    block_valid: torch.Tensor  # [B, NB] bool block exists (right-padded like the steps)
    step_block: torch.Tensor  # [B, L] int64 block number of each step (-1 on padding)
    step_pos: torch.Tensor  # [B, L] int64 position of each step within its block, 0..c-1

    @property
    def start(self) -> torch.Tensor:
        """[B, NB] step index of each block's first step."""
        return self.index[:, :, 0]

    @property
    def last(self) -> torch.Tensor:
        """[B, NB] step index of each block's last step."""
        n_steps = self.valid.sum(-1).clamp(min=1)  # [B, NB]
        return self.index.gather(2, (n_steps - 1)[..., None]).squeeze(-1)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step values x [B, L, ...] -> per-slot values [B, NB, c, ...] (empty slots hold step 0's value)."""
        b, nb, c = self.index.shape
        flat = self.index.reshape(b, nb * c)
        idx = flat.view(b, nb * c, *([1] * (x.dim() - 2))).expand(b, nb * c, *x.shape[2:])
        return torch.gather(x, 1, idx).view(b, nb, c, *x.shape[2:])

    def scatter(self, per_slot: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of `gather` on valid slots: [B, NB, c, ...] -> [B, L, ...] (zeros on padding)."""
        b = per_slot.shape[0]
        rows = torch.arange(b, device=per_slot.device)[:, None, None].expand_as(self.index)
        out = per_slot.new_zeros(b, length, *per_slot.shape[3:])
        return out.index_put((rows[self.valid], self.index[self.valid]), per_slot[self.valid])


def block_layout(episode_start: torch.Tensor, mask: torch.Tensor, c: int) -> BlockLayout:
    """Split right-padded contexts into blocks of `c` steps starting at every episode start.

    episode_start, mask: [B, L] bool. Works for any positive `c` and for episodes of any length.
    """
    if c < 1:
        raise ValueError(f"block size c must be a positive integer, got {c}")
    batch, length = mask.shape
    t = torch.arange(length, device=mask.device).expand(batch, length)  # [B, L]
    segment_start = episode_start.clone()
    segment_start[:, 0] = True
    episode_first = torch.cummax(torch.where(segment_start, t, 0), dim=1).values  # [B, L] first step of the episode
    pos = (t - episode_first) % c  # [B, L]
    starts = (pos == 0) & mask
    step_block = torch.where(mask, torch.cumsum(starts.long(), dim=1) - 1, -1)  # [B, L]
    n_blocks = max(int(step_block.max()) + 1, 1)
    index = torch.zeros(batch, n_blocks, c, dtype=torch.long, device=mask.device)
    valid = torch.zeros(batch, n_blocks, c, dtype=torch.bool, device=mask.device)
    rows, steps = mask.nonzero(as_tuple=True)
    index[rows, step_block[rows, steps], pos[rows, steps]] = steps
    valid[rows, step_block[rows, steps], pos[rows, steps]] = True
    return BlockLayout(index=index, valid=valid, block_valid=valid[:, :, 0], step_block=step_block, step_pos=pos)


def episode_last_step(episode_start: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L] int64: for each step, the index of the last valid step of its episode within the context."""
    batch, length = mask.shape
    t = torch.arange(length, device=mask.device).expand(batch, length)
    starts = episode_start.clone()
    starts[:, 0] = True
    episode = torch.cumsum(starts.long(), dim=1) - 1  # [B, L] episode number in the context
    last = torch.full((batch, length), -1, dtype=torch.long, device=mask.device)
    last = last.scatter_reduce(1, episode, torch.where(mask, t, -1), reduce="amax")  # [B, n_episodes <= L]
    return last.gather(1, episode)


@torch.no_grad()
def valuable_subgoal_index(
    rewards: torch.Tensor,  # [B, L] reward of each step (received after acting at that step)
    episode_start: torch.Tensor,  # [B, L] bool
    mask: torch.Tensor,  # [B, L] bool
    from_steps: torch.Tensor,  # [B, NB] int64 step i at which a sub-goal is chosen (each block's first step)
    rule: Literal["paper", "code"] = "paper",
    block_last: torch.Tensor | None = None,  # [B, NB] int64 each block's last step (rule "code" only)
    block_valid: torch.Tensor | None = None,  # [B, NB] bool (rule "code" only)
    max_elements: int = 1 << 22,  # bound on the [B, blocks, L] score matrix built at once
) -> torch.Tensor:
    """The valuable sub-goal s_g for each state s_i in `from_steps`; returns the step indices j [B, NB] of s_g.

    rule "paper" (§2.5): the later state s_j of the same episode maximising the mean reward collected on the way,
    V(s_j | s_i) = sum_{k=i+1..j} r_k / (j - i). The paper's r_k is the reward for *arriving* at s_k; in our batches
    rewards[u] is the reward of the transition s_u -> s_{u+1}, so the sum is rewards[i .. j-1]. The transition out of
    the episode's last step e is included by letting j run to e + 1 and clipping the returned state to s_e (the
    authors' code does the same). Ties go to the nearest state (first argmax), so all-zero rewards select s_{i+1}.
    The sums are taken in float64: float32 cumulative sums make exactly tied reward sums compare unequal.

    rule "code" (the authors' D4RL code, §2.8): if the previous episode in the context had collected more reward by
    the end of some block than the current episode has by the end of this block, the goal is the start state of the
    block after the first such block (clipped to that episode's last block); otherwise the paper rule as the code's
    ``desired_states`` computes it, whose running maximum starts at 0: where no later state has a positive mean
    reward on the way, the goal is the next state s_{i+1}. The code's forward-only search pointer is dropped: with
    non-negative rewards both give the same block.
    """
    batch, length = rewards.shape
    r = (rewards * mask).double()
    csum = torch.cat([r.new_zeros(batch, 1), torch.cumsum(r, dim=1)], dim=1)  # [B, L+1] sum r[<j], float64
    last = episode_last_step(episode_start, mask).gather(1, from_steps)  # [B, NB] last step e of i's episode
    j = torch.arange(length + 1, device=rewards.device)  # candidate arrival states 0..L
    per_chunk = max(1, max_elements // max(batch * (length + 1), 1))
    out, positive = [], []
    for s in range(0, from_steps.shape[1], per_chunk):
        i = from_steps[:, s : s + per_chunk, None]  # [B, n, 1]
        e = last[:, s : s + per_chunk, None]
        score = (csum[:, None, :] - csum.gather(1, i.squeeze(-1))[..., None]) / (j - i).clamp(min=1)  # [B, n, L+1]
        score = score.masked_fill((j <= i) | (j > e + 1), float("-inf"))
        best, where = score.max(-1)  # the first maximum: ties go to the nearest state
        out.append(torch.minimum(where, e.squeeze(-1)).clamp(min=0))
        positive.append(best > 0)
    goal = torch.cat(out, dim=1)
    if rule == "paper":
        return goal
    if rule != "code" or block_last is None or block_valid is None:
        raise ValueError("rule must be 'paper', or 'code' with block_last and block_valid")
    next_state = torch.minimum(from_steps + 1, last)  # desired_states' goal while its running maximum stays 0
    goal = torch.where(torch.cat(positive, dim=1), goal, next_state)
    starts = episode_start.clone()
    starts[:, 0] = True
    episode = (torch.cumsum(starts.long(), dim=1) - 1).gather(1, from_steps)  # [B, NB] episode of each block
    first = torch.cummax(torch.where(starts, torch.arange(length, device=rewards.device), 0), dim=1).values
    collected = csum.gather(1, block_last + 1) - csum.gather(1, first.gather(1, from_steps))  # [B, NB] by block end
    better = (
        (episode[:, None, :] == episode[:, :, None] - 1) & block_valid[:, None, :]
        & (collected[:, None, :] > collected[:, :, None])
    )  # [B, NB (this block), NB (candidate block of the previous episode)]
    found = better.any(-1)
    m = better.float().argmax(-1)  # first such block
    following = (m + 1).clamp(max=from_steps.shape[1] - 1)
    same_episode = (episode.gather(1, following) == episode.gather(1, m)) & block_valid.gather(1, following)
    target = torch.where(same_episode, following, m)
    return torch.where(found, from_steps.gather(1, target), goal)
