"""Details matched to the authors' code: dropout once on a GPT's input tokens, GPT-2's initialisation, the code's
sub-goal rule on rewards that are never positive, and exactly tied reward sums compared exactly."""

import pytest
import torch
from models_testkit import make_batch, tiny_config
from torch import nn

from dmh.models import build_model
from dmh.models.block_layout import valuable_subgoal_index
from dmh.models.gpt import GPT

GPT_MODELS = {"dt": "backbone", "ad-transformer": "backbone", "dmh": "gpt"}  # algo -> its GPT's attribute


@pytest.mark.parametrize("algo", sorted(GPT_MODELS))
def test_a_gpt_models_input_tokens_are_dropped_once_by_the_gpt_itself(algo):
    model = build_model(algo, tiny_config(algo, dropout=0.5)).train()
    gpt = getattr(model, GPT_MODELS[algo])
    calls = {name: 0 for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout):
            module.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls[name] + 1))
    model.loss(make_batch([[6, 6], [9, 3]]))
    prefix = GPT_MODELS[algo] + "."
    outside = {name: n for name, n in calls.items() if not name.startswith(prefix) and n}
    assert outside == {}  # no dropout on the tokens before they reach the GPT
    assert calls[prefix + "drop"] >= 1 and isinstance(gpt.drop, nn.Dropout)  # the GPT's own, on its input


@pytest.mark.parametrize("algo", ["dm", "ad-mamba"])
def test_a_mamba_models_input_tokens_keep_their_dropout(algo):
    model = build_model(algo, tiny_config(algo, dropout=0.5)).train()
    assert isinstance(model.drop, nn.Dropout)  # a Mamba backbone drops nothing itself


def test_the_gpt_starts_from_gpt2s_initialisation_unless_asked_for_torchs():
    torch.manual_seed(0)
    gpt = GPT(d_model=128, n_layer=2, n_head=1, max_tokens=64, position_embedding=True)
    weights = torch.cat([m.weight.flatten() for m in gpt.modules() if isinstance(m, nn.Linear | nn.Embedding)])
    assert float(weights.std()) == pytest.approx(0.02, rel=0.02)
    assert all(float(m.bias.abs().max()) == 0.0 for m in gpt.modules() if isinstance(m, nn.Linear))
    torch_default = GPT(d_model=128, n_layer=2, n_head=1, max_tokens=64, init="torch")
    first = torch_default.h[0].attn.c_attn
    assert float(first.weight.std()) > 0.04 and float(first.bias.abs().max()) > 0  # kaiming-uniform, 1/sqrt(128)


def test_the_gpt_init_reaches_every_model_through_its_config():
    for algo, attribute in GPT_MODELS.items():
        torch.manual_seed(0)
        gpt = getattr(build_model(algo, tiny_config(algo, d_model=64)), attribute)
        assert float(gpt.h[0].mlp[0].bias.abs().max()) == 0.0
        torch.manual_seed(0)
        gpt = getattr(build_model(algo, tiny_config(algo, d_model=64, gpt_init="torch")), attribute)
        assert float(gpt.h[0].mlp[0].bias.abs().max()) > 0.0


def subgoals(rewards: list[float], rule: str) -> list[int]:
    r = torch.tensor([rewards])
    length = r.shape[1]
    start = torch.zeros(1, length, dtype=torch.bool)
    start[0, 0] = True
    mask = torch.ones(1, length, dtype=torch.bool)
    from_steps = torch.arange(length)[None]
    return valuable_subgoal_index(r, start, mask, from_steps, rule, block_last=from_steps,
                                  block_valid=mask).tolist()[0]


def test_the_codes_rule_takes_the_next_state_where_no_mean_reward_ahead_is_positive():
    rewards = [-1.0, -3.0, -0.5, -2.0, -4.0]
    # the paper's formula: the least negative mean reward on the way (from s_0: -1 at s_1; from s_1: -1.75 at s_3)
    assert subgoals(rewards, "paper") == [1, 3, 3, 4, 4]
    # the authors' desired_states: its running maximum starts at 0, so with nothing positive ahead, s_{i+1}
    assert subgoals(rewards, "code") == [1, 2, 3, 4, 4]
    # where a positive mean reward lies ahead both rules agree
    assert subgoals([0.0, 0.0, 1.0, 0.0], "code") == subgoals([0.0, 0.0, 1.0, 0.0], "paper") == [3, 3, 3, 3]


def test_exactly_tied_reward_sums_compare_equal_so_the_nearest_state_wins():
    # a constant reward: every later state has the same mean reward on the way, so the nearest (s_1) is the goal; in
    # float32 the running sums of 3.79 round so that the mean up to s_5 came out larger and s_5 won
    assert subgoals([3.79] * 6, "paper")[0] == 1
