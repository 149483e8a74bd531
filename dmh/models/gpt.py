"""The causal GPT of DT, AD (Transformer) and DM-H's local level, with a per-row KV cache for online inference.

Layer names follow nanoGPT / the Decision Transformer's ``trajectory_gpt2`` (``c_attn``, ``c_proj``, ``ln_1`` …).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KVCache:
    """Inference context of a GPT: per-row keys/values, plus the block inputs so a full row can slide its window.

    Rows are independent: each has its own `length` (tokens held), so one row can start a new episode (DT) or block
    (DM-H) while others carry on.
    """

    k: list[torch.Tensor]  # per layer [B, max_tokens, n_head, head_dim]
    v: list[torch.Tensor]  # per layer [B, max_tokens, n_head, head_dim]
    inputs: torch.Tensor | None  # [B, max_tokens, d_model] token embeddings fed to the GPT (to re-encode a slid
    # window); None for a cache whose owner never lets a row overflow (DM-H's per-block cache)
    length: torch.Tensor  # [B] int64 tokens currently held per row
    unit: int  # tokens per environment step: a full window drops whole steps
    hop: int = 1  # whole steps a full window drops at least: 1 keeps the longest window; more re-encodes less often


def gpt2_init(module: nn.Module) -> None:
    """GPT-2's initialisation (the Decision Transformer's ``trajectory_gpt2``, which DM-H's authors use): weights of
    linear maps and embeddings from normal(0, 0.02), biases zero, LayerNorm at identity. Applied to the GPT's own
    modules only; the models' token embeddings keep PyTorch's defaults, as theirs do."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D]. Without a cache: causal attention within x. With a cache: x holds new tokens at per-row
        slots `pos [B, T]`; they are written into the cache and attend to the slots `mask [B, 1, T, max_tokens]`
        allows (`GPT.step`: every slot up to their own).
        Returns (y [B, T, D], k, v) with k, v [B, T, H, hd] so a caller can fill a cache from a full pass."""
        batch, length, d = x.shape
        q, k, v = self.c_attn(x).view(batch, length, 3, self.n_head, d // self.n_head).unbind(2)  # [B, T, H, hd]
        p = self.attn_dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p,
                                               is_causal=True)  # [B, H, T, hd]
        else:
            rows = torch.arange(batch, device=x.device)[:, None]  # [B, 1]
            cache.k[layer][rows, pos] = k
            cache.v[layer][rows, pos] = v
            y = F.scaled_dot_product_attention(q.transpose(1, 2), cache.k[layer].transpose(1, 2),
                                               cache.v[layer].transpose(1, 2), attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(batch, length, d)
        return self.resid_dropout(self.c_proj(y)), k, v


class GPTBlock(nn.Module):
    """GPT-2 block (pre-LayerNorm attention and MLP), as in the Decision Transformer's `trajectory_gpt2`."""

    def __init__(self, d_model: int, n_head: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.ReLU() if activation == "relu" else nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, k, v = self.attn(self.ln_1(x), cache, layer, pos, mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k, v


class GPT(nn.Module):
    """Causal GPT over already-embedded tokens, with an optional learned position embedding.

    Shares the backbone interface of `mamba.MambaBackbone`: `forward` for training, `init_state` / `step` /
    `reset_rows` for online inference with a KV cache of at most `max_tokens` tokens per row (a bounded window).
    """

    def __init__(
        self, d_model: int, n_layer: int, n_head: int, max_tokens: int, dropout: float = 0.1,
        activation: str = "relu", position_embedding: bool = False, init: str = "gpt2",
    ) -> None:
        super().__init__()
        self.d_model, self.n_head, self.max_tokens = d_model, n_head, max_tokens
        self.wpe = nn.Embedding(max_tokens, d_model) if position_embedding else None
        self.drop = nn.Dropout(dropout)  # on the input tokens, once (GPT-2's embedding dropout)
        self.h = nn.ModuleList([GPTBlock(d_model, n_head, dropout, activation) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d_model)
        if init == "gpt2":
            self.apply(gpt2_init)
        elif init != "torch":
            raise ValueError(f"init must be gpt2 or torch, got {init!r}")

    def _embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.drop(x if self.wpe is None else x + self.wpe(pos))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D], causal; T <= max_tokens when a position embedding is used."""
        out, _ = self._forward_kv(x)
        return out

    def _forward_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        if self.wpe is not None and x.shape[1] > self.max_tokens:
            raise ValueError(f"{x.shape[1]} tokens exceed the position embedding's {self.max_tokens} (context_len)")
        h = self._embed(x, torch.arange(x.shape[1], device=x.device))
        kvs = []
        for block in self.h:
            h, k, v = block(h)
            kvs.append((k, v))
        return self.ln_f(h), kvs

    def init_state(self, batch_size: int, device: torch.device | None = None, unit: int = 1,
                   slides: bool = True, hop: int = 1) -> KVCache:
        """Empty cache; `unit` = tokens per environment step (the window slides by whole steps, at least `hop` of
        them at a time). `slides=False`: the caller never lets a row overflow (it places tokens itself,
        `step(pos=...)`), so no inputs are kept."""
        device = device or self.ln_f.weight.device
        hd = self.d_model // self.n_head
        shape = (batch_size, self.max_tokens, self.n_head, hd)
        return KVCache(
            k=[torch.zeros(shape, device=device) for _ in self.h],
            v=[torch.zeros(shape, device=device) for _ in self.h],
            inputs=torch.zeros(batch_size, self.max_tokens, self.d_model, device=device) if slides else None,
            length=torch.zeros(batch_size, dtype=torch.long, device=device),
            unit=unit,
            hop=hop,
        )

    def reset_rows(self, cache: KVCache, rows: torch.Tensor) -> None:
        """Forget the context of rows [B] bool (a new episode for DT, a new block for DM-H's local GPT)."""
        cache.length = cache.length.masked_fill(rows, 0)

    def step(self, x: torch.Tensor, cache: KVCache, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Append n new tokens x [B, n, D] to every row's context -> outputs [B, n, D].

        Rows whose window would overflow first drop their oldest whole steps (at least `cache.hop` of them) and
        re-encode what is left, so each row always attends to at most `max_tokens` tokens, exactly as a training
        window starting at the first kept step would.
        `pos [B, n]` instead places the tokens at those cache slots (each attends to every slot up to its own); the
        caller then keeps `cache.length` itself.
        """
        if pos is None:
            n = x.shape[1]
            self._slide_full_rows(cache, n)
            pos = cache.length[:, None] + torch.arange(n, device=x.device)  # [B, n]
            cache.length = cache.length + n
        if cache.inputs is not None:
            cache.inputs[torch.arange(x.shape[0], device=x.device)[:, None], pos] = x
        keys = torch.arange(self.max_tokens, device=x.device)
        mask = (keys[None, None, :] <= pos[:, :, None])[:, None]  # [B, 1, n, max_tokens]: later slots are stale
        h = self._embed(x, pos)
        for i, block in enumerate(self.h):
            h, _, _ = block(h, cache, i, pos, mask)
        return self.ln_f(h)

    def _slide_full_rows(self, cache: KVCache, n: int) -> None:
        over = cache.length + n - self.max_tokens  # [B] tokens too many
        if not bool((over > 0).any()):
            return
        for length in cache.length[over > 0].unique().tolist():
            rows = (cache.length == length).nonzero().squeeze(1)  # rows with the same fill re-encode together
            steps = max(-(-(length + n - self.max_tokens) // cache.unit), cache.hop)  # whole steps, at least hop
            drop = min(steps * cache.unit, length)
            keep = cache.inputs[rows, drop:length]  # [R, length - drop, D]
            if keep.shape[1] == 0:  # the hop dropped everything held
                cache.length[rows] = 0
                continue
            _, kvs = self._forward_kv(keep)
            kept = keep.shape[1]
            for i, (k, v) in enumerate(kvs):
                cache.k[i][rows, :kept] = k
                cache.v[i][rows, :kept] = v
            cache.inputs[rows, :kept] = keep
            cache.length[rows] = kept
