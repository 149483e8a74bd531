"""DM-H's sensitivity to c, the steps each sub-goal controls (paper §6.7, Fig. 4b): c ∈ {1, 5, 10, 15, 20} on Hopper
medium / medium-replay / medium-expert, Large Dark Key-to-Door and Large Darkroom Hard.

    python sweeps/c_sensitivity.py [--preset smoke|cpu|paper] [--task NAME ...] [--seeds N] [--c 1 5 10] [--resume]
                                   [--storage PATH]

smoke runs Darkroom Hard, cpu Darkroom (20-step episodes, so every c up to 20 fits) instead of the paper's tasks: they
need no D4RL data and finish in seconds / minutes on 2 CPUs. Darkroom is the task on which DM-H learns in context
at the cpu preset's scale (docs/results.md). At the cpu preset each context decodes the same number of steps
whatever c is (``train_blocks`` = ⌈50 / c⌉ blocks, the preset's 10 blocks at c = 5), so c does not also change how
much of a context is supervised. ``--task`` runs the sweep on other tasks at any preset (e.g. ``--task
large-darkroom-hard``, where c/H <= 0.1 as in the paper's study).
"""

from __future__ import annotations

import argparse
import math
import sys

from dmh.sweep import Sweep, Trial, main, product
from dmh.tasks import PAPER_C

TASKS = {
    "smoke": ("darkroom-hard",),
    "cpu": ("darkroom",),
    "paper": ("hopper-medium-v2", "hopper-medium-replay-v2", "hopper-medium-expert-v2", "large-key-to-door",
              "large-darkroom-hard"),
}
C_VALUES = {"smoke": (1, 5), "cpu": PAPER_C, "paper": PAPER_C}
DECODED_STEPS = {"cpu": 50}  # presets that decode a sample of blocks: steps per context their train_blocks keeps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--c", type=int, nargs="+", default=None, metavar="C",
                        help="block sizes to sweep (default: smoke 1 5; cpu and paper 1 5 10 15 20)")
    parser.add_argument("--task", nargs="+", default=None, metavar="NAME",
                        help="tasks to sweep c on (default: smoke darkroom-hard, cpu darkroom, paper the paper's five)")


def grid(args: argparse.Namespace) -> list[Trial]:
    values = args.c if args.c is not None else C_VALUES[args.preset]
    steps = DECODED_STEPS.get(args.preset)
    cells = [{"c": c, **({"model.train_blocks": math.ceil(steps / c)} if steps else {})} for c in values]
    return product(["dmh"], args.task or TASKS[args.preset], args.seeds, cells)


SWEEP = Sweep(
    name="c_sensitivity",
    description="DM-H with c in {1, 5, 10, 15, 20} (paper Fig. 4b)",
    grid=grid,
    # cpu: 1000 updates keep the five trials (two at a time) and the install inside the README's 15 minutes on 2 CPUs;
    # every held-out goal (21), an evaluation every 250 updates for the best-during-training score
    preset_settings={"cpu": {"steps": 1000, "checkpoint_every": 250, "eval_every": 250}},
    add_arguments=add_arguments,
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
