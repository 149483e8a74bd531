"""Training contexts (dmh/training/contexts.py): what the data layer builds is what the online loop feeds the policy
(steps, flags and the return-to-go), DM-H's contexts are sorted by return, hindsight relabelling starts every
episode's return-to-go at the context's best return, and the authors' length-weighted sorted batches."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from test_evaluation import play_online

from dmh.data.format import EpisodeDataset
from dmh.data.histories import generate_histories, history_config
from dmh.models import build_model
from dmh.tasks import resolve_task
from dmh.training.contexts import ContextSampler, ContextSpec

SORTED = ContextSpec(kind="sorted", n_context=4, stride=1, sampling="random", episode_len=20, rtg_scale=1.0)


@pytest.fixture(scope="module")
def histories() -> EpisodeDataset:
    """Darkroom Hard learning histories: episodes that end at the goal (terminal) and at the time limit."""
    return generate_histories(history_config("darkroom-hard", steps=20_000, num_tasks=4), show_progress=False)


def sampler(data: EpisodeDataset, spec: ContextSpec = SORTED, seed: int = 0) -> ContextSampler:
    return ContextSampler(data, spec, np.zeros(data.obs_dim), np.ones(data.obs_dim), seed)


def tiny_dmh(rtg_token: bool = True, **fields):
    cfg = dict(obs_dim=2, act_dim=5, discrete=True, max_timestep=64, d_model=16, n_layer=1, n_head=1,
               n_mamba_layer=1, d_state=4, dropout=0.0, mamba_backend="torch", c=5, rtg_token=rtg_token,
               z_train="mean", z_eval="mean", local_checkpoint_chunk=0, **fields)
    torch.manual_seed(0)
    return build_model("dmh", cfg).eval()


def recorded_rollout(monkeypatch, model, episodes: int) -> tuple[dict[str, torch.Tensor], EpisodeDataset]:
    """Row 0 of an online evaluation on Darkroom Hard (what the loop fed its policy, per step), and the same steps
    written as a dataset."""
    played = play_online(monkeypatch, model, resolve_task("darkroom-hard"), np.zeros(2), np.ones(2), n_tasks=2,
                         episodes=episodes, seed=3)
    row = {k: v[0] for k, v in played.stacked().items()}
    steps = int(np.flatnonzero(row["d"].numpy())[episodes - 1]) + 1  # row 0's episodes (other rows may play on)
    row = {k: v[:steps] for k, v in row.items()}
    done, terminated = row["d"].numpy().astype(bool), row["term"].numpy().astype(bool)
    data = EpisodeDataset(
        observations=row["obs"].numpy().astype(np.float32), actions=row["a"].numpy().astype(np.int64),
        rewards=row["r"].numpy().astype(np.float32), terminals=terminated, timeouts=done & ~terminated,
        episode_task=np.zeros(episodes, dtype=np.int64), episode_history=np.zeros(episodes, dtype=np.int64),
        tasks=np.zeros((1, 2)), metadata={"discrete": True})
    return row, data


def test_a_context_of_the_steps_the_online_loop_played_holds_exactly_what_it_fed_the_policy(monkeypatch):
    row, data = recorded_rollout(monkeypatch, tiny_dmh(), episodes=30)
    n = data.num_steps
    batch = sampler(data).collate([np.arange(n)])
    assert torch.equal(batch["obs"][0], row["obs"].float())
    assert batch["timesteps"][0].tolist() == row["t"].tolist()
    assert batch["actions"][0].tolist() == row["a"].tolist()
    assert batch["rewards"][0].tolist() == pytest.approx(row["r"].tolist())
    assert batch["done"][0].tolist() == row["d"].tolist()
    assert batch["terminal"][0].tolist() == row["term"].tolist()
    assert batch["episode_start"][0].tolist() == (row["t"] == 0).tolist()
    # Darkroom Hard ends at the goal (a true termination) or at the time limit: both happened
    assert batch["terminal"].any() and (batch["done"] & ~batch["terminal"]).any()


@pytest.mark.parametrize("block_tokens", ["separate", "fused"])
@pytest.mark.parametrize("done_token", ["episode_end", "terminal"])
def test_relabelled_return_to_go_is_what_the_policy_computes_online_from_the_best_return(histories, block_tokens,
                                                                                         done_token):
    spec = dataclasses.replace(SORTED, rtg_relabel=True)
    batch = sampler(histories, spec).sample(3)
    model = tiny_dmh(block_tokens=block_tokens, done_token=done_token)
    forward = model(batch)
    for b in range(3):
        length = int(batch["mask"][b].sum())
        row = {k: v[b: b + 1, :length] for k, v in batch.items()}
        episode_returns = torch.zeros(length)
        starts = [*row["episode_start"][0].nonzero()[:, 0].tolist(), length]
        for s, e in itertools.pairwise(starts):
            episode_returns[s:e] = row["rewards"][0, s:e].sum()
        best = float(episode_returns.max())
        assert float(episode_returns[-1]) == best  # sorted: the last episode is the best
        policy = model.policy(1, target_return=best)
        policy.reset()
        for t in range(length):
            assert float(policy.rtg[0]) == pytest.approx(float(row["rtg"][0, t]))  # the same return-to-go
            out = policy.act(row["obs"][:, t], row["timesteps"][:, t])
            torch.testing.assert_close(out[0], forward[b, t], rtol=1e-4, atol=1e-5)
            policy.observe(row["actions"][:, t], row["rewards"][:, t], row["done"][:, t], row["terminal"][:, t])


def test_without_relabelling_each_episode_starts_at_its_own_return(histories):
    own = sampler(histories, dataclasses.replace(SORTED, rtg_relabel=False)).sample(8)
    relabelled = sampler(histories, dataclasses.replace(SORTED, rtg_relabel=True)).sample(8)  # same seed: same steps
    assert torch.equal(own["obs"], relabelled["obs"])
    start = own["episode_start"]
    returns = [own["rewards"][b][own["mask"][b]].split(torch.diff(torch.cat(
        [start[b].nonzero()[:, 0], own["mask"][b].sum().reshape(1)])).tolist()) for b in range(8)]
    own_starts = torch.cat([torch.stack([r.sum() for r in row]) for row in returns])
    best_starts = torch.cat([torch.stack([r.sum() for r in row]).max().expand(len(row)) for row in returns])
    assert torch.allclose(own["rtg"][start], own_starts)
    assert torch.allclose(relabelled["rtg"][start], best_starts)
    assert not torch.allclose(own_starts, best_starts)  # the data has contexts whose episodes differ in return
    # within an episode both fall by the rewards collected: they differ by one constant per episode
    episode = torch.cumsum(start.long(), dim=1)
    shift = relabelled["rtg"] - own["rtg"]
    for b in range(8):
        for e in episode[b][own["mask"][b]].unique():
            part = shift[b][(episode[b] == e) & own["mask"][b]]
            assert torch.allclose(part, part[0].expand_as(part))


def test_sorted_contexts_hold_episodes_of_one_history_in_ascending_return(histories):
    s = sampler(histories)
    for steps in s.sample_indices(16):
        episodes = np.unique(s.episode_of_step[steps])
        order = s.episode_of_step[steps][np.r_[True, np.diff(s.episode_of_step[steps]) != 0]]
        assert len(np.unique(histories.episode_history[episodes])) == 1
        assert (np.diff(s.returns[order]) >= 0).all()


def test_length_weighted_batches_are_sorted_across_the_batch_and_favour_long_episodes(histories):
    s = sampler(histories, dataclasses.replace(SORTED, sampling="length"))
    contexts = s.sample_indices(64)
    assert all(len(np.unique(s.episode_of_step[c])) <= 4 for c in contexts)
    firsts = [s.episode_of_step[c][np.r_[True, np.diff(s.episode_of_step[c]) != 0]] for c in contexts]
    returns = np.concatenate([s.returns[f] for f in firsts])
    assert (np.diff(returns) >= 0).all()  # the whole batch sorted, then cut into consecutive contexts
    drawn = np.concatenate(firsts)
    long, short = s.lengths >= 20, s.lengths <= 5
    assert long.any() and short.any()
    per_long = np.isin(drawn, np.flatnonzero(long)).sum() / long.sum()
    per_short = np.isin(drawn, np.flatnonzero(short)).sum() / short.sum()
    assert per_long > 2 * per_short  # an episode is drawn in proportion to its length


def test_the_terminal_flag_marks_only_episodes_the_environment_ended(histories):
    batch = sampler(histories).sample(16)
    assert (batch["terminal"] <= batch["done"]).all()
    ended_early = batch["done"] & (batch["timesteps"] < 19)
    assert torch.equal(batch["terminal"] & ended_early, ended_early)  # before H only the goal ends an episode
    assert (batch["done"] & ~batch["terminal"]).any()  # and some episodes run out of time


WINDOW = ContextSpec(kind="history", n_context=4, stride=1, sampling="window", episode_len=20, rtg_scale=1.0,
                     window=50)


def test_history_windows_start_at_every_step_of_an_episode_are_full_and_carry_the_step_before_them(histories):
    """Darkroom Hard's learners end many episodes early at the goal, so n + 1 episodes often hold fewer steps than a
    window: online the window is full once that many steps are played, and so is every training window."""
    s = sampler(histories, WINDOW)
    contexts, leads = s.sample_contexts(400)
    assert all(len(c) == 50 for c in contexts)
    assert max(len(np.unique(s.episode_of_step[c])) for c in contexts) > 5  # more than n + 1 episodes were needed
    first_steps = {int(s.timestep[c[0]]) for c in contexts}
    assert first_steps == set(range(20))  # every phase of a 20-step episode, as the online window meets them
    history_start = s.starts[[h[0] for h in s.histories]]
    for steps, lead in zip(contexts, leads, strict=True):
        assert (np.diff(steps) > 0).all()  # play order
        assert lead == (-1 if steps[0] in history_start else steps[0] - 1)  # the step played just before (stride 1)
    batch = s.collate(contexts, leads)
    mid = torch.from_numpy(s.timestep[[c[0] for c in contexts]] > 0)
    assert not batch["episode_start"][mid, 0].any()  # a window that starts mid-episode starts no episode
    lead_actions = torch.from_numpy(s.actions[leads])
    assert torch.equal(batch["prev_actions"][mid, 0], lead_actions[mid])
    inside = batch["mask"][:, 1:]
    assert torch.equal(batch["prev_actions"][:, 1:][inside], batch["actions"][:, :-1][inside])


def test_strided_history_windows_hold_every_stride_th_episode_and_lead_with_the_one_before(histories):
    s = sampler(histories, dataclasses.replace(WINDOW, stride=3))
    contexts, leads = s.sample_contexts(300)
    assert all(len(c) == 50 for c in contexts)
    for steps, lead in zip(contexts, leads, strict=True):
        episodes = np.unique(s.episode_of_step[steps])
        assert (np.diff(episodes) == 3).all()  # histories' episode ids are consecutive in play order
        if s.timestep[steps[0]] > 0:
            assert lead == steps[0] - 1
        elif lead >= 0:  # at an episode start: the last step of the episode three before it
            assert s.episode_of_step[lead] == episodes[0] - 3 and s.last_step[lead]
        else:  # none: fewer than three episodes of its history before it
            history = s.histories[s.episode_of_history[episodes[0]]]
            assert np.searchsorted(history, episodes[0]) < 3


def test_ad_transformer_meets_online_exactly_the_windows_it_trains_on(monkeypatch):
    """Online, AD (Transformer)'s window fills from the task's start, then slides by one step: at every step its
    output is the forward over a training window ending there, started at the same step with the step before it as
    its lead (the data layer's ``any_offset`` windows), so no online window is outside what it trained on."""
    row, data = recorded_rollout(monkeypatch, tiny_dmh(), episodes=6)
    torch.manual_seed(0)
    window = 25
    model = build_model("ad-transformer", dict(obs_dim=2, act_dim=5, discrete=True, max_timestep=64, d_model=16,
                                               n_layer=1, n_head=1, dropout=0.0, context_len=window)).eval()
    s = sampler(data, dataclasses.replace(WINDOW, window=window))
    policy = model.policy(1)
    policy.reset()
    n = data.num_steps
    for t in range(n):
        out = policy.act(row["obs"][None, t], row["t"][None, t])
        first = max(0, t - window + 1)
        batch = s.collate([np.arange(first, t + 1)], [first - 1])
        with torch.no_grad():
            expected = model(batch)[0, -1]
        torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)
        policy.observe(row["a"][None, t], row["r"][None, t], row["d"][None, t], row["term"][None, t])
    assert n > 2 * window  # the window slid through several episodes' phases
