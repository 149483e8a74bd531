"""DM-H vs AD (Mamba) vs AD (Transformer) vs DT on the nine D4RL datasets (paper §6.1–6.3, Tables 1, 2 and 4).

    python sweeps/d4rl.py --preset paper --d4rl-dir ~/.d4rl/datasets [--seeds N] [--resume] [--storage PATH]

The paper grid needs the D4RL files (checked before Ray starts). smoke and cpu are stand-ins that exercise the same
four algorithms on Grid World tasks (smoke: Darkroom; cpu: Darkroom and Dark Key-to-Door), because D4RL data cannot
be assumed on a laptop or CI machine.
"""

from __future__ import annotations

import sys

from dmh.sweep import Sweep, main, product
from dmh.vocabulary import D4RL_TASKS

ALGOS = ("dmh", "ad-mamba", "ad-transformer", "dt")
TASKS = {"smoke": ("darkroom",), "cpu": ("darkroom", "key-to-door"), "paper": D4RL_TASKS}

SWEEP = Sweep(
    name="d4rl",
    description="DM-H vs AD (Mamba) vs AD (Transformer) vs DT on the nine D4RL datasets (paper Tables 1, 2, 4)",
    grid=lambda args: product(ALGOS, TASKS[args.preset], args.seeds),
    preset_settings={"cpu": {"steps": 200, "checkpoint_every": 100, "eval_tasks": 8}},
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
