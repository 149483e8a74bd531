"""A sweep's command line, and every check that can fail before Ray starts: a bad argument costs a second, not a
cluster start. The result is a :class:`Plan`: each cell's dmh ``TrainConfig`` built and validated once, here."""

from __future__ import annotations

import argparse
import dataclasses
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs

from dmh.boundary import MAX_SWEEP_SEEDS, SEED, Parser, parse
from dmh.data.d4rl import d4rl_available, d4rl_cache_path
from dmh.errors import DmhError
from dmh.io import check_writable_dir
from dmh.sweep.declare import DEFAULT_GPUS, DEFAULT_SEEDS, Sweep, SweepError, Trial
from dmh.tracking import check_store, default_tracking_uri
from dmh.training.config import PRESETS, make_config, parse_sets
from dmh.vocabulary import D4RL_TASKS

RUN_DIR = "dmh-runs"  # relative on purpose: Tune runs each trial in its own working folder, which changes on resume


def build_parser(sweep: Sweep) -> argparse.ArgumentParser:
    """The options every sweep script shares, then the script's own (``Sweep.add_arguments``)."""
    parser = Parser(prog=f"python sweeps/{sweep.name}.py", name=sweep.name, description=sweep.description)
    parser.add_argument("--preset", default="cpu", choices=tuple(PRESETS),  # the dmh preset its trials train with
                        help="smoke: seconds, for tests; cpu: minutes on a laptop; paper: the paper's grid (GPUs)")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds per cell, at most {MAX_SWEEP_SEEDS} (default: smoke/cpu 1, paper 10)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first seed: cells run seeds FIRST … FIRST + N - 1 (a campaign can add seeds later)")
    parser.add_argument("--resume", action="store_true",
                        help="restore the interrupted sweep in --storage and run only its unfinished or errored trials")
    parser.add_argument("--storage", default="sweep_results",
                        help="Tune storage: a local folder (default ./sweep_results), NFS path or s3://bucket/path")
    parser.add_argument("--name", default=None,
                        help="Tune run name, a plain name: the sweep's folder in --storage (default <sweep>_<preset>)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the sweep's name)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store every trial writes to (default $MLFLOW_TRACKING_URI or ./mlflow.db); on a "
                             "cluster use a server or database every worker reaches")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join; default $RAY_ADDRESS, else a running cluster on this machine, else "
                             "Ray in-process on 127.0.0.1; 'local' always starts Ray in-process")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0,
                        help="CPUs per trial (also torch threads); at most what a node of the Ray cluster has")
    parser.add_argument("--gpus-per-trial", type=float, default=None,
                        help="GPUs per trial; fractions share a GPU (default: 1 with --preset paper unless every trial "
                             "is set to device=cpu, else 0; a trial without a GPU sees none and trains on the CPU)")
    parser.add_argument("--memory-per-trial", type=float, default=0.0, metavar="GIB",
                        help="memory reserved per trial in GiB, so that Ray runs no more trials at once on a node than "
                             "its memory holds (default 0: none reserved)")
    parser.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="retries of a failed trial, each from its last checkpoint")
    parser.add_argument("--data-dir", default=None,
                        help="dataset cache shared by the trials (default $DMH_DATA_DIR or ./data)")
    parser.add_argument("--d4rl-dir", default=None,
                        help="folder of the D4RL HDF5 files (default $D4RL_DATASET_DIR or ~/.d4rl/datasets)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dmh setting for every trial (as in `dmh train --set`), e.g. steps=500")
    parser.add_argument("--cells", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                        help="run only the grid's cells whose KEY (algo, task, seed or a swept setting such as c) is "
                             "one of the VALUEs, e.g. --cells algo=ad-transformer (repeat: every one must hold)")
    if sweep.add_arguments is not None:
        sweep.add_arguments(parser)
    return parser


@dataclass(frozen=True)
class Plan:
    """A validated sweep, ready for Ray: what the Tuner needs and nothing else."""

    sweep: Sweep
    # Tune configs, one per cell (empty when resuming: Tune restores its own). Each holds the cell's resolved
    # TrainConfig as a dict ("config", rebuilt by the trial with config_from_dict), the settings it was made from
    # ("settings", which a search's sampled settings, "searched", join) and what the trial needs around it: "sweep",
    # "sweep_run", "tracking_uri", "env" (variables to set in the trial) and "oom_is_result".
    trials: list[dict[str, Any]]
    storage: str  # absolute local path or a URI
    name: str  # Tune run name: the sweep's folder under storage
    resume: bool
    resources: dict[str, float]  # per trial, as tune.with_resources takes them: cpu, gpu, memory (bytes) if asked
    max_concurrent: int
    max_failures: int
    ray_address: str | None
    experiment: str
    tracking_uri: str

    @property
    def path(self) -> str:
        """The sweep's Tune folder; also its MLflow tag ``sweep_run``, which tells its runs from other sweeps'."""
        return f"{self.storage.rstrip('/')}/{self.name}"


def parse_args(sweep: Sweep, argv: Sequence[str] | None) -> argparse.Namespace:
    """The sweep's command line, every option checked against ``dmh.boundary.OPTIONS`` (a ``SweepError``, or
    argparse's one line and exit 2)."""
    try:
        return parse(build_parser(sweep), argv)
    except DmhError as exc:
        raise SweepError(str(exc)) from None


def plan(sweep: Sweep, args: argparse.Namespace) -> Plan:
    """Every check that can fail, before Ray starts; each cell's config is built and validated here, once."""
    # Each option alone was checked against dmh.boundary.OPTIONS when parsed (parse_args); here what they say
    # together, and what they name.
    if args.seeds is None:
        args.seeds = DEFAULT_SEEDS[args.preset]
    if args.first_seed + args.seeds > SEED.high:
        raise SweepError(f"--first-seed {args.first_seed} + --seeds {args.seeds}: seeds must stay below "
                         f"{SEED.high_words}")
    gpus = DEFAULT_GPUS[args.preset] if args.gpus_per_trial is None else args.gpus_per_trial
    experiment = args.experiment or sweep.name
    tracking_uri = args.tracking_uri or default_tracking_uri()
    check_store(tracking_uri)  # from the driver: a store down now would otherwise fail every trial, after Ray starts
    storage = check_storage(args.storage)
    name = args.name or (sweep.default_name(args) if sweep.default_name else f"{sweep.name}_{args.preset}")
    resources = {"cpu": args.cpus_per_trial, "gpu": gpus}
    if args.memory_per_trial:
        resources["memory"] = args.memory_per_trial * 2**30  # Ray counts memory in bytes
    shared = dict(sweep=sweep, storage=storage, name=name, resume=args.resume, resources=resources,
                  max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                  ray_address=args.ray_address, experiment=experiment, tracking_uri=tracking_uri)
    path = f"{storage.rstrip('/')}/{name}"
    if args.resume:
        if not sweep_exists(path):
            raise SweepError(f"--resume: no sweep to restore at {path} (check --storage, --name and --preset)")
        return Plan(trials=[], **shared)
    args.seeds = range(args.first_seed, args.first_seed + args.seeds)  # what the grids iterate
    cells = select_cells(sweep.grid(args), args.cells)
    if not cells:
        raise SweepError(f"the {args.preset} grid of {sweep.name} is empty: nothing to run")
    # Later entries win: the cell's swept values over the preset's, --set over both, and what only the driver can
    # know (threads from the reserved CPUs, one data cache for every trial, the experiment) over everything.
    data_dir = Path(args.data_dir or os.environ.get("DMH_DATA_DIR") or "data").resolve()
    check_writable_dir(data_dir, "--data-dir")  # every trial may write the data cache there, after Ray starts
    fixed = {"threads": max(1, int(args.cpus_per_trial)), "data_dir": str(data_dir), "run_dir": RUN_DIR,
             "experiment": experiment}
    extra = parse_sets(args.set)
    d4rl_dir = args.d4rl_dir or os.environ.get("D4RL_DATASET_DIR")
    env = {"D4RL_DATASET_DIR": str(Path(d4rl_dir).expanduser().resolve())} if d4rl_dir else {}
    configs, settings = [], []
    for cell in cells:
        cell_settings = {**sweep.preset_settings.get(args.preset, {}), **cell.settings, **extra, **fixed}
        try:
            cfg = make_config(cell.algo, cell.task, args.preset, cell.seed, settings=cell_settings)
        except DmhError as exc:
            raise SweepError(f"cell {cell.algo} / {cell.task} / seed {cell.seed} {cell.settings}: {exc}") from None
        configs.append(cfg)
        settings.append(cell_settings)
    check_d4rl_data({cfg.task for cfg in configs if cfg.dataset_path is None}, env.get("D4RL_DATASET_DIR"))
    if args.gpus_per_trial is None and all(cfg.device == "cpu" for cfg in configs):
        resources["gpu"] = 0.0  # trials pinned to the CPU need no GPU
    if sweep_exists(path):
        raise SweepError(f"a sweep already exists at {path}: pass --resume to continue it, or choose another --name "
                         "or --storage")
    trials = [dict(config=dataclasses.asdict(cfg), settings=cell_settings, sweep=sweep.name, sweep_run=path,
                   tracking_uri=tracking_uri, env=env, oom_is_result=sweep.oom_is_result)
              for cfg, cell_settings in zip(configs, settings, strict=True)]
    return Plan(trials=trials, **shared)


def select_cells(cells: list[Trial], selections: Sequence[str]) -> list[Trial]:
    """The cells every ``--cells KEY=VALUE[,VALUE]`` selection holds for (values compared as written)."""
    for selection in selections:
        key, sep, values = selection.partition("=")
        if not sep or not key or not values:
            raise SweepError(f"--cells {selection}: expected KEY=VALUE[,VALUE]")
        keys = {"algo", "task", "seed"} | {k for cell in cells for k in cell.settings}
        if key not in keys:
            raise SweepError(f"--cells {selection}: this grid's cells have no {key!r}; they have "
                             f"{', '.join(sorted(keys))}")
        wanted = set(values.split(","))
        held = {str(cell_value(cell, key)) for cell in cells}
        if not wanted & held:
            raise SweepError(f"--cells {selection}: no cell has {key} in {{{values}}}; this grid's {key}: "
                             f"{', '.join(sorted(held))}")
        cells = [cell for cell in cells if str(cell_value(cell, key)) in wanted]
    return cells


def cell_value(cell: Trial, key: str) -> Any:
    return getattr(cell, key) if key in ("algo", "task", "seed") else cell.settings.get(key)


def sweep_exists(path: str) -> bool:
    """Whether Tune state of a sweep is at ``path`` (what ``Tuner.restore`` would restore)."""
    # Deferred to here, the last check: importing Ray Tune costs seconds that a bad argument should not pay.
    from ray.tune import Tuner

    return Tuner.can_restore(path)


def check_storage(storage: str) -> str:
    """Resolve ``--storage`` and prove it is writable (a probe file written and removed), local path or URI."""
    if "://" not in storage:
        path = Path(storage).expanduser().resolve()
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise SweepError(f"--storage {storage} cannot be written: {exc.strerror or exc}") from None
        return str(path)
    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage)
        fs.create_dir(root, recursive=True)
        probe = f"{root.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except Exception as exc:  # pyarrow raises many types (unknown scheme, credentials, permissions, network)
        raise SweepError(f"--storage {storage} cannot be written: {str(exc).splitlines()[0]}") from None
    return storage


def check_d4rl_data(tasks: Iterable[str], d4rl_dir: str | None) -> None:
    """Every D4RL dataset the grid needs is on disk (the d4rl cache or a local Minari copy), else a clear error."""
    previous = os.environ.get("D4RL_DATASET_DIR")
    missing = []
    try:
        if d4rl_dir:
            os.environ["D4RL_DATASET_DIR"] = d4rl_dir  # where d4rl_cache_path looks, as it will inside the trials
        for task in sorted(t for t in tasks if t in D4RL_TASKS):
            if not d4rl_available(task):
                missing.append(f"{task} ({d4rl_cache_path(task)})")
    finally:
        if d4rl_dir:
            if previous is None:
                os.environ.pop("D4RL_DATASET_DIR", None)
            else:
                os.environ["D4RL_DATASET_DIR"] = previous
    if missing:
        raise SweepError(f"D4RL data missing for {len(missing)} dataset(s): {'; '.join(missing)}. Copy the D4RL HDF5 "
                         "files into one folder and pass --d4rl-dir (or set D4RL_DATASET_DIR), or keep Minari's "
                         "D4RL/* datasets locally; see docs/d4rl.md. The smoke and cpu presets need no D4RL data.")
