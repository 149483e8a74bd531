"""DM-H with and without valuable sub-goals (paper §6.7–6.8, Fig. 4a and Fig. 6): Darkroom Hard, Dark Key-to-Door,
Large Darkroom Hard, Large Dark Key-to-Door and the nine D4RL datasets.

    python sweeps/subgoal_ablation.py [--preset smoke|cpu|paper] [--seeds N] [--resume] [--storage PATH]

smoke runs Darkroom Hard only, cpu the two small Grid World tasks; neither needs D4RL data.
"""

from __future__ import annotations

import sys

from dmh.sweep import Sweep, main, product
from dmh.vocabulary import D4RL_TASKS

TASKS = {
    "smoke": ("darkroom-hard",),
    "cpu": ("darkroom-hard", "key-to-door"),
    "paper": ("darkroom-hard", "key-to-door", "large-darkroom-hard", "large-key-to-door", *D4RL_TASKS),
}
VALUES = [{"valuable_subgoals": True}, {"valuable_subgoals": False}]

SWEEP = Sweep(
    name="subgoal_ablation",
    description="DM-H with and without valuable sub-goals (paper Fig. 4a, Fig. 6)",
    grid=lambda args: product(["dmh"], TASKS[args.preset], args.seeds, VALUES),
    preset_settings={"cpu": {"steps": 600, "checkpoint_every": 100, "eval_tasks": 8}},
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
