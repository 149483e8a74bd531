"""The same few measurements on whichever checkout `PYTHONPATH` points at, for a before/after comparison of two
commits under the same conditions (docs/benchmarks.md, "Before and after"):

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before taskset -c 0 python benchmarks/ab_checkouts.py   # before
    PYTHONPATH=.           taskset -c 0 python benchmarks/ab_checkouts.py   # after

It uses only what both checkouts' `benchmarks/` and `dmh/` provide: the online `Rollout`, `paper_config`,
`synthetic_batch`, `median_seconds` and the `cpu` preset's `Trainer`.
"""
import tempfile

import torch

import benchmarks.online as on
import dmh
from benchmarks.common import median_seconds, paper_config, synthetic_batch
from dmh.models import build_model
from dmh.training.config import make_config
from dmh.training.train import Trainer


def update_seconds(algo: str) -> float:
    """One paper-sized update at a 2000-step context, batch 4 (median of 2 after one)."""
    torch.manual_seed(0)
    model = build_model(algo, paper_config(algo, dropout=0.1, context_len=2000)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = synthetic_batch(4, 2000, 4)

    def update() -> None:
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(update, 2)


def main() -> None:
    torch.set_num_threads(1)
    print("dmh from", dmh.__file__)
    for algo in ("dmh", "ad-mamba"):
        for batch in (1, 20):
            rollout = on.Rollout(on.policy_of(on.build(algo), batch), batch)
            for context in (200, 4000):
                rollout.advance_to(context)
                ms = rollout.seconds_per_step(10, 20) * 1e3
                print(algo, "batch", batch, "context", context, f"{ms:.3f} ms/step", flush=True)
    for algo in ("dmh", "ad-mamba", "ad-transformer"):
        print(algo, "update, 2000 steps, batch 4", f"{update_seconds(algo):.3f} s", flush=True)
    cfg = make_config("dmh", "darkroom", "cpu", sets=["threads=1", f"run_dir={tempfile.mkdtemp()}"])
    print("dmh cpu preset update", f"{median_seconds(Trainer(cfg).train_step, 20, warmup=3):.4f} s", flush=True)


if __name__ == "__main__":
    main()
