"""Every model can learn at all: its training loss goes to near zero on a tiny fixed dataset."""

from __future__ import annotations

import pytest
import torch
from models_testkit import ALGOS, SINGLE_EPISODE, make_batch, tiny_config

from dmh.models import build_model


def _learnable_batch(algo: str, discrete: bool) -> dict[str, torch.Tensor]:
    """Expert actions that are a fixed function of the state, so the loss floor is zero."""
    episodes = [[12], [10], [12]] if algo in SINGLE_EPISODE else [[5, 7], [6, 6], [4, 8]]
    batch = make_batch(episodes, obs_dim=3, act_dim=3 if discrete else 2, discrete=discrete, seed=1)
    obs = batch["obs"]
    batch["actions"] = obs.argmax(-1) if discrete else torch.tanh(obs[..., :2])
    return batch


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
@pytest.mark.parametrize("algo", ALGOS)
def test_training_loss_goes_to_near_zero_on_a_tiny_dataset(algo: str, discrete: bool) -> None:
    torch.manual_seed(0)
    overrides = {"z_train": "sample", "local_checkpoint_chunk": 0} if algo == "dmh" else {}  # sampled z, as the paper
    cfg = tiny_config(algo, discrete, act_dim=3 if discrete else 2, dropout=0.1, checkpoint_scan=False, **overrides)
    model = build_model(algo, cfg).train()
    batch = _learnable_batch(algo, discrete)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first, _ = model.loss(batch)
    for _ in range(200):
        loss, _ = model.loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    final, _ = model.loss(batch)
    assert final.item() < 0.05 * first.item(), (first.item(), final.item())
    assert final.item() < (0.05 if discrete else 0.01)
