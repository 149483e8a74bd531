"""Causality: no output at step t may depend on anything that happens after t, for every model."""

from __future__ import annotations

import pytest
import torch
from models_testkit import ALGOS, SINGLE_EPISODE, make_batch, tiny_config

from dmh.models import build_model


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
@pytest.mark.parametrize(("algo", "overrides"), [(a, {}) for a in ALGOS]
                         + [(a, {"tokens": "separate"}) for a in ("ad-transformer", "ad-mamba")],
                         ids=[*ALGOS, "ad-transformer-separate", "ad-mamba-separate"])
def test_changing_the_future_never_changes_earlier_outputs(algo: str, overrides: dict, discrete: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(algo, discrete, **overrides)
    model = build_model(algo, cfg).eval()
    episodes = [[16], [16]] if algo in SINGLE_EPISODE else [[5, 7, 4], [6, 10]]
    batch = make_batch(episodes, cfg.obs_dim, cfg.act_dim, discrete)
    with torch.no_grad():
        reference = model(batch)
    for t in [0, 4, 5, 8, 13]:
        future = {k: v.clone() for k, v in batch.items()}
        future["obs"][:, t + 1 :] += 3.0
        future["rewards"][:, t + 1 :] += 1.0
        future["rtg"][:, t + 1 :] -= 2.0
        future["actions"][:, t + 1 :] = (future["actions"][:, t + 1 :] + 1) % cfg.act_dim if discrete else 0.5
        future["actions"][:, t] = (future["actions"][:, t] + 1) % cfg.act_dim if discrete else -0.5  # a_t itself
        future["rewards"][:, t] += 1.0  # r_t comes after a_t too
        future["done"][:, t + 1 :] = ~future["done"][:, t + 1 :]
        with torch.no_grad():
            changed = model(future)
        torch.testing.assert_close(changed[:, : t + 1], reference[:, : t + 1], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(changed[:, t + 1 :], reference[:, t + 1 :])  # the perturbation did reach the model
