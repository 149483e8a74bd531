"""DM-H vs AD (Mamba) vs AD (Transformer) on the six Grid World families (paper §6.4, Fig. 2).

    python sweeps/grid_world.py [--preset smoke|cpu|paper] [--seeds N] [--resume] [--storage PATH]

smoke runs Darkroom only, cpu the three small families (Darkroom, Darkroom Hard, Dark Key-to-Door).
"""

from __future__ import annotations

import sys

from dmh.sweep import Sweep, main, product
from dmh.vocabulary import GRID_WORLD

ALGOS = ("dmh", "ad-mamba", "ad-transformer")
TASKS = {"smoke": ("darkroom",), "cpu": GRID_WORLD[:3], "paper": GRID_WORLD}

SWEEP = Sweep(
    name="grid_world",
    description="DM-H vs AD (Mamba) vs AD (Transformer) on the six Grid World families (paper Fig. 2)",
    grid=lambda args: product(ALGOS, TASKS[args.preset], args.seeds),
    preset_settings={"cpu": {"steps": 300, "checkpoint_every": 100, "eval_tasks": 8}},
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
