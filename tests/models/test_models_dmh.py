"""DM-H specifics: the block layout, the valuable sub-goal rule, one Mamba advance per block online, a local context of
at most 4c tokens, the valuable-sub-goal branch switch, the training loss's two branches and sampled z, and the
authors' options (done token from terminations, no dropout on block tokens, per-network gradient clipping)."""

from __future__ import annotations

import pytest
import torch
from models_testkit import make_batch, policy_outputs, tiny_config

from dmh.models import block_layout, build_model, valuable_subgoal_index
from dmh.models.dmh import HIGH_LEVEL
from dmh.models.losses import action_loss, last_episode_mask, loss_mask
from dmh.training.train import clip_groups


def _flags(length: int, steps: list[int]) -> torch.Tensor:
    x = torch.zeros(1, length, dtype=torch.bool)
    x[0, steps] = True
    return x


def test_blocks_start_at_every_episode_start_and_the_last_block_of_an_episode_may_be_partial() -> None:
    episode_start, mask = _flags(14, [0, 5]), _flags(14, list(range(12)))  # episodes of 5 and 7 steps, 2 padding
    layout = block_layout(episode_start, mask, c=3)
    assert layout.start[0].tolist() == [0, 3, 5, 8, 11]
    assert layout.valid[0].sum(-1).tolist() == [3, 2, 3, 3, 1]
    assert layout.index[0, 1, :2].tolist() == [3, 4]
    assert layout.step_block[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, -1, -1]
    assert layout.step_pos[0, :12].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 0, 1, 2, 0]


def test_a_context_that_begins_mid_episode_starts_a_block_at_its_first_step() -> None:
    layout = block_layout(_flags(7, [4]), _flags(7, list(range(7))), c=2)
    assert layout.start[0].tolist() == [0, 2, 4, 6]


def test_valuable_subgoal_is_the_state_with_the_best_mean_reward_on_the_way() -> None:
    # one episode of 6 steps; rewards[u] is earned on the transition u -> u+1
    rewards = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0, 1.0]])
    episode_start, mask = _flags(6, [0]), _flags(6, list(range(6)))
    goals = valuable_subgoal_index(rewards, episode_start, mask, torch.tensor([[0, 3, 5]]))
    # from 0: V(j) = sum r[0..j-1] / j -> j=3 gives 3/3 = 1, the best; from 3: j=6 gives 1/3 (clipped to s_5);
    # from the last step only the exit transition remains (clipped to s_5)
    assert goals.tolist() == [[3, 5, 5]]


def test_valuable_subgoal_never_crosses_into_the_next_episode_and_ties_go_to_the_nearest_state() -> None:
    rewards = torch.tensor([[0.0, 0.0, 0.0, 5.0, 5.0, 5.0]])
    episode_start, mask = _flags(6, [0, 3]), _flags(6, list(range(6)))
    goals = valuable_subgoal_index(rewards, episode_start, mask, torch.tensor([[0, 1, 3]]))
    assert goals.tolist() == [[1, 2, 4]]


def test_mamba_advances_only_at_block_boundaries_once_per_block_per_row() -> None:
    cfg = tiny_config("dmh", c=3)
    model = build_model("dmh", cfg).eval()
    batch = make_batch([[5, 7], [8, 4]], cfg.obs_dim, cfg.act_dim)  # row blocks: 2+3 = 5 and 3+2 = 5
    calls = []
    original = model.mamba.step_token

    def counting_step(x, state, advance=None):
        calls.append(advance.clone())
        return original(x, state, advance)

    model.mamba.step_token = counting_step
    policy_outputs(model, batch)
    advanced = torch.stack(calls).long()  # [calls, B]
    tokens_per_block = 4  # RTG, s, r_hat, d
    assert advanced.sum(0).tolist() == [5 * tokens_per_block, 5 * tokens_per_block]
    assert len(calls) <= 2 * 2 * 10  # rows in step: at most 2 stepping calls on each side of 10 blocks in all


def test_local_transformer_context_never_exceeds_4c_tokens_and_restarts_every_block() -> None:
    c = 3
    cfg = tiny_config("dmh", c=c)
    model = build_model("dmh", cfg).eval()
    assert model.gpt.max_tokens == 4 * c
    batch = make_batch([[5, 7]], cfg.obs_dim, cfg.act_dim)
    policy = model.policy(1, target_return=5.0)
    lengths = []
    for t in range(12):
        policy.act(batch["obs"][:, t], batch["timesteps"][:, t])
        lengths.append(int(policy.cache.length[0]))
        policy.observe(batch["actions"][:, t], batch["rewards"][:, t], batch["done"][:, t])
    # (z, s) at step k of a block sits at tokens 4k, 4k+1: 2, 6, 10 within each block
    assert lengths == [2, 6, 10, 2, 6, 2, 6, 10, 2, 6, 10, 2]


def test_sampled_z_is_drawn_once_per_block_and_held_for_its_c_steps() -> None:
    cfg = tiny_config("dmh", c=3, z_eval="sample")
    model = build_model("dmh", cfg).eval()
    batch = make_batch([[9]], cfg.obs_dim, cfg.act_dim)
    policy = model.policy(1, target_return=5.0, generator=torch.Generator().manual_seed(0))
    zs = []
    for t in range(9):
        policy.act(batch["obs"][:, t], batch["timesteps"][:, t])
        zs.append(policy.z.clone())
        policy.observe(batch["actions"][:, t], batch["rewards"][:, t], batch["done"][:, t])
    for block in range(3):
        assert all(torch.equal(zs[3 * block], zs[3 * block + k]) for k in (1, 2))
    assert not torch.equal(zs[0], zs[3]) and not torch.equal(zs[3], zs[6])


def test_per_step_z_is_drawn_afresh_at_every_step_online_from_its_blocks_distribution() -> None:
    """`z_draw = "step"` (the authors' code): every act draws a new z, while the block's mean and variance stay."""
    cfg = tiny_config("dmh", c=3, z_eval="sample", z_draw="step")
    model = build_model("dmh", cfg).eval()
    batch = make_batch([[9]], cfg.obs_dim, cfg.act_dim)
    policy = model.policy(1, target_return=5.0, generator=torch.Generator().manual_seed(0))
    zs, means = [], []
    for t in range(9):
        policy.act(batch["obs"][:, t], batch["timesteps"][:, t])
        zs.append(policy.z.clone())
        means.append(policy.z_mean.clone())
        policy.observe(batch["actions"][:, t], batch["rewards"][:, t], batch["done"][:, t])
    assert all(not torch.equal(zs[t], zs[t + 1]) for t in range(8))
    for block in range(3):
        assert all(torch.equal(means[3 * block], means[3 * block + k]) for k in (1, 2))


def test_per_step_z_in_training_gives_each_step_of_a_block_its_own_sample_and_trains() -> None:
    torch.manual_seed(0)
    cfg = tiny_config("dmh", c=3, z_train="sample", z_draw="step")
    model = build_model("dmh", cfg).train()
    batch = make_batch([[6, 5], [11]], cfg.obs_dim, cfg.act_dim)
    seen = []
    local_actions = model.local_actions

    def record(batch, layout, *zs, blocks=None):
        seen.append(zs[0])
        return local_actions(batch, layout, *zs, blocks=blocks)

    model.local_actions = record
    loss, _ = model.loss(batch)
    loss.backward()
    z = seen[0]  # [B, NB, c, z_dim]: a draw per slot
    assert z.shape[2] == cfg.c and not torch.allclose(z[:, :, 0], z[:, :, 1])
    assert model.z_head.weight.grad is not None and model.z_head.weight.grad.abs().sum() > 0


def test_valuable_subgoals_off_removes_the_second_branch_and_its_loss() -> None:
    batch = make_batch([[5, 7]], 3, 4)
    for flag, branches in [(True, 2), (False, 1)]:
        model = build_model("dmh", tiny_config("dmh", valuable_subgoals=flag))
        calls: list[int] = []
        model.head.register_forward_hook(lambda *_, calls=calls: calls.append(1))  # once per local-sequence branch
        _, logs = model.loss(batch)
        assert hasattr(model, "subgoal_proj") is flag
        assert ("loss_goal" in logs) is flag
        assert len(calls) == branches
        if flag:
            assert abs(logs["loss"] - (logs["loss_z"] + 0.5 * logs["loss_goal"])) < 1e-5
        else:
            assert logs["loss"] == logs["loss_z"]


def test_subgoal_projection_is_frozen_but_saved() -> None:
    model = build_model("dmh", tiny_config("dmh"))
    before = model.subgoal_proj.weight.clone()
    model.loss(make_batch([[5, 7]], 3, 4))[0].backward()
    assert model.subgoal_proj.weight.grad is None and not model.subgoal_proj.weight.requires_grad
    assert "subgoal_proj.weight" in model.state_dict()
    assert torch.equal(model.subgoal_proj.weight, before)


def test_last_episode_loss_mask_selects_the_final_episode_of_each_context() -> None:
    batch = make_batch([[3, 2], [2, 1]], length=6)
    assert last_episode_mask(batch["episode_start"], batch["mask"]).long().tolist() == [
        [0, 0, 0, 1, 1, 0],
        [0, 0, 1, 0, 0, 0],
    ]


def test_checkpointing_the_local_sequences_changes_no_loss_or_gradient() -> None:
    batch = make_batch([[5, 7], [12]], 3, 4)
    results = []
    for chunk in (0, 2):
        torch.manual_seed(0)
        model = build_model("dmh", tiny_config("dmh", local_checkpoint_chunk=chunk))
        loss, _ = model.loss(batch)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-5)


def test_sliding_local_context_sees_the_episodes_last_c_steps_with_the_current_z() -> None:
    """The authors' evaluator (§8.2 item 11): identical to the per-block context within an episode's first block,
    different afterwards, where it re-reads the last c steps."""
    c = 3
    batch = make_batch([[5, 7], [8, 4]], 3, 4)
    block = build_model("dmh", tiny_config("dmh", c=c)).eval()
    sliding = build_model("dmh", tiny_config("dmh", c=c, local_context="sliding")).eval()
    sliding.load_state_dict(block.state_dict())
    out_block, out_sliding = policy_outputs(block, batch), policy_outputs(sliding, batch)
    first_block = batch["timesteps"] < c
    torch.testing.assert_close(out_sliding[first_block], out_block[first_block], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(out_sliding[~first_block], out_block[~first_block])
    # row 0, step 4 (second block, z drawn at step 3): the GPT reads steps 2, 3, 4 with that z, a_4/r_4 unseen
    policy = sliding.policy(1, target_return=5.0)
    for t in range(5):
        out = policy.act(batch["obs"][:1, t], batch["timesteps"][:1, t])
        if t < 4:
            policy.observe(batch["actions"][:1, t], batch["rewards"][:1, t], batch["done"][:1, t])
    steps = slice(2, 5)
    with torch.no_grad():
        x = sliding.local_tokens(policy.z[:, None].expand(1, 3, -1), batch["obs"][:1, steps],
                                 batch["actions"][:1, steps], batch["rewards"][:1, steps],
                                 batch["timesteps"][:1, steps]).flatten(1, 2)  # [1, 12, d]
        expected = sliding.head(sliding.gpt(x)[:, 9])
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def test_code_subgoal_rule_looks_up_the_previous_episode_and_falls_back_to_the_paper_rule() -> None:
    # c = 2; episode A (steps 0-5) collects 1 by step 1 and 3 by step 3; episode B (steps 6-11) collects 0 then 2
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0]])
    episode_start, mask = _flags(12, [0, 6]), _flags(12, list(range(12)))
    layout = block_layout(episode_start, mask, c=2)  # blocks start at 0, 2, 4 | 6, 8, 10
    args = (rewards, episode_start, mask, layout.start)
    paper = valuable_subgoal_index(*args)
    code = valuable_subgoal_index(*args, rule="code", block_last=layout.last, block_valid=layout.block_valid)
    # episode A has no previous episode: paper rule. B's block 6-7 has 0 < A's 1 (block 0-1) -> start of A's next
    # block, step 2; block 8-9 has 2 < A's 3 (block 2-3) -> step 4; block 10-11 has 2 < 3 (block 2-3) -> step 4
    assert code[0, :3].tolist() == paper[0, :3].tolist()
    assert code[0, 3:].tolist() == [2, 4, 4]


def test_dmh_trains_with_the_code_subgoal_rule() -> None:
    model = build_model("dmh", tiny_config("dmh", subgoal_rule="code"))
    loss, logs = model.loss(make_batch([[5, 7], [6, 6]], 3, 4))
    loss.backward()
    assert torch.isfinite(loss) and "loss_goal" in logs


def test_fused_block_tokens_feed_the_mamba_one_token_per_block() -> None:
    model = build_model("dmh", tiny_config("dmh", c=3, block_tokens="fused"))
    seen = []
    model.mamba.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    batch = make_batch([[6, 3]], 3, 4)  # blocks: 3 + 3 for the first episode, 3 for the second
    model(batch)
    assert seen == [3]


def test_train_blocks_supervises_only_the_sampled_blocks_and_matches_the_full_loss_when_all_are_drawn() -> None:
    torch.manual_seed(0)
    batch = make_batch([[6, 6], [9, 3]], 3, 4)  # 4 blocks per row at c = 3
    full = build_model("dmh", tiny_config("dmh", valuable_subgoals=False)).train()
    all_drawn = build_model("dmh", tiny_config("dmh", valuable_subgoals=False, train_blocks=4)).train()
    all_drawn.load_state_dict(full.state_dict())
    torch.testing.assert_close(all_drawn.loss(batch)[0], full.loss(batch)[0])
    one = build_model("dmh", tiny_config("dmh", valuable_subgoals=False, train_blocks=1)).train()
    one.load_state_dict(full.state_dict())
    decoded = []
    one.gpt.register_forward_hook(lambda mod, inp, out: decoded.append(inp[0].shape[0]))
    one.loss(batch)
    assert decoded == [2]  # one local sequence per context


def test_a_sampled_z_is_drawn_where_its_generator_lives_and_returned_where_the_model_is(monkeypatch) -> None:
    """A CPU generator cannot draw on CUDA ("Expected a 'cuda' device type for generator"): a policy given one for a
    model on a GPU draws on the CPU and moves the draw. CUDA's rule is enforced here on the CPU, with the meta device
    standing in for the GPU."""
    real_randn = torch.randn

    def randn(*args, generator=None, device=None, **kwargs):
        where = torch.device(device or "cpu")
        if generator is not None and generator.device.type != where.type:
            raise RuntimeError(f"Expected a '{where.type}' device type for generator but found "
                               f"'{generator.device.type}'")
        return real_randn(*args, generator=generator, device=device, **kwargs)

    monkeypatch.setattr(torch, "randn", randn)
    model = build_model("dmh", tiny_config("dmh", z_eval="sample"))
    zeros = torch.zeros(2, model.z_dim, device="meta")
    assert model.draw_z(zeros, zeros, "sample", torch.Generator().manual_seed(0)).device.type == "meta"
    zeros = torch.zeros(2, model.z_dim)  # log-variance 0: z is the generator's standard normal draw itself
    expected = real_randn(2, model.z_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.draw_z(zeros, zeros, "sample", torch.Generator().manual_seed(0)), expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_policy_on_cuda_samples_its_z_with_a_cpu_generator_as_on_the_cpu() -> None:
    cfg = tiny_config("dmh", c=3, z_eval="sample")
    model = build_model("dmh", cfg).eval()
    batch = make_batch([[9]], cfg.obs_dim, cfg.act_dim)
    zs = {}
    for device in ("cpu", "cuda"):
        policy = model.to(device).policy(1, target_return=5.0, generator=torch.Generator().manual_seed(0))
        zs[device] = []
        for t in range(9):
            policy.act(batch["obs"][:, t], batch["timesteps"][:, t])
            zs[device].append(policy.z.cpu())
            policy.observe(batch["actions"][:, t], batch["rewards"][:, t], batch["done"][:, t])
    for on_cpu, on_cuda in zip(zs["cpu"], zs["cuda"], strict=True):
        torch.testing.assert_close(on_cuda, on_cpu, atol=1e-5, rtol=1e-4)


def test_the_subgoal_branch_decodes_the_same_steps_with_f_of_the_valuable_subgoal_state() -> None:
    model = build_model("dmh", tiny_config("dmh")).train()
    batch = make_batch([[6, 6], [9, 3]], 3, 4)
    loss, logs = model.loss(batch)
    layout = block_layout(batch["episode_start"], batch["mask"], 3)
    goal = valuable_subgoal_index(batch["rewards"], batch["episode_start"], batch["mask"], layout.start, "paper",
                                  block_last=layout.last, block_valid=layout.block_valid)  # [B, NB] step of s_g
    z_goal = model.subgoal_proj(batch["obs"].gather(1, goal[..., None].expand(-1, -1, 3)))
    predicted = model.local_actions(batch, layout, z_goal)[0]
    expected = action_loss(predicted, batch["actions"], loss_mask(batch, "all"), True)
    assert logs["loss_goal"] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(logs["loss_z"] + 0.5 * float(expected.detach()), rel=1e-5)


def test_the_subgoal_branch_trains_the_local_gpt_but_sends_no_gradient_into_the_mamba_or_f() -> None:
    batch = make_batch([[6, 6], [9, 3]], 3, 4)
    grads = {}
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        model = build_model("dmh", tiny_config("dmh", subgoal_loss_weight=weight)).train()
        model.loss(batch)[0].backward()
        grads[weight] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    for name, grad in grads[0.5].items():
        if name.startswith(HIGH_LEVEL):  # the f(s_g) branch has no path into the Mamba side
            torch.testing.assert_close(grad, grads[0.0][name])
    local = [name for name in grads[0.5] if name.startswith("gpt.")]
    assert local and all(not torch.allclose(grads[0.5][name], grads[0.0][name]) for name in local)  # it trains them
    assert not any(name.startswith("subgoal_proj") for name in grads[0.5])  # f is frozen


def test_a_sampled_z_in_training_is_fresh_noise_each_update_and_trains_the_variance() -> None:
    batch = make_batch([[6, 6], [9, 3]], 3, 4)
    model = build_model("dmh", tiny_config("dmh", z_train="sample", valuable_subgoals=False)).train()
    losses = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        losses.append(float(model.loss(batch)[0]))
    assert losses[0] == losses[1] != losses[2]
    model.zero_grad()
    model.loss(batch)[0].backward()
    z_dim = model.z_dim
    assert model.z_head.weight.grad[z_dim:].abs().sum() > 0  # the log-variance half gets a gradient
    deterministic = build_model("dmh", tiny_config("dmh", z_train="mean", valuable_subgoals=False)).train()
    deterministic.loss(batch)[0].backward()
    assert deterministic.z_head.weight.grad[z_dim:].abs().sum() == 0  # with the mean, it does not


@pytest.mark.parametrize("block_tokens", ["separate", "fused"])
def test_a_terminal_done_token_reads_only_terminations_and_the_policy_reproduces_it(block_tokens: str) -> None:
    batch = make_batch([[4, 5, 3], [5, 7]], 3, 4)  # odd-length episodes end by termination, the others by time
    ends = tiny_config("dmh", block_tokens=block_tokens)
    terminal = tiny_config("dmh", block_tokens=block_tokens, done_token="terminal")
    a, b = build_model("dmh", ends).eval(), build_model("dmh", terminal).eval()
    b.load_state_dict(a.state_dict())
    forward = b(batch)
    torch.testing.assert_close(policy_outputs(b, batch), forward, rtol=1e-4, atol=1e-5)
    first_end = 4  # the first episode (length 4) ran out of time: the d token differs from its next block on
    torch.testing.assert_close(forward[:, :first_end], a(batch)[:, :first_end])
    assert not torch.allclose(forward[0, first_end:], a(batch)[0, first_end:])
    with pytest.raises(ValueError, match="terminated"):
        policy = b.policy(1)
        policy.reset()
        policy.act(batch["obs"][:1, 0], batch["timesteps"][:1, 0])
        policy.observe(batch["actions"][:1, 0], batch["rewards"][:1, 0], batch["done"][:1, 0])


@pytest.mark.parametrize("block_dropout", [False, True])
def test_dropout_reaches_the_block_tokens_only_when_asked(block_dropout: bool) -> None:
    model = build_model("dmh", tiny_config("dmh", dropout=0.5, block_dropout=block_dropout)).train()
    state, rtg, reward, done = torch.randn(2, 4, 3), torch.randn(2, 4), torch.randn(2, 4), torch.zeros(2, 4).bool()
    first, second = (model.block_tokens(state, rtg, reward, done) for _ in range(2))
    assert torch.equal(first, second) != block_dropout


def test_module_clipping_clips_the_mamba_side_and_the_local_side_each_to_the_bound() -> None:
    model = build_model("dmh", tiny_config("dmh")).train()
    high, low = clip_groups(model, "module")
    names = {id(p): n for n, p in model.named_parameters()}
    high_ids, low_ids = {id(p) for p in high}, {id(p) for p in low}
    assert high_ids | low_ids == set(names) and not high_ids & low_ids
    assert all(names[id(p)].startswith(HIGH_LEVEL) for p in high) and any(names[id(p)].startswith("gpt.") for p in low)
    assert len(clip_groups(model, "global")) == 1
    assert len(clip_groups(build_model("ad-mamba", tiny_config("ad-mamba")), "module")) == 1  # one network
    # scaled so both groups' norms lie far above the bound (with GPT-2's init the Mamba side's is ~1e-4 unscaled) and
    # far above clip_grad_norm_'s 1e-6 guard
    (model.loss(make_batch([[6, 6], [9, 3]], 3, 4))[0] * 1e4).backward()
    for group in clip_groups(model, "module"):
        torch.nn.utils.clip_grad_norm_(group, 1e-4)
    norms = [torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in g if p.grad is not None])) for g in
             (high, low)]
    assert [float(n) for n in norms] == pytest.approx([1e-4, 1e-4], rel=1e-3)  # each at the bound, not sharing it
