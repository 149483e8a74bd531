"""DM-H's sub-goal z, one variable at a time (issue 13, part 2): how z is drawn (a sample per step, as the authors'
code; one sample per block, as the paper; the mean), its size (z_dim 2 = Grid World's obs_dim, as the authors' code;
8; 32) and valuable sub-goals on / off, on Darkroom and Darkroom Hard at the cpu preset's full training length.

    python sweeps/z_study.py [--preset smoke|cpu] [--seeds N] [--z step block mean] [--z-dim 2 8 32] [--resume]

The cpu grid is the full cross (3 draws × 3 sizes × 2 = 18 cells per task), seeds outermost, so every cell's first
seed finishes before any cell's second. Each trial trains the cpu preset's 3000 updates and evaluates every 500, so
both the final and the best evaluation are recorded. ``analysis.z_table`` turns the runs into the table
docs/results.md publishes.
"""

from __future__ import annotations

import argparse
import sys

from dmh.sweep import Sweep, SweepError, Trial, main, positive_values

# How z is drawn, as DM-H model settings; the keys are the names the report shows.
Z_DRAWS = {
    "step": {"model.z_train": "sample", "model.z_eval": "sample", "model.z_draw": "step"},  # the authors' code
    "block": {"model.z_train": "sample", "model.z_eval": "sample", "model.z_draw": "block"},  # the paper (Eq. 6)
    "mean": {"model.z_train": "mean", "model.z_eval": "mean", "model.z_draw": "block"},  # deterministic z
}
Z_DIMS = {"smoke": (2,), "cpu": (2, 8, 32)}
DRAWS = {"smoke": ("step", "mean"), "cpu": tuple(Z_DRAWS)}
SUBGOALS = {"smoke": (True,), "cpu": (True, False)}
TASKS = {"smoke": ("darkroom-hard",), "cpu": ("darkroom", "darkroom-hard")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--z", nargs="+", default=None, metavar="DRAW",
                        help=f"z draws to sweep, of {', '.join(Z_DRAWS)} (default: all on cpu)")
    parser.add_argument("--z-dim", type=int, nargs="+", default=None, metavar="D",
                        help="z sizes to sweep (default: cpu 2 8 32)")


def grid(args: argparse.Namespace) -> list[Trial]:
    if args.preset not in TASKS:
        raise SweepError(f"z_study has no {args.preset} grid (it is a cpu-scale study): use --preset smoke or cpu")
    draws = args.z if args.z is not None else DRAWS[args.preset]
    unknown = sorted(set(draws) - set(Z_DRAWS))
    if unknown:
        raise SweepError(f"--z: unknown draw(s) {', '.join(unknown)}; valid: {', '.join(Z_DRAWS)}")
    dims = positive_values("--z-dim", args.z_dim if args.z_dim is not None else Z_DIMS[args.preset],
                           "every z size must be a positive integer")
    values = [{**Z_DRAWS[draw], "model.z_dim": dim, "valuable_subgoals": subgoals}
              for subgoals in SUBGOALS[args.preset] for dim in dims for draw in draws]
    return [Trial("dmh", task, seed, dict(sets)) for seed in range(args.seeds) for sets in values
            for task in TASKS[args.preset]]


SWEEP = Sweep(
    name="z_study",
    description="DM-H's sub-goal z: draw x size x valuable sub-goals (issue 13, part 2)",
    grid=grid,
    preset_sets={"cpu": {"eval_every": 500}},
    add_arguments=add_arguments,
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
