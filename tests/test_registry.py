"""The algorithm registry: every entry builds, trains and acts through the one path training and evaluation use, and
what an entry declares (context kind, backbone, return conditioning) is what the run actually does."""

import math

import pytest
import torch

from dmh.models import ALGORITHMS, MambaBackbone, scan_backend
from dmh.models.gpt import GPT
from dmh.training.config import ALGOS, make_config
from dmh.training.train import Trainer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("registry-data"))


def trainer(algo, tmp_path, data_dir, task="darkroom"):
    return Trainer(make_config(algo, task, "smoke", settings={"steps": 1, "run_dir": str(tmp_path / "runs"),
                                                                "data_dir": data_dir}))


def test_the_command_line_offers_exactly_the_registered_algorithms():
    assert set(ALGOS) == set(ALGORITHMS)


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_registered_algorithm_builds_trains_one_step_and_evaluates_online(algo, tmp_path, data_dir):
    run = trainer(algo, tmp_path, data_dir)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    loss = run.train_step()["loss"]
    assert math.isfinite(loss) and loss > 0
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    result = run.evaluate()
    assert result.returns.shape == (run.cfg.eval_tasks, run.cfg.eval_episodes)
    assert (result.returns >= 0).all()  # Darkroom rewards are 0 or 1 per step


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_a_run_draws_the_context_kind_its_entry_declares(algo, tmp_path, data_dir):
    run = trainer(algo, tmp_path, data_dir)
    assert run.sampler.spec.kind == ALGORITHMS[algo].context


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_the_model_has_the_backbone_its_entry_declares_and_reports_the_scan_it_takes(algo, tmp_path, data_dir):
    entry = ALGORITHMS[algo]
    model = trainer(algo, tmp_path, data_dir).model
    has_gpt = any(isinstance(m, GPT) for m in model.modules())
    has_mamba = any(isinstance(m, MambaBackbone) for m in model.modules())
    assert (has_gpt, has_mamba) == {"transformer": (True, False), "mamba": (False, True),
                                    "hybrid": (True, True)}[entry.backbone]
    # on this machine's CPU the Mamba blocks take the torch scan, even where mamba-ssm is installed
    assert scan_backend(model.cpu()) == ("torch" if has_mamba else "none")


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_return_conditioned_models_read_the_target_return_and_the_others_ignore_it(algo, tmp_path, data_dir):
    entry = ALGORITHMS[algo]
    model = trainer(algo, tmp_path, data_dir, task="darkroom").model.eval()
    obs, timestep = torch.zeros(3, model.cfg.obs_dim), torch.zeros(3, dtype=torch.long)
    outputs = []
    for target in (0.0, 50.0):
        torch.manual_seed(0)  # the same draws of DM-H's sampled z for both targets
        policy = model.policy(3, target_return=target)
        policy.reset()
        outputs.append(policy.act(obs, timestep))
    # DM-H reads a return only through its optional RTG token, which Grid World leaves off
    reads_return = entry.conditions_on == "return-to-go"
    assert torch.allclose(outputs[0], outputs[1]) != reads_return
