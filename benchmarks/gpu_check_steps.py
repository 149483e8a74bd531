"""The bodies of benchmarks/gpu_check.py's steps that need torch and dmh, one subcommand each:

    python -m benchmarks.gpu_check_steps versions
    python -m benchmarks.gpu_check_steps mamba-imports
    python -m benchmarks.gpu_check_steps train --device cuda --preset paper --backend torch [--mamba-only] --work DIR
    python -m benchmarks.gpu_check_steps pytest [--collect-only] -- PYTEST ARGS

Each runs in its own process, on the machine's python3 with the carried wheels on PYTHONPATH, and imports neither
Ray nor MLflow (the lent GPU machine has neither). Exit status 0 when the step passed; bad input is one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import math
import sys
import time
from pathlib import Path
from typing import Any

# What importing mamba-ssm 2.3.2.post1 needs besides torch, triton and its own kernel: its package __init__ imports
# Mamba2 (huggingface_hub) and MambaLMHeadModel (transformers), so dmh's kernel path cannot import without them.
MAMBA_SSM_IMPORTS = {
    "einops": ("rearrange", "repeat"),
    "transformers.generation": ("GenerateDecoderOnlyOutput", "TextStreamer"),
    "transformers.utils": ("WEIGHTS_NAME", "CONFIG_NAME"),
    "transformers.utils.hub": ("cached_file",),
    "huggingface_hub": ("PyTorchModelHubMixin",),
    "packaging.version": ("Version",),
}
# The distributions whose versions the check reports (the image's own and the carried ones that matter).
REPORTED = ("torch", "triton", "numpy", "pandas", "h5py", "gymnasium", "pytest", "transformers", "mamba-ssm")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def versions(args: argparse.Namespace) -> int:
    """What this machine runs: Python, torch and its CUDA, every GPU, the packages the steps use, dmh's kernel probe."""
    import torch

    from dmh.models import mamba_ssm_available

    print(f"python {sys.version.split()[0]} at {sys.executable}")
    print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.get_num_threads()} CPU threads")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    print(", ".join(f"{name} {version(name)}" for name in REPORTED))
    print(f"dmh's probe: mamba-ssm's kernel {'imports' if mamba_ssm_available() else 'does not import'}")
    return 0


def mamba_imports(args: argparse.Namespace) -> int:
    """Every name mamba-ssm imports at package import beyond torch and triton, so that a missing carried wheel shows
    while the kernel still compiles, not after."""
    missing = []
    for module, names in MAMBA_SSM_IMPORTS.items():
        try:
            loaded = importlib.import_module(module)
            absent = [name for name in names if not hasattr(loaded, name)]
        except Exception as exc:  # an ImportError, or a package failing its own checks at import
            missing.append(f"{module}: {type(exc).__name__}: {exc}")
            continue
        if absent:
            missing.append(f"{module}: has no {', '.join(absent)}")
        else:
            print(f"{module}: {', '.join(names)}")
    for line in missing:
        print(f"MISSING {line}")
    return 1 if missing else 0


def train(args: argparse.Namespace) -> int:
    """Every algorithm (with ``--mamba-only``, those with Mamba blocks) trains ``args.steps`` updates through the
    library (``Trainer``, as a sweep trial does, without MLflow) on ``args.device`` and is then evaluated online
    there. A run passes when its model stayed on the device, its loss is finite, every evaluation return is finite,
    and its Mamba blocks took the scan path asked for."""
    import torch

    from dmh.models import ALGORITHMS, scan_backend
    from dmh.training.config import make_config
    from dmh.training.train import Trainer

    wrong = []
    for algo, spec in ALGORITHMS.items():
        has_mamba = spec.backbone != "transformer"
        if args.mamba_only and not has_mamba:
            continue
        sets = [f"steps={args.steps}", "warmup_steps=1", f"checkpoint_every={args.steps}", f"log_every={args.steps}",
                "eval_every=0", "eval_tasks=2", "eval_episodes=2", f"device={args.device}",
                f"model.mamba_backend={args.backend}", f"run_dir={args.work / 'runs'}",
                f"data_dir={args.work / 'data'}", f"data_steps={args.data_steps}", f"experiment={args.backend}"]
        began = time.perf_counter()
        trainer = Trainer(make_config(algo, "darkroom", args.preset, sets=sets))
        result = trainer.fit()
        seconds = time.perf_counter() - began
        on = next(trainer.model.parameters()).device
        scan = scan_backend(trainer.model)
        expected_scan = args.backend if has_mamba else "none"
        returns = result.evaluation.returns
        print(f"{algo:15} {args.preset} preset, {result.steps} updates on {on}"
              f"{f' ({torch.cuda.get_device_name(on)})' if on.type == 'cuda' else ''}, scan {scan}, "
              f"loss {result.final_loss:.4f}, returns {returns.shape[0]}x{returns.shape[1]} last "
              f"{result.evaluation.last_return:.3f}, {seconds:.0f} s", flush=True)
        problems = [why for why, bad in (
            (f"trained on {on.type}, not {torch.device(args.device).type}", on.type != torch.device(args.device).type),
            (f"scan {scan}, not {expected_scan}", scan != expected_scan),
            (f"loss {result.final_loss}", not math.isfinite(result.final_loss)),
            ("a return is not finite", not all(math.isfinite(r) for r in returns.flat)),
        ) if bad]
        if problems:
            wrong.append(f"{algo}: {'; '.join(problems)}")
    for line in wrong:
        print(f"WRONG {line}")
    return 1 if wrong else 0


class SkipsFail:
    """A pytest plugin that counts skipped tests: in this check a test that skips did not check anything."""

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self.collected = 0

    def pytest_collection_finish(self, session: Any) -> None:
        self.collected = len(session.items)  # after -m and --ignore have deselected

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.skipped:
            self.skipped.append(report.nodeid)


def pytest_step(args: argparse.Namespace) -> int:
    """pytest over ``args.pytest_args``, where a skipped test fails the step and so does collecting nothing. Without
    the warnings plugin: tests/conftest.py names a Ray warning class, which would import Ray."""
    import pytest

    plugin = SkipsFail()
    extra = ["--collect-only", "-q"] if args.collect_only else ["-rs"]
    status = pytest.main(["-p", "no:warnings", "-p", "no:cacheprovider", *extra, *args.pytest_args], plugins=[plugin])
    if plugin.skipped:
        print(f"{len(plugin.skipped)} test(s) skipped, which fails this step: {', '.join(plugin.skipped)}")
        return 1
    if not plugin.collected:
        print("no test collected, which fails this step")
        return 1
    return int(status)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="gpu_check_steps", description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True, parser_class=OneLineParser)
    steps.add_parser("versions").set_defaults(run=versions)
    steps.add_parser("mamba-imports").set_defaults(run=mamba_imports)
    training = steps.add_parser("train")
    training.add_argument("--device", choices=["cpu", "cuda"], required=True)
    training.add_argument("--preset", choices=["smoke", "paper"], required=True)
    training.add_argument("--backend", choices=["torch", "cuda"], required=True, help="model.mamba_backend")
    training.add_argument("--mamba-only", action="store_true", help="only the algorithms with Mamba blocks")
    training.add_argument("--steps", type=int, default=20)
    training.add_argument("--data-steps", type=int, default=100_000, help="Darkroom learning-history budget")
    training.add_argument("--work", type=Path, required=True, help="folder for the runs and the dataset cache")
    training.set_defaults(run=train)
    tests = steps.add_parser("pytest")
    tests.add_argument("--collect-only", action="store_true")
    tests.add_argument("pytest_args", nargs="+")
    tests.set_defaults(run=pytest_step)
    args = parser.parse_args(argv)
    if args.step == "train" and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
