"""DM-H's sensitivity to c, the steps each sub-goal controls (paper §6.7, Fig. 4b): c ∈ {1, 5, 10, 15, 20} on Hopper
medium / medium-replay / medium-expert, Large Dark Key-to-Door and Large Darkroom Hard.

    python sweeps/c_sensitivity.py [--preset smoke|cpu|paper] [--seeds N] [--c 1 5 10] [--resume] [--storage PATH]

smoke and cpu run on Darkroom Hard (20-step episodes, so every c up to 20 fits) instead of the paper's tasks: they
need no D4RL data and finish in seconds / minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import sys

from dmh.sweep import Sweep, Trial, main, positive_values, product
from dmh.vocabulary import PAPER_C

TASKS = {
    "smoke": ("darkroom-hard",),
    "cpu": ("darkroom-hard",),
    "paper": ("hopper-medium-v2", "hopper-medium-replay-v2", "hopper-medium-expert-v2", "large-key-to-door",
              "large-darkroom-hard"),
}
C_VALUES = {"smoke": (1, 5), "cpu": PAPER_C, "paper": PAPER_C}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--c", type=int, nargs="+", default=None, metavar="C",
                        help="block sizes to sweep (default: smoke 1 5; cpu and paper 1 5 10 15 20)")


def grid(args: argparse.Namespace) -> list[Trial]:
    values = positive_values("--c", args.c if args.c is not None else C_VALUES[args.preset],
                             "every c must be a positive integer (steps per sub-goal)")
    return product(["dmh"], TASKS[args.preset], args.seeds, [{"c": c} for c in values])


SWEEP = Sweep(
    name="c_sensitivity",
    description="DM-H with c in {1, 5, 10, 15, 20} (paper Fig. 4b)",
    grid=grid,
    # cpu: 400 updates keep the five trials (two at a time) inside 15 minutes on 2 CPUs even when the cores are
    # shared (600 took 19 minutes beside three other training processes; docs/sweeps.md)
    preset_sets={"cpu": {"steps": 400, "checkpoint_every": 100, "eval_tasks": 8}},
    add_arguments=add_arguments,
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
