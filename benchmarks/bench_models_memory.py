"""Peak memory of one DM-H forward + backward over a 20,000-step context on CPU (issue target: under 4 GiB).

Paper-sized model (d_model 128, 2 Mamba layers, 3 GPT layers, c = 20, valuable sub-goals on), one context holding a
single 20,000-step episode, as in the paper's longest Tmaze run. Reports the process's peak resident set size, which
includes the Python interpreter and torch itself, so it overstates the model's own footprint. Exits 1 over the limit.

    python benchmarks/bench_models_memory.py [--steps 20000] [--block-size 20] [--limit-gib 4]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from dmh.models import DMHConfig, build_model


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="context length in environment steps")
    parser.add_argument("--block-size", type=int, default=20, help="c")
    parser.add_argument("--obs-dim", type=int, default=3)
    parser.add_argument("--act-dim", type=int, default=4, help="discrete actions")
    parser.add_argument("--local-chunk", type=int, default=DMHConfig.local_checkpoint_chunk,
                        help="local sequences per checkpointed GPT chunk")
    parser.add_argument("--no-subgoals", action="store_true", help="drop the valuable sub-goal branch")
    parser.add_argument("--limit-gib", type=float, default=4.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = DMHConfig(obs_dim=args.obs_dim, act_dim=args.act_dim, discrete=True, max_timestep=args.steps,
                    c=args.block_size, mamba_backend="torch", local_checkpoint_chunk=args.local_chunk,
                    valuable_subgoals=not args.no_subgoals)
    model = build_model("dmh", cfg).train()
    n = args.steps
    batch = dict(
        obs=torch.randn(1, n, args.obs_dim),
        actions=torch.randint(0, args.act_dim, (1, n)),
        rewards=(torch.rand(1, n) < 0.01).float(),
        timesteps=torch.arange(n)[None],
        episode_start=torch.zeros(1, n, dtype=torch.bool).index_fill_(1, torch.tensor([0]), True),
        done=torch.zeros(1, n, dtype=torch.bool).index_fill_(1, torch.tensor([n - 1]), True),
        mask=torch.ones(1, n, dtype=torch.bool),
        rtg=torch.ones(1, n),
    )
    before = peak_rss_gib()
    start = time.perf_counter()
    loss, logs = model.loss(batch)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = peak_rss_gib()
    print(f"DM-H forward+backward, {n} steps, c={args.block_size}, d_model={cfg.d_model}, "
          f"{sum(p.numel() for p in model.parameters())} parameters, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"loss {logs['loss']:.4f}  time {seconds:.1f} s  peak RSS before {before:.2f} GiB  "
          f"peak RSS {peak:.2f} GiB (limit {args.limit_gib} GiB)")
    return 0 if peak < args.limit_gib else 1


if __name__ == "__main__":
    sys.exit(main())
