"""`python -m benchmarks`: run the suite (or one part), print one table per part, write results.csv and results.json.

    python -m benchmarks                      # the full table (about 20 minutes on one thread, see docs/benchmarks.md)
    python -m benchmarks --quick              # small contexts, few repetitions: a couple of minutes
    python -m benchmarks --only online        # one part: online | offline | scan | data | sweep
    python -m benchmarks --out DIR            # where the results go (default /tmp/dmh-benchmarks)
    python -m benchmarks --only online --device cuda   # the online part's models and inputs on a GPU

Run it on an otherwise idle machine: other processes on the same cores inflate every number, and the ratios less
than the absolute times only if both sides suffer alike.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch

from benchmarks import common, data, offline, online, scan, sweep
from benchmarks.common import Row, machine_info, write_results
from dmh.errors import DmhError
from dmh.tasks import resolve_task

PARTS: dict[str, ModuleType] = {"online": online, "offline": offline, "scan": scan, "data": data, "sweep": sweep}
DEFAULT_OUT = Path("/tmp/dmh-benchmarks")  # outside the checkout: results are not part of the repository


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small contexts and few repetitions (what the test runs)")
    parser.add_argument("--only", choices=list(PARTS), help="run one part")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda or cuda:N: where the online part's models and inputs live (the "
                             "other parts run on the CPU)")
    parser.add_argument("--synthetic-only", action="store_true",
                        help="offline: skip the cpu preset's Trainer updates (they need the Darkroom learning "
                             "histories, 1-2 minutes to generate the first time)")
    parser.add_argument("--preset-task", default=None, metavar="TASK",
                        help="offline: the task of the cpu preset's Trainer updates (default darkroom; e.g. "
                             "large-darkroom for the long-horizon campaign's 2000-step contexts)")
    parser.add_argument("--preset-c", type=int, nargs="+", default=[], metavar="C",
                        help="offline: also time the cpu preset's DM-H at these c (every block decoded), e.g. 1 5 10 "
                             "15 20 for the cost of a c sweep on --preset-task")
    args = parser.parse_args(argv)
    try:
        task = resolve_task(args.preset_task or offline.QUICK.preset_task)
    except DmhError as exc:
        parser.error(f"--preset-task: {exc}")
    bad_c = [c for c in args.preset_c if not 1 <= c <= task.horizon]
    if bad_c:
        parser.error(f"--preset-c: c must be between 1 and {task.name}'s episode length {task.horizon}, got {bad_c[0]}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA GPU here")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    common.DEVICE = torch.device(args.device)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    header = {**machine_info(args.threads), "mode": "quick" if args.quick else "full", "command": command,
              "online_device": args.device if args.device == "cpu" else
              f"{args.device} ({torch.cuda.get_device_name(common.DEVICE)})"}
    print("  ".join(f"{k}: {v}" for k, v in header.items()), flush=True)
    rows: list[Row] = []
    start = time.perf_counter()
    for name in [args.only] if args.only else PARTS:
        part = PARTS[name]
        settings = part.QUICK if args.quick else part.FULL
        if name == "offline" and args.synthetic_only:
            settings = replace(settings, preset=False)
        if name == "offline" and args.preset_task is not None:
            settings = replace(settings, preset_task=args.preset_task)
        if name == "offline" and args.preset_c:
            settings = replace(settings, preset_c=tuple(args.preset_c))
        part_start = time.perf_counter()
        part_rows = part.run(settings, args.threads)
        header[f"{name}_seconds"] = round(time.perf_counter() - part_start, 1)
        print(f"\n{part.table(part_rows, settings)}({name}: {header[f'{name}_seconds']:.0f} s)", flush=True)
        rows += part_rows
        write_results(args.out, header, rows)  # after every part: an interrupted full run keeps what it measured
    header["total_seconds"] = round(time.perf_counter() - start, 1)
    csv_path, json_path = write_results(args.out, header, rows)
    print(f"\n{len(rows)} rows in {header['total_seconds']:.0f} s -> {csv_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
