"""Models: DM-H and the DT, DM, AD (Transformer) and AD (Mamba) baselines, all with one online-policy interface.

`build_model(algo, cfg)` is the entry point for the training and evaluation layers; see docs/reproduction.md for the
batch format, the block layout and the decisions on the paper's open questions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from dmh.models.ad import ADConfig, ADMambaConfig, AlgorithmDistillation
from dmh.models.blocks import ModelConfig
from dmh.models.context import BlockLayout, block_layout, valuable_subgoal_index
from dmh.models.dmh import DecisionMambaHybrid, DMHConfig
from dmh.models.dt import DecisionTransformer, DMConfig, DTConfig
from dmh.models.mamba import Mamba, MambaBackbone, mamba_ssm_available, selective_scan, selective_scan_reference
from dmh.models.policy import Policy

# algo name -> (model class, its config class, the config base class it accepts, the backbone the algo implies)
MODELS: dict[str, tuple[type[nn.Module], type[ModelConfig], type[ModelConfig], str | None]] = {
    "dmh": (DecisionMambaHybrid, DMHConfig, DMHConfig, None),
    "dm": (DecisionTransformer, DMConfig, DTConfig, "mamba"),
    "dt": (DecisionTransformer, DTConfig, DTConfig, "transformer"),
    "ad-transformer": (AlgorithmDistillation, ADConfig, ADConfig, "transformer"),
    "ad-mamba": (AlgorithmDistillation, ADMambaConfig, ADConfig, "mamba"),
}


def config_class(algo: str) -> type[ModelConfig]:
    """The config dataclass `build_model(algo, ...)` expects."""
    if algo not in MODELS:
        raise ValueError(f"unknown algo {algo!r}; choose from {sorted(MODELS)}")
    return MODELS[algo][1]


def build_model(algo: str, cfg: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """Build the model for `algo` (dmh | dm | dt | ad-transformer | ad-mamba) from its config dataclass or a mapping
    of its fields (e.g. a preset loaded from YAML). The algo decides the backbone: a config whose `backbone` says
    otherwise is rejected rather than silently overridden."""
    model_cls, cfg_cls, base_cls, backbone = MODELS[algo] if algo in MODELS else (None, config_class(algo), None, None)
    if isinstance(cfg, Mapping):
        cfg = cfg_cls(**cfg)
    if not isinstance(cfg, base_cls):
        raise TypeError(f"build_model({algo!r}) needs a {cfg_cls.__name__}, got {type(cfg).__name__}")
    if backbone is not None and cfg.backbone != backbone:
        raise ValueError(f"algo {algo!r} uses a {backbone} backbone but the config says {cfg.backbone!r}")
    return model_cls(cfg)


def config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """A config as a plain dict, for saving next to a checkpoint."""
    return dataclasses.asdict(cfg)


__all__ = [
    "MODELS",
    "ADConfig",
    "ADMambaConfig",
    "AlgorithmDistillation",
    "BlockLayout",
    "DMConfig",
    "DMHConfig",
    "DTConfig",
    "DecisionMambaHybrid",
    "DecisionTransformer",
    "Mamba",
    "MambaBackbone",
    "ModelConfig",
    "Policy",
    "block_layout",
    "build_model",
    "config_class",
    "config_dict",
    "mamba_ssm_available",
    "selective_scan",
    "selective_scan_reference",
    "valuable_subgoal_index",
]
