"""DM-H vs AD (Mamba) vs AD (Transformer) on the six Grid World families (paper §6.4, Fig. 2).

    python sweeps/grid_world.py [--preset smoke|cpu|paper] [--row short|long|both] [--seeds N] [--resume]
                                [--storage PATH]

By default smoke runs Darkroom only, cpu Fig. 2's short-horizon row (Darkroom, Darkroom Hard, Dark Key-to-Door), paper
both rows; ``--row`` picks a row at any preset (``long``: Large Darkroom, Large Darkroom Hard, Large Dark Key-to-Door,
the paper's long-horizon claims).
"""

from __future__ import annotations

import argparse
import sys

from dmh.sweep import Sweep, Trial, main, product
from dmh.vocabulary import GRID_WORLD

ALGOS = ("dmh", "ad-mamba", "ad-transformer")
TASKS = {"smoke": ("darkroom",), "cpu": GRID_WORLD[:3], "paper": GRID_WORLD}  # each preset's default grid
ROWS = {"short": GRID_WORLD[:3], "long": GRID_WORLD[3:], "both": GRID_WORLD}  # Fig. 2's rows (--row)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--row", choices=tuple(ROWS), default=None,
                        help="Fig. 2's row: short (the 9 x 9 families), long (the Large ones) or both (default: "
                             "smoke Darkroom, cpu short, paper both)")


def grid(args: argparse.Namespace) -> list[Trial]:
    return product(ALGOS, TASKS[args.preset] if args.row is None else ROWS[args.row], args.seeds)


SWEEP = Sweep(
    name="grid_world",
    description="DM-H vs AD (Mamba) vs AD (Transformer) on the six Grid World families (paper Fig. 2)",
    grid=grid,
    add_arguments=add_arguments,
    preset_settings={"cpu": {"steps": 300, "checkpoint_every": 100, "eval_tasks": 8}},
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
