"""Time training updates of the `cpu` preset on one thread and project the preset's full training time.

    python benchmarks/bench_train_step.py [--algo dmh] [--task darkroom] [--updates 30] [--budget-min 15]

Prints seconds per update and the projected minutes for the preset's `steps`; exits 1 when the projection exceeds
the budget (the `cpu` preset promises training in at most 15 minutes on one core). Run it on an otherwise idle
machine: other processes on the same cores inflate the figure.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from dmh.training.config import make_config
from dmh.training.train import Trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="dmh")
    parser.add_argument("--task", default="darkroom")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--updates", type=int, default=30, help="timed updates (after 3 warm-up updates)")
    parser.add_argument("--budget-min", type=float, default=15.0)
    args = parser.parse_args()
    cfg = make_config(args.algo, args.task, args.preset, sets=["threads=1", "run_dir=/tmp/dmh-bench-runs"])
    trainer = Trainer(cfg)
    torch.set_num_threads(1)
    for _ in range(3):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(args.updates):
        trainer.train_step()
    per_update = (time.perf_counter() - start) / args.updates
    projected = per_update * cfg.steps / 60
    print(f"{args.algo} on {args.task}, preset {args.preset}: {per_update:.3f} s per update (1 thread); "
          f"{cfg.steps} updates -> {projected:.1f} min (budget {args.budget_min:.0f} min)")
    return 0 if projected <= args.budget_min else 1


if __name__ == "__main__":
    sys.exit(main())
