"""Mamba block with two compute backends behind one module, plus the residual stack the models use.

One `Mamba` module holds exactly the parameters of `mamba_ssm.Mamba` (`in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj`; `bias=False`, `conv_bias=True`), so a checkpoint trained with the CUDA kernels on a cluster loads strictly on
a laptop and back. Only the *compute path* differs:

- `torch`: a chunked parallel selective scan written here (`selective_scan`), with a plain sequential loop as its
  reference twin (`selective_scan_reference`) used by the tests. Memory is O(B * chunk * d_inner * d_state) for the
  scan itself (each chunk is activation-checkpointed during training) plus O(B * L * d_inner) for the activations.
- `cuda`: `mamba_ssm`'s fused selective-scan kernel on the same parameters, imported lazily.

Both backends share one recurrent `step` (pure PyTorch, any device; conv state `[B, d_inner, d_conv]` and SSM state
`[B, d_inner, d_state]`, the same layout as `mamba_ssm`'s inference cache), which gives O(1) cost per token online.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

Backend = Literal["auto", "cuda", "torch"]


@functools.cache  # asked on every forward of every block; a failed import is not cached by Python and would rerun
def mamba_ssm_available() -> bool:
    """True when `mamba_ssm`'s compiled selective-scan kernel and its Python wrapper both import (never on CPU-only
    machines). The kernel module `selective_scan_cuda` is asked for by name: the wrapper alone is not enough, since
    mamba-ssm's main branch made its import optional, and a kernel built against another torch fails right here
    (`undefined symbol`) rather than at the first forward."""
    try:
        import selective_scan_cuda  # noqa: F401
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA extension raising something else at import time
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------------
# Selective scan: h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t ;  y_t = <C_t, h_t> + D * u_t  (per channel)
# ----------------------------------------------------------------------------------------------------------------------


def selective_scan_reference(
    u: torch.Tensor,  # [B, L, d_inner] input after conv + SiLU
    delta: torch.Tensor,  # [B, L, d_inner] step sizes, already softplus(dt + bias)
    A: torch.Tensor,  # [d_inner, d_state] (negative)
    B: torch.Tensor,  # [B, L, d_state]
    C: torch.Tensor,  # [B, L, d_state]
    D: torch.Tensor,  # [d_inner]
    h0: torch.Tensor | None = None,  # [B, d_inner, d_state] initial SSM state
) -> tuple[torch.Tensor, torch.Tensor]:
    """The obviously-correct twin of `selective_scan`: one token at a time. Returns (y [B,L,d_inner], h_L)."""
    batch, length, d_inner = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, t, :, None] * A)  # [B, d_inner, d_state]
        dBu = delta[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]  # [B, d_inner, d_state]
        h = dA * h + dBu
        ys.append((h * C[:, t, None, :]).sum(-1))  # [B, d_inner]
    y = torch.stack(ys, dim=1) + u * D  # [B, L, d_inner]
    return y, h


def _chunk_states(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk, time-major: u, delta [T, B, d_inner], B [T, B, d_state], h [B, d_inner, d_state] the state before
    it -> (decays a, states H), both [T, B, d_inner, d_state], H[t] = a[t] * H[t-1] + delta[t] * B[t] * u[t].

    The decays are computed vectorised over the chunk; the recurrence is one in-place multiply-add per token on
    [B, d_inner, d_state] (no autograd graph, no per-token allocation)."""
    a = torch.mul(delta.unsqueeze(-1), A).exp_()  # [T, B, d_inner, d_state]
    states = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # the inputs delta * B * u; becomes H in place
    states[0].addcmul_(a[0], h)
    for t in range(1, states.shape[0]):
        states[t].addcmul_(a[t], states[t - 1])
    return a, states


def _read_out(states: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """y[t, b, i] = <H[t, b, i, :], C[t, b, :]>: [T, B, d_inner, d_state] x [T, B, d_state] -> [T, B, d_inner]."""
    return (states.flatten(0, 1) @ C.flatten(0, 1).unsqueeze(-1)).view(states.shape[:3])


class _SelectiveScan(torch.autograd.Function):
    """The chunked scan with a hand-written backward. Forward keeps only the state at each chunk start; backward
    walks the chunks in reverse, recomputes each chunk's decays and states from its start, runs the adjoint
    recurrence dH[t] = dy[t] C[t] + a[t+1] dH[t+1], and reads every gradient off dH with vectorised products: live
    memory O(B * chunk * d_inner * d_state). With `keep_states` the forward keeps every chunk's decays and states
    instead (memory O(L * d_inner * d_state), no recomputation)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk_size: int, keep_states: bool):  # time-major [L, B, ...] inputs
        starts, ys, kept = [], [], []
        h = h0
        for s in range(0, u.shape[0], chunk_size):
            sl = slice(s, s + chunk_size)
            starts.append(h)
            a, states = _chunk_states(u[sl], delta[sl], A, B[sl], h)
            ys.append(_read_out(states, C[sl]))
            h = states[-1].clone()
            if keep_states:
                kept.append((a, states))
        ctx.chunk_size = chunk_size
        ctx.kept = kept
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
        return torch.cat(ys), h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, starts = ctx.saved_tensors
        size = ctx.chunk_size
        dy = dy.contiguous()  # it arrives time-major through a transpose: strided, which batched products copy
        du, ddelta, dB, dC = (torch.empty_like(x) for x in (u, delta, B, C))
        dA = torch.zeros_like(A)
        carry = torch.zeros_like(starts[0]) if dh_last is None else dh_last.clone()  # dL/dh at the chunk's end
        for k in reversed(range(starts.shape[0])):
            sl = slice(k * size, (k + 1) * size)
            u_k, delta_k, B_k, C_k, g = u[sl], delta[sl], B[sl], C[sl], dy[sl]
            a, states = ctx.kept[k] if ctx.kept else _chunk_states(u_k, delta_k, A, B_k, starts[k])
            dC[sl] = (g.flatten(0, 1).unsqueeze(1) @ states.flatten(0, 1)).view(C_k.shape)
            dH = g.unsqueeze(-1) * C_k.unsqueeze(2)  # [T, B, d_inner, d_state], the direct terms
            dH[-1] += carry
            for t in range(dH.shape[0] - 2, -1, -1):
                dH[t].addcmul_(a[t + 1], dH[t + 1])
            carry = a[0] * dH[0]
            # decays: H[t] depends on a[t] through a[t] * H[t-1], and a = exp(delta * A)
            x = dH * a  # times the previous state: dL/d(delta * A)
            x[1:] *= states[:-1]
            x[0] *= starts[k]
            ddelta_k = (x * A).sum(-1)
            dA += (x * delta_k.unsqueeze(-1)).sum((0, 1))  # (an einsum here permutes x into a copy: 4x slower)
            # inputs: H[t] depends on delta[t] * B[t] * u[t]
            s_b = (dH.flatten(0, 1) @ B_k.flatten(0, 1).unsqueeze(-1)).view(u_k.shape)  # sum_n dH * B
            du[sl] = s_b * delta_k
            ddelta[sl] = ddelta_k + s_b * u_k
            dB[sl] = ((delta_k * u_k).flatten(0, 1).unsqueeze(1) @ dH.flatten(0, 1)).view(B_k.shape)
        return du, ddelta, dA, dB, dC, carry, None, None


def selective_scan(
    u: torch.Tensor,  # [B, L, d_inner]
    delta: torch.Tensor,  # [B, L, d_inner]
    A: torch.Tensor,  # [d_inner, d_state]
    B: torch.Tensor,  # [B, L, d_state]
    C: torch.Tensor,  # [B, L, d_state]
    D: torch.Tensor,  # [d_inner]
    h0: torch.Tensor | None = None,  # [B, d_inner, d_state]
    chunk_size: int = 64,
    checkpoint_chunks: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked selective scan. Returns (y [B, L, d_inner], final state [B, d_inner, d_state]).

    The sequence is cut into chunks of `chunk_size` tokens; per chunk the decays and inputs are computed vectorised
    and the state is carried token by token with one fused multiply-add each. With `checkpoint_chunks` the backward
    recomputes each chunk's states from the state saved at its start, so only one chunk's [chunk, B, d_inner,
    d_state] intermediates are alive at a time: this is what keeps a 20,000-step DM-H context inside a few GiB on
    CPU. Without it the forward keeps every decay and state (memory O(L * d_inner * d_state), no recomputation).
    """
    batch, _, d_inner = u.shape
    h = u.new_zeros(batch, d_inner, A.shape[1]) if h0 is None else h0
    keep = not checkpoint_chunks and torch.is_grad_enabled()
    y, h = _SelectiveScan.apply(*(x.transpose(0, 1).contiguous() for x in (u, delta)), A,
                                *(x.transpose(0, 1).contiguous() for x in (B, C)), h, chunk_size, keep)
    return y.transpose(0, 1) + u * D, h


# ----------------------------------------------------------------------------------------------------------------------
# The Mamba block (mamba_ssm parameter layout)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class MambaState:
    """Recurrent inference state of one Mamba block, laid out like mamba_ssm's inference cache."""

    conv: torch.Tensor  # [B, d_inner, d_conv] last d_conv inputs of the depthwise conv (newest last)
    ssm: torch.Tensor  # [B, d_inner, d_state]


class Mamba(nn.Module):
    """Selective SSM block (Gu & Dao 2023) with `mamba_ssm.Mamba`'s exact parameter names, shapes and init."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,  # N: SSM state size per channel
        d_conv: int = 4,  # depthwise causal conv width
        expand: int = 2,  # d_inner = expand * d_model
        dt_rank: int | str = "auto",  # "auto" = ceil(d_model / 16), as mamba_ssm
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        backend: Backend = "auto",  # compute path, see module docstring
        scan_chunk: int = 64,  # tokens per parallel-scan chunk on the torch backend
        checkpoint_scan: bool = True,  # recompute scan chunks in backward to bound memory (torch backend)
    ) -> None:
        super().__init__()
        if backend not in ("auto", "cuda", "torch"):
            raise ValueError(f"mamba backend must be auto|cuda|torch, got {backend!r}")
        if backend == "cuda" and not mamba_ssm_available():
            raise ImportError(
                "mamba_backend='cuda' needs mamba-ssm with its CUDA kernels (pip install 'dmh[cuda]' on a GPU "
                "machine); use 'auto' or 'torch' elsewhere"
            )
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.scan_chunk = scan_chunk
        self.checkpoint_scan = checkpoint_scan
        self._logged_backend: str | None = None

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        # mamba_ssm's initialisation: dt spread log-uniformly in [dt_min, dt_max] via the bias of dt_proj, S4D-real A.
        dt_init_std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # [d_inner, d_state]
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def backend_on(self, device: torch.device) -> str:
        """The compute path for inputs on `device`: `auto` picks cuda only on a CUDA device with mamba-ssm."""
        if self.backend == "cuda" or (self.backend == "auto" and device.type == "cuda" and mamba_ssm_available()):
            return "cuda"
        return "torch"

    def resolved_backend(self, x: torch.Tensor) -> str:
        """The compute path for input `x` (:meth:`backend_on`); `cuda` with inputs elsewhere is an error."""
        if self.backend == "cuda" and not x.is_cuda:
            raise RuntimeError("mamba_backend='cuda' but the inputs are not on a CUDA device")
        chosen = self.backend_on(x.device)
        if chosen != self._logged_backend:
            log.info("Mamba block (requested backend %s) runs the %s selective scan", self.backend, chosen)
            self._logged_backend = chosen
        return chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full-sequence pass over x [B, L, d_model] -> [B, L, d_model] (training / prefill)."""
        length = x.shape[1]
        xz = self.in_proj(x)  # [B, L, 2 * d_inner]
        u, z = xz.chunk(2, dim=-1)  # [B, L, d_inner] each
        u = self.conv1d(u.transpose(1, 2))[..., :length]  # [B, d_inner, L] causal depthwise conv
        u = F.silu(u)
        x_dbl = self.x_proj(u.transpose(1, 2))  # [B, L, dt_rank + 2 * d_state]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())  # [d_inner, d_state]
        if self.resolved_backend(x) == "cuda":
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            delta = self.dt_proj.weight @ dt.transpose(1, 2)  # [B, d_inner, L]; bias + softplus fused in the kernel
            y = selective_scan_fn(
                u, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), self.D.float(),
                z=z.transpose(1, 2).contiguous(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )  # [B, d_inner, L], already gated by silu(z)
            return self.out_proj(y.transpose(1, 2))
        delta = F.softplus(self.dt_proj(dt))  # [B, L, d_inner]
        y, _ = selective_scan(
            u.transpose(1, 2), delta, A, B, C, self.D.float(), chunk_size=self.scan_chunk,
            checkpoint_chunks=self.checkpoint_scan,
        )  # [B, L, d_inner]
        return self.out_proj(y * F.silu(z))

    def init_state(self, batch_size: int, device: torch.device | None = None) -> MambaState:
        """Zero recurrent state: the state before any token."""
        device = device or self.A_log.device
        return MambaState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device),
        )

    def step(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token x [B, d_model] -> (y [B, d_model], new state); O(1) in the number of tokens seen."""
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, d_inner] each
        conv = torch.cat([state.conv[:, :, 1:], u.unsqueeze(-1)], dim=-1)  # [B, d_inner, d_conv]
        u = (conv * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias  # [B, d_inner]
        u = F.silu(u)
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # [B, d_inner]
        A = -torch.exp(self.A_log.float())  # [d_inner, d_state]
        ssm = torch.exp(delta.unsqueeze(-1) * A) * state.ssm + delta.unsqueeze(-1) * B.unsqueeze(1) * u.unsqueeze(-1)
        y = (ssm * C.unsqueeze(1)).sum(-1) + self.D * u  # [B, d_inner]
        return self.out_proj(y * F.silu(z)), MambaState(conv=conv, ssm=ssm)


class RMSNorm(nn.Module):
    """RMSNorm with a `weight` parameter, as mamba_ssm's (kept local: nn.RMSNorm needs torch >= 2.4)."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MambaLayer(nn.Module):
    """Pre-norm residual wrapper `x + mixer(norm(x))`, named like mamba_ssm's `Block` (`norm`, `mixer`)."""

    def __init__(self, d_model: int, **mamba_kwargs) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = Mamba(d_model, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))

    def step(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        y, state = self.mixer.step(self.norm(x), state)
        return x + y, state


class MambaBackbone(nn.Module):
    """A stack of residual Mamba layers and a final RMSNorm: the sequence model of DM, AD (Mamba) and DM-H.

    Shares the backbone interface of `blocks.GPT` (`forward`, `init_state`, `step`, `reset_rows`) so a model can swap
    one for the other.
    """

    def __init__(self, d_model: int, n_layer: int, **mamba_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList([MambaLayer(d_model, **mamba_kwargs) for _ in range(n_layer)])
        self.norm_f = RMSNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, d_model] -> [B, L, d_model], causal."""
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)

    def init_state(self, batch_size: int, device: torch.device | None = None, unit: int = 1) -> list[MambaState]:
        """Zero state of every layer; `unit` (tokens per environment step) only matters to a windowed GPT."""
        return [layer.mixer.init_state(batch_size, device) for layer in self.layers]

    def step_token(
        self, x: torch.Tensor, state: list[MambaState], advance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One token x [B, d_model] per row; updates `state` in place (the list) and returns y [B, d_model].

        `advance [B] bool`: rows that are False keep their state unchanged (their output is meaningless). DM-H needs
        this because rows cross block boundaries at different environment steps.
        """
        for i, layer in enumerate(self.layers):
            x, new = layer.step(x, state[i])
            if advance is not None:
                keep = ~advance
                new = MambaState(
                    conv=torch.where(keep[:, None, None], state[i].conv, new.conv),
                    ssm=torch.where(keep[:, None, None], state[i].ssm, new.ssm),
                )
            state[i] = new
        return self.norm_f(x)

    def step(self, x: torch.Tensor, state: list[MambaState]) -> torch.Tensor:
        """Append n tokens x [B, n, d_model] for every row -> outputs [B, n, d_model]."""
        return torch.stack([self.step_token(x[:, i], state) for i in range(x.shape[1])], dim=1)

    def reset_rows(self, state: list[MambaState], rows: torch.Tensor) -> None:
        """Forget the context of rows [B] bool (zero state), e.g. at an episode start for DM."""
        for s in state:
            s.conv = s.conv.masked_fill(rows[:, None, None], 0.0)
            s.ssm = s.ssm.masked_fill(rows[:, None, None], 0.0)


def scan_backend(model: nn.Module) -> str:
    """The selective-scan path `model`'s Mamba blocks take on the device its parameters are on: "cuda", "torch",
    or "none" for a model without Mamba blocks (what a run records; asked of the model, not re-derived)."""
    blocks = [m for m in model.modules() if isinstance(m, Mamba)]
    if not blocks:
        return "none"
    device = next(model.parameters()).device
    return ",".join(sorted({block.backend_on(device) for block in blocks}))
