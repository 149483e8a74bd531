"""The algorithms, one entry each: everything an algorithm implies, in one place.

Adding an algorithm means writing its model file and adding its entry here; training, evaluation, the command line,
the sweeps and the report read the rest from the entry (``tests/test_registry.py`` trains one step of every entry and
evaluates it online).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from dmh.models.ad import ADConfig, ADMambaConfig, AlgorithmDistillation
from dmh.models.dmh import DecisionMambaHybrid, DMHConfig
from dmh.models.dt import DecisionTransformer, DMConfig, DTConfig
from dmh.models.layers import ModelConfig


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: its model, its config and what it implies for data, backbone and conditioning."""

    name: str  # what --algo takes
    label: str  # the paper's name, used in tables and figures
    model: type[nn.Module]  # the model class; built as model(config)
    config: type[ModelConfig]  # the config dataclass build_model(name, …) creates from a mapping
    accepts: type[ModelConfig]  # config classes it accepts (DM also takes a DTConfig whose backbone is Mamba)
    backbone: Literal["transformer", "mamba", "hybrid"]  # the sequence model over the context
    context: Literal["sorted", "history", "episode"]  # what a training context holds (dmh.training.contexts):
    # n episodes sorted by return, n episodes of a learning history in play order, or a window of one episode
    conditions_on: Literal["return-to-go", "history", "history and sub-goals"]  # what the policy acts on, besides
    # the current state


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("dmh", "DM-H", DecisionMambaHybrid, DMHConfig, DMHConfig, "hybrid", "sorted", "history and sub-goals"),
    Algorithm("dm", "DM", DecisionTransformer, DMConfig, DTConfig, "mamba", "episode", "return-to-go"),
    Algorithm("dt", "DT", DecisionTransformer, DTConfig, DTConfig, "transformer", "episode", "return-to-go"),
    Algorithm("ad-transformer", "AD (Transformer)", AlgorithmDistillation, ADConfig, ADConfig, "transformer",
              "history", "history"),
    Algorithm("ad-mamba", "AD (Mamba)", AlgorithmDistillation, ADMambaConfig, ADConfig, "mamba", "history",
              "history"),
)}


def algorithm(name: str) -> Algorithm:
    """The entry of ``name``; an unknown name is a ``ValueError`` listing the valid ones."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algo {name!r}; choose from {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]
