"""DM-H's sub-goal z (issue 13, part 2): how z is drawn (a sample per step, as the authors' code; one sample per block,
as the paper; the mean), its size (z_dim 2 = Grid World's obs_dim, as the authors' code; 8; 32) and valuable
sub-goals on / off, on Darkroom and Darkroom Hard at the cpu preset's full training length.

    python sweeps/z_study.py [--preset smoke|cpu] [--seeds N] [--first-seed K] [--z step block mean] [--z-dim 2 8 32]

The cpu grid crosses draw × size with valuable sub-goals on (9 cells per task) and runs each draw without them at
the largest size (3 more): 24 trials per seed. A campaign runs one seed per sweep (``--first-seed K --seeds 1
--name z_study_cpu_sK``), so a sitting finishes whole seeds (Tune's --resume does not keep the trial order). Each
trial trains the cpu preset's 3000 updates and evaluates every 500, so both the final and the best evaluation are
recorded; the report's z-study table summarises the runs.
"""

from __future__ import annotations

import argparse
import sys

from dmh.sweep import Sweep, SweepError, Trial, main, product

# How z is drawn, as DM-H model settings; the keys are the names the report shows.
Z_DRAWS = {
    "step": {"model.z_train": "sample", "model.z_eval": "sample", "model.z_draw": "step"},  # the authors' code
    "block": {"model.z_train": "sample", "model.z_eval": "sample", "model.z_draw": "block"},  # the paper (Eq. 6)
    "mean": {"model.z_train": "mean", "model.z_eval": "mean", "model.z_draw": "block"},  # deterministic z
}
Z_DIMS = {"smoke": (2,), "cpu": (2, 8, 32)}
DRAWS = {"smoke": ("step", "mean"), "cpu": tuple(Z_DRAWS)}
WITHOUT_SUBGOALS_AT = ("cpu",)  # presets whose grid also runs each draw without valuable sub-goals
TASKS = {"smoke": ("darkroom-hard",), "cpu": ("darkroom", "darkroom-hard")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--z", nargs="+", default=None, choices=tuple(Z_DRAWS), metavar="DRAW",
                        help=f"z draws to sweep, of {', '.join(Z_DRAWS)} (default: all on cpu)")
    parser.add_argument("--z-dim", type=int, nargs="+", default=None, metavar="D",
                        help="z sizes to sweep (default: cpu 2 8 32)")


def grid(args: argparse.Namespace) -> list[Trial]:
    if args.preset not in TASKS:
        raise SweepError(f"z_study has no {args.preset} grid (it is a cpu-scale study): use --preset smoke or cpu")
    draws = args.z if args.z is not None else DRAWS[args.preset]
    dims = args.z_dim if args.z_dim is not None else Z_DIMS[args.preset]
    values = [{**Z_DRAWS[draw], "model.z_dim": dim, "valuable_subgoals": True} for dim in dims for draw in draws]
    if args.preset in WITHOUT_SUBGOALS_AT:  # the sub-goal branch off, at the largest z of each draw
        values += [{**Z_DRAWS[draw], "model.z_dim": max(dims), "valuable_subgoals": False} for draw in draws]
    return product(["dmh"], TASKS[args.preset], args.seeds, values)


SWEEP = Sweep(
    name="z_study",
    description="DM-H's sub-goal z: draw x size x valuable sub-goals (issue 13, part 2)",
    grid=grid,
    preset_settings={"cpu": {"eval_every": 500}},
    add_arguments=add_arguments,
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
