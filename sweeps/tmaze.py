"""DM-H vs DM vs DT over T-maze memory lengths (paper §6.5–6.6, Fig. 3 and Fig. 5): return, online testing time
(``time/online_min``) and offline training time (``time/offline_h_per_10k_updates``) per run.

    python sweeps/tmaze.py [--preset smoke|cpu|paper] [--lengths 1000 2000 ...] [--seeds N] [--resume]

A trial that runs out of memory (the paper's DT and DM at 20k) is a result, not a failure: its MLflow run ends
FINISHED with tag ``status_detail=out_of_memory`` and metric ``oom=1``, and the trial reports ``oom=1``.
Paper lengths: 1k, 2k, 5k, 10k, 20k; cpu: 20 and 50; smoke: 20.
"""

from __future__ import annotations

import argparse
import sys

from dmh.sweep import Sweep, Trial, main, product
from dmh.vocabulary import TMAZE_PREFIX

ALGOS = ("dmh", "dm", "dt")
LENGTHS = {"smoke": (20,), "cpu": (20, 50), "paper": (1000, 2000, 5000, 10_000, 20_000)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", type=int, nargs="+", default=None, metavar="L",
                        help="memory lengths (default: smoke 20; cpu 20 50; paper 1000 2000 5000 10000 20000)")


def grid(args: argparse.Namespace) -> list[Trial]:
    lengths = args.lengths if args.lengths is not None else LENGTHS[args.preset]
    return product(ALGOS, [f"{TMAZE_PREFIX}{n}" for n in lengths], args.seeds)


SWEEP = Sweep(
    name="tmaze",
    description="DM-H vs DM vs DT over T-maze memory lengths (paper Fig. 3, Fig. 5)",
    grid=grid,
    preset_settings={"cpu": {"steps": 300, "checkpoint_every": 100}},
    add_arguments=add_arguments,
    oom_is_result=True,
)

if __name__ == "__main__":
    sys.exit(main(SWEEP))
