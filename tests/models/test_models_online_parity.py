"""The step-by-step online policy must reproduce the full-sequence forward pass exactly, for every model: the classic
forward-vs-step mismatch (different tokens, positions or context at test time than in training) is ruled out here."""

from __future__ import annotations

import pytest
import torch
from models_testkit import ALGOS, SINGLE_EPISODE, make_batch, policy_outputs, tiny_config

from dmh.models import build_model
from dmh.models.block_layout import block_layout

# Rows end episodes at different steps; DM-H blocks (c = 3) are cut by episode ends into partial blocks.
ACROSS_EPISODES = [[5, 7, 4, 6], [3, 9, 1, 8], [11, 10]]
ONE_EPISODE = [[14], [9], [16]]


def _episodes(algo: str) -> list[list[int]]:
    return ONE_EPISODE if algo in SINGLE_EPISODE else ACROSS_EPISODES


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
@pytest.mark.parametrize("algo", ALGOS)
def test_policy_steps_reproduce_forward_on_the_same_trajectory(algo: str, discrete: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(algo, discrete)
    model = build_model(algo, cfg).eval()
    batch = make_batch(_episodes(algo), cfg.obs_dim, cfg.act_dim, discrete)
    with torch.no_grad():
        full = model(batch)
    stepped = policy_outputs(model, batch)
    mask = batch["mask"]
    assert full.shape == stepped.shape == (*mask.shape, cfg.act_dim)
    torch.testing.assert_close(stepped[mask], full[mask], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
@pytest.mark.parametrize("algo", ["ad-transformer", "ad-mamba"])
def test_ad_with_separate_tokens_steps_reproduce_forward(algo: str, discrete: bool) -> None:
    """AD's (s, a, r) token layout: the state token online, then the step's action and reward tokens."""
    torch.manual_seed(6)
    cfg = tiny_config(algo, discrete, tokens="separate")
    model = build_model(algo, cfg).eval()
    batch = make_batch(ACROSS_EPISODES, cfg.obs_dim, cfg.act_dim, discrete)
    with torch.no_grad():
        full = model(batch)
    torch.testing.assert_close(policy_outputs(model, batch)[batch["mask"]], full[batch["mask"]], atol=2e-5, rtol=1e-4)


def test_dmh_policy_reproduces_forward_without_rtg_token_and_with_odd_block_size() -> None:
    torch.manual_seed(1)
    cfg = tiny_config("dmh", rtg_token=False, c=4)
    model = build_model("dmh", cfg).eval()
    batch = make_batch(ACROSS_EPISODES, cfg.obs_dim, cfg.act_dim)
    with torch.no_grad():
        full = model(batch)
    torch.testing.assert_close(policy_outputs(model, batch)[batch["mask"]], full[batch["mask"]], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("c", [1, 2, 5, 40])
def test_dmh_policy_reproduces_forward_for_any_block_size(c: int) -> None:
    torch.manual_seed(2)
    cfg = tiny_config("dmh", c=c)
    model = build_model("dmh", cfg).eval()
    batch = make_batch([[5, 7, 4], [13, 3]], cfg.obs_dim, cfg.act_dim)
    with torch.no_grad():
        full = model(batch)
    torch.testing.assert_close(policy_outputs(model, batch)[batch["mask"]], full[batch["mask"]], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("z_dim", [None, 8, 32])
def test_dmh_sampled_z_matches_forward_given_the_same_noise(z_dim: int | None) -> None:
    """With z sampled (the paper's default at test time), policy and forward agree when they draw the same noise:
    one draw per block, in block order; for z of the observation's size (None) or any other."""
    torch.manual_seed(3)
    cfg = tiny_config("dmh", z_eval="sample", z_dim=z_dim)
    model = build_model("dmh", cfg).eval()
    batch = make_batch([[7, 5]], cfg.obs_dim, cfg.act_dim)
    stepped = policy_outputs(model, batch, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    draws = iter([torch.randn(1, model.z_dim, generator=g) for _ in range(5)])  # blocks: 3+3+1, 3+2
    original = model.draw_z

    def draw_in_block_order(mean, logvar, mode, generator=None):
        eps = torch.cat([next(draws) for _ in range(mean.shape[1])])[None]  # [1, NB, z]
        return mean + torch.exp(0.5 * logvar) * eps

    model.draw_z = draw_in_block_order
    with torch.no_grad():
        full = model(batch)
    model.draw_z = original
    torch.testing.assert_close(stepped[batch["mask"]], full[batch["mask"]], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("z_dim", [None, 8])
def test_dmh_per_step_z_matches_forward_given_the_same_noise(z_dim: int | None) -> None:
    """`z_draw = "step"` (the authors' code): one draw per step from its block's distribution, in step order both in
    the forward (every slot of every block) and online (every act). Full blocks, so both draw the same number."""
    torch.manual_seed(3)
    cfg = tiny_config("dmh", z_eval="sample", z_draw="step", z_dim=z_dim)  # c = 3
    model = build_model("dmh", cfg).eval()
    batch = make_batch([[6, 3]], cfg.obs_dim, cfg.act_dim)
    stepped = policy_outputs(model, batch, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    noise = torch.stack([torch.randn(1, model.z_dim, generator=g)[0] for _ in range(9)]).view(1, 3, 3, -1)

    def draw_in_step_order(mean, logvar, mode, generator=None):
        return mean + torch.exp(0.5 * logvar) * noise

    model.draw_z = draw_in_step_order
    with torch.no_grad():
        full = model(batch)
    del model.draw_z  # back to the class's own draw
    torch.testing.assert_close(stepped[batch["mask"]], full[batch["mask"]], atol=2e-5, rtol=1e-4)
    with torch.no_grad():  # and the steps of one block really get different z
        mean, logvar = model.subgoals(batch, block_layout(batch["episode_start"], batch["mask"], cfg.c))
    z = model.draw_block_z(mean, logvar, "sample")
    assert z.shape == (1, 3, 3, model.z_dim) and not torch.allclose(z[:, :, 0], z[:, :, 1])


@pytest.mark.parametrize("hop", [1, 3])
def test_transformer_window_slides_by_whole_steps_like_a_fresh_training_window(hop: int) -> None:
    """Past `context_len` steps the AD transformer attends to exactly the steps since its window's start, as the
    forward pass over that window would (its first token still carries the true previous action and reward). With
    `window_hop` h a full window drops h steps at once: the window starts at h * ((t - context_len) // h + 1)."""
    torch.manual_seed(4)
    cfg = tiny_config("ad-transformer", context_len=6, window_hop=hop)
    model = build_model("ad-transformer", cfg).eval()
    batch = make_batch([[4, 5, 4]], cfg.obs_dim, cfg.act_dim)
    stepped = policy_outputs(model, batch)
    for t in range(6, 13):
        start = hop * ((t - 6) // hop + 1)
        x = model.embed(batch["obs"][:, start : t + 1], _prev(batch["actions"], start, t + 1, -1),
                        _prev(batch["rewards"], start, t + 1, 0.0), batch["episode_start"][:, start : t + 1],
                        batch["timesteps"][:, start : t + 1])
        with torch.no_grad():
            expected = model.head(model.backbone(x))[:, -1]
        torch.testing.assert_close(stepped[:, t], expected, atol=2e-5, rtol=1e-4)


def test_separate_token_window_slides_by_whole_steps_like_a_fresh_training_window() -> None:
    """With three tokens per step the window still holds the last `context_len` whole steps."""
    torch.manual_seed(4)
    cfg = tiny_config("ad-transformer", context_len=6, tokens="separate")
    model = build_model("ad-transformer", cfg).eval()
    batch = make_batch([[4, 5, 4]], cfg.obs_dim, cfg.act_dim)
    stepped = policy_outputs(model, batch)
    for t in [6, 9, 12]:  # windows [t-5, t]; the last step's (a, r) tokens come after the read-out, unseen
        with torch.no_grad():
            expected = model({k: v[:, t - 5 : t + 1] for k, v in batch.items()})[:, -1]
        torch.testing.assert_close(stepped[:, t], expected, atol=2e-5, rtol=1e-4)


def _prev(x: torch.Tensor, start: int, stop: int, fill: float) -> torch.Tensor:
    """x[t-1] for t in [start, stop), from the full trajectory (the window knows what happened before it)."""
    if start == 0:
        return torch.cat([torch.full_like(x[:, :1], fill), x[:, : stop - 1]], dim=1)
    return x[:, start - 1 : stop - 1]


def test_dt_window_resets_at_episode_end_and_matches_per_episode_forward() -> None:
    """DT's context is one episode: a row that finishes an episode starts the next one from an empty context."""
    torch.manual_seed(5)
    cfg = tiny_config("dt")
    model = build_model("dt", cfg).eval()
    batch = make_batch([[6, 8], [8, 6]], cfg.obs_dim, cfg.act_dim)
    stepped = policy_outputs(model, batch)
    for b, first in [(0, 6), (1, 8)]:
        for sl in [slice(0, first), slice(first, 14)]:
            episode = {k: v[b : b + 1, sl] for k, v in batch.items()}
            with torch.no_grad():
                torch.testing.assert_close(stepped[b : b + 1, sl], model(episode), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("algo", ALGOS)
def test_policy_accepts_environment_outputs_as_numpy_arrays(algo: str) -> None:
    """Grid World observations are int64 and rewards float64 numpy arrays; the policy converts them itself."""
    import numpy as np

    model = build_model(algo, tiny_config(algo))
    policy = model.policy(2)
    policy.reset()
    for t in range(4):
        out = policy.act(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64), np.array([t, t]))
        assert out.shape == (2, 4) and torch.isfinite(out).all()
        policy.observe(np.array([1, 3]), np.array([0.0, 1.0]), np.array([t == 1, False]))


def _state_numel(x: object) -> int:
    """Elements in every tensor a policy holds (through lists, dicts and dataclasses)."""
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, list | tuple):
        return sum(_state_numel(v) for v in x)
    if isinstance(x, dict):
        return sum(_state_numel(v) for v in x.values())
    if hasattr(x, "__dataclass_fields__"):
        return sum(_state_numel(getattr(x, f)) for f in x.__dataclass_fields__)
    return 0


@pytest.mark.parametrize("algo", ALGOS)
def test_policy_context_has_a_fixed_size_however_long_it_grows(algo: str) -> None:
    """Recurrent state (Mamba) or a preallocated, bounded KV cache (transformers): nothing grows with the context,
    which is what keeps the cost per step constant across many test episodes."""
    cfg = tiny_config(algo)
    policy = build_model(algo, cfg).policy(2)
    batch = make_batch([[6] * 10, [5] * 12], cfg.obs_dim, cfg.act_dim)
    sizes = []
    for t in range(60):
        policy.act(batch["obs"][:, t], batch["timesteps"][:, t])
        policy.observe(batch["actions"][:, t], batch["rewards"][:, t], batch["done"][:, t])
        if t in (5, 59):
            sizes.append(sum(_state_numel(v) for k, v in vars(policy).items() if k != "model"))
    assert sizes[0] == sizes[1] > 0


@pytest.mark.parametrize("rtg_token", [True, False])
@pytest.mark.parametrize("c", [1, 3, 5])
def test_dmh_policy_reproduces_forward_with_fused_block_tokens(c: int, rtg_token: bool) -> None:
    torch.manual_seed(4)
    cfg = tiny_config("dmh", c=c, rtg_token=rtg_token, block_tokens="fused")
    model = build_model("dmh", cfg).eval()
    batch = make_batch(ACROSS_EPISODES, cfg.obs_dim, cfg.act_dim)
    with torch.no_grad():
        full = model(batch)
    torch.testing.assert_close(policy_outputs(model, batch)[batch["mask"]], full[batch["mask"]], atol=2e-5, rtol=1e-4)
