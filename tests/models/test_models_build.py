"""`build_model`: the entry point the training and evaluation layers use."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from models_testkit import ALGOS, tiny_config

from dmh.models import DMConfig, DTConfig, build_model, config_class


@pytest.mark.parametrize("algo", ALGOS)
def test_build_model_accepts_a_mapping_of_config_fields(algo: str) -> None:
    fields = dataclasses.asdict(tiny_config(algo))
    model = build_model(algo, fields)
    assert isinstance(model.cfg, config_class(algo)) and model.cfg == tiny_config(algo)


def test_the_algo_decides_the_backbone_and_a_contradicting_config_is_rejected() -> None:
    assert build_model("dm", DMConfig(obs_dim=2, act_dim=3, d_model=16)).cfg.backbone == "mamba"
    with pytest.raises(ValueError, match="mamba backbone"):
        build_model("dm", DTConfig(obs_dim=2, act_dim=3, d_model=16))
    with pytest.raises(TypeError):
        build_model("dmh", DTConfig(obs_dim=2, act_dim=3, d_model=16))
    with pytest.raises(ValueError, match="unknown algo"):
        build_model("hdt", {"obs_dim": 2, "act_dim": 3})


def test_defaults_are_the_papers_sizes() -> None:
    model = build_model("dmh", {"obs_dim": 2, "act_dim": 4})
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_mamba_layer, cfg.n_layer, cfg.dropout, cfg.activation) == (128, 2, 3, 0.1, "relu")
    assert (cfg.d_state, cfg.expand, cfg.d_conv, cfg.c) == (16, 2, 4, 20)
    assert len(model.mamba.layers) == 2 and len(model.gpt.h) == 3
    assert model.mamba.layers[0].mixer.d_inner == 256 and isinstance(model.gpt.h[0].mlp[1], torch.nn.ReLU)
