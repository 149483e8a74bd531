"""DM-H vs AD (Mamba) vs AD (Transformer) on the six Grid World families (paper §6.4, Fig. 2).

    python sweeps/grid_world.py [--preset smoke|cpu|paper] [--seeds N] [--resume] [--storage PATH]

smoke runs Darkroom only, cpu the three small families (Darkroom, Darkroom Hard, Dark Key-to-Door).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python sweeps/grid_world.py`, or a copy run by `ray submit` with $DMH_REPO set
    sys.path.insert(0, os.environ.get("DMH_REPO") or str(Path(__file__).resolve().parent.parent))

from sweeps.common import GRID_WORLD, Sweep, main, product

ALGOS = ("dmh", "ad-mamba", "ad-transformer")
TASKS = {"smoke": ("darkroom",), "cpu": GRID_WORLD[:3], "paper": GRID_WORLD}

SWEEP = Sweep(
    name="grid_world",
    description="DM-H vs AD (Mamba) vs AD (Transformer) on the six Grid World families (paper Fig. 2)",
    grid=lambda args: product(ALGOS, TASKS[args.preset], args.seeds),
    preset_sets={"cpu": {"steps": 300, "checkpoint_every": 100, "eval_tasks": 8}},
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
