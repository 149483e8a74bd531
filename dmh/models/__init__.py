"""Models: DM-H and the DT, DM, AD (Transformer) and AD (Mamba) baselines, all with one online-policy interface.

`build_model(algo, cfg)` is the entry point for the training and evaluation layers; `ALGORITHMS` (registry.py) says
what each algorithm implies. See docs/reproduction.md for the batch format, the block layout and the decisions on the
paper's open questions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from dmh.models.ad import ADConfig, ADMambaConfig, AlgorithmDistillation
from dmh.models.block_layout import BlockLayout, block_layout, valuable_subgoal_index
from dmh.models.dmh import DecisionMambaHybrid, DMHConfig
from dmh.models.dt import DecisionTransformer, DMConfig, DTConfig
from dmh.models.layers import ContextShape, ModelConfig
from dmh.models.mamba import (
    Mamba,
    MambaBackbone,
    mamba_ssm_available,
    scan_backend,
    selective_scan,
    selective_scan_reference,
)
from dmh.models.policy import Policy
from dmh.models.registry import ALGORITHMS, Algorithm, algorithm


def config_class(algo: str) -> type[ModelConfig]:
    """The config dataclass `build_model(algo, ...)` expects."""
    return algorithm(algo).config


def build_model(algo: str, cfg: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """Build the model for `algo` (dmh | dm | dt | ad-transformer | ad-mamba) from its config dataclass or a mapping
    of its fields (e.g. a preset loaded from YAML). The algo decides the backbone: a config whose `backbone` says
    otherwise is rejected rather than silently overridden."""
    entry = algorithm(algo)
    if isinstance(cfg, Mapping):
        cfg = entry.config(**cfg)
    if not isinstance(cfg, entry.accepts):
        raise TypeError(f"build_model({algo!r}) needs a {entry.config.__name__}, got {type(cfg).__name__}")
    if entry.backbone != "hybrid" and cfg.backbone != entry.backbone:
        raise ValueError(f"algo {algo!r} uses a {entry.backbone} backbone but the config says {cfg.backbone!r}")
    return entry.model(cfg)


__all__ = [
    "ALGORITHMS",
    "ADConfig",
    "ADMambaConfig",
    "Algorithm",
    "AlgorithmDistillation",
    "BlockLayout",
    "ContextShape",
    "DMConfig",
    "DMHConfig",
    "DTConfig",
    "DecisionMambaHybrid",
    "DecisionTransformer",
    "Mamba",
    "MambaBackbone",
    "ModelConfig",
    "Policy",
    "algorithm",
    "block_layout",
    "build_model",
    "config_class",
    "mamba_ssm_available",
    "scan_backend",
    "selective_scan",
    "selective_scan_reference",
    "valuable_subgoal_index",
]
