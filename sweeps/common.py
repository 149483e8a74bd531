"""What every sweep script shares: its command line, validation before Ray starts, joining a cluster or starting Ray
in-process, the Tune trainable (one ``dmh train`` run = one MLflow run per trial) and the Tuner with fault tolerance
and ``--resume``.

A script declares only its grid (algos × tasks × swept values × seeds, per preset) as a :class:`Sweep` and calls
:func:`main`. Read top to bottom: declarations → command line → validation → Ray → the trainable → the Tuner.

Two rules shape the trainable. Everything that ends up in a dmh ``TrainConfig`` (tracking URI, data folder, threads)
travels inside the trial's Tune config, which ``Tuner.restore`` brings back unchanged, so a resumed trial rebuilds
exactly the config its checkpoint was made with and continues the same MLflow run. And the MLflow store is chosen
inside the trainable, so trials on remote workers write where the driver does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ray binds every interface and reports usage unless told otherwise; it reads these when it is imported or started.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 also stops Ray clients rewriting 127.0.0.1 to the machine's external address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from dmh.envs.mujoco import D4RL_DATASETS
from dmh.errors import DmhError

PRESETS = ("smoke", "cpu", "paper")
DEFAULT_SEEDS = {"smoke": 1, "cpu": 1, "paper": 10}  # the paper reports 10 seeds everywhere
GRID_WORLD = ("darkroom", "darkroom-hard", "key-to-door", "large-darkroom", "large-darkroom-hard", "large-key-to-door")
RUN_DIR = "dmh-runs"  # relative on purpose: Tune runs each trial in its own working folder, which changes on resume
EXIT_INCOMPLETE = 3  # the sweep stopped before every trial finished (interrupted, or trials errored too often)


class SweepError(DmhError):
    """A bad sweep argument, reported before Ray starts."""


def positive_values(option: str, values: Iterable[int], what: str) -> list[int]:
    """The swept values of ``option``, or a ``SweepError`` naming the non-positive ones."""
    values = list(values)
    bad = [v for v in values if v <= 0]
    if bad:
        raise SweepError(f"{option}: {what}, got {bad}")
    return values


# ----------------------------------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Trial:
    """One cell of a grid: one ``dmh train`` run."""

    algo: str
    task: str
    seed: int
    sets: dict[str, Any] = field(default_factory=dict)  # dmh config fields this cell sets (the swept values: c, …)


@dataclass(frozen=True)
class Sweep:
    """What a script declares: its name, its grid per preset and the dmh settings each preset adds."""

    name: str  # script name: default MLflow experiment and Tune run name
    description: str  # one line for --help
    grid: Callable[[argparse.Namespace], list[Trial]]  # (parsed args: preset, seeds, script options) → cells
    preset_sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset → dmh settings for every trial
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # script-specific options
    oom_is_result: bool = False  # Tmaze: running out of memory is a recorded outcome (paper Fig. 3), not an error


def product(algos: Iterable[str], tasks: Iterable[str], seeds: int, values: Iterable[dict[str, Any]] = ({},)) -> \
        list[Trial]:
    """algos × tasks × swept values × seeds, in that nesting order (so the first trials cover every algo)."""
    return [Trial(algo, task, seed, dict(sets)) for seed in range(seeds) for sets in values for task in tasks
            for algo in algos]


# ----------------------------------------------------------------------------------------------------- command line
def build_parser(sweep: Sweep) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python sweeps/{sweep.name}.py", description=sweep.description)
    parser.add_argument("--preset", default="cpu", choices=PRESETS,
                        help="smoke: seconds, for tests; cpu: minutes on a laptop; paper: the paper's grid (GPUs)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: smoke/cpu 1, paper 10)")
    parser.add_argument("--resume", action="store_true",
                        help="restore the interrupted sweep in --storage and run only its unfinished or errored trials")
    parser.add_argument("--storage", default="sweep_results",
                        help="Tune storage: a local folder (default ./sweep_results), NFS path or s3://bucket/path")
    parser.add_argument("--name", default=None, help="Tune run name under --storage (default <sweep>_<preset>)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the sweep's name)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store every trial writes to (default $MLFLOW_TRACKING_URI or ./mlflow.db); on a "
                             "cluster use a server or database every worker reaches")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join; default $RAY_ADDRESS, else a running cluster on this machine, else "
                             "Ray in-process on 127.0.0.1; 'local' always starts Ray in-process")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (also torch threads)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial; fractions share a GPU")
    parser.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="retries of a failed trial, each from its last checkpoint")
    parser.add_argument("--data-dir", default=None,
                        help="dataset cache shared by the trials (default $DMH_DATA_DIR or ./data)")
    parser.add_argument("--d4rl-dir", default=None,
                        help="folder of the D4RL HDF5 files (default $D4RL_DATASET_DIR or ~/.d4rl/datasets)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dmh setting for every trial (as in `dmh train --set`), e.g. steps=500")
    if sweep.add_arguments is not None:
        sweep.add_arguments(parser)
    return parser


@dataclass(frozen=True)
class Plan:
    """A validated sweep, ready for Ray: what the Tuner needs and nothing else."""

    sweep: Sweep
    trials: list[dict[str, Any]]  # Tune configs, one per cell (empty when resuming: Tune restores its own)
    storage: str  # absolute local path or a URI
    name: str  # Tune run name: the sweep's folder under storage
    resume: bool
    resources: dict[str, float]
    max_concurrent: int
    max_failures: int
    ray_address: str | None
    experiment: str
    tracking_uri: str

    @property
    def path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"


def plan(sweep: Sweep, args: argparse.Namespace) -> Plan:
    """Every check that can fail, before Ray starts: a bad argument costs a second, not a cluster start."""
    from dmh.tracking import default_tracking_uri
    from dmh.training.config import make_config, parse_value

    if args.seeds is None:
        args.seeds = DEFAULT_SEEDS[args.preset]
    if args.seeds <= 0:
        raise SweepError(f"--seeds must be a positive integer, got {args.seeds}")
    if args.cpus_per_trial <= 0:
        raise SweepError(f"--cpus-per-trial must be positive, got {args.cpus_per_trial}")
    if args.gpus_per_trial < 0:
        raise SweepError(f"--gpus-per-trial must be non-negative, got {args.gpus_per_trial}")
    if args.max_failures < 0 or args.max_concurrent < 0:
        raise SweepError("--max-failures and --max-concurrent must be non-negative")
    experiment = args.experiment or sweep.name
    tracking_uri = args.tracking_uri or default_tracking_uri()
    storage = check_storage(args.storage)
    name = args.name or f"{sweep.name}_{args.preset}"
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    common = dict(sweep=sweep, storage=storage, name=name, resume=args.resume, resources=resources,
                  max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                  ray_address=args.ray_address, experiment=experiment, tracking_uri=tracking_uri)
    path = f"{storage.rstrip('/')}/{name}"
    if args.resume:
        check_restorable(path)
        return Plan(trials=[], **common)
    trials = sweep.grid(args)
    if not trials:
        raise SweepError(f"the {args.preset} grid of {sweep.name} is empty: nothing to run")
    extra: dict[str, Any] = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--set expects key=value, got {item!r}")
        extra[key.strip()] = parse_value(text.strip())
    threads = max(1, int(args.cpus_per_trial))
    data_dir = str(Path(args.data_dir or os.environ.get("DMH_DATA_DIR") or "data").resolve())
    d4rl_dir = args.d4rl_dir or os.environ.get("D4RL_DATASET_DIR")
    env = {"D4RL_DATASET_DIR": str(Path(d4rl_dir).expanduser().resolve())} if d4rl_dir else {}
    configs = []
    for trial in trials:
        sets = {**sweep.preset_sets.get(args.preset, {}), **trial.sets, **extra, "threads": threads,
                "data_dir": data_dir, "run_dir": RUN_DIR, "experiment": experiment}
        config = dict(algo=trial.algo, task=trial.task, preset=args.preset, seed=trial.seed, sets=sets,
                      sweep=sweep.name, sweep_run=path, tracking_uri=tracking_uri, env=env,
                      oom_is_result=sweep.oom_is_result)
        try:
            make_config(trial.algo, trial.task, args.preset, trial.seed, sets=as_set_args(sets))
        except DmhError as exc:
            raise SweepError(f"cell {trial.algo} / {trial.task} / seed {trial.seed} {trial.sets}: {exc}") from None
        configs.append(config)
    check_d4rl_data({c["task"] for c in configs if "dataset_path" not in c["sets"]}, env.get("D4RL_DATASET_DIR"))
    from ray.tune import Tuner  # only now: importing Tune costs seconds that bad arguments should not

    if Tuner.can_restore(path):
        raise SweepError(f"a sweep already exists at {path}: pass --resume to continue it, or choose another --name "
                         "or --storage")
    return Plan(trials=configs, **common)


def check_restorable(path: str) -> None:
    from ray.tune import Tuner

    if not Tuner.can_restore(path):
        raise SweepError(f"--resume: no sweep to restore at {path} (check --storage, --name and --preset)")


def as_set_args(sets: dict[str, Any]) -> list[str]:
    """dmh settings as ``key=value`` strings; values go through YAML, so they are written as YAML."""
    import yaml

    out = []
    for key, value in sets.items():
        if isinstance(value, dict):  # the model mapping: one entry per field
            out += [f"{key}.{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                    for k, v in value.items()]
        else:
            out.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return out


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
    import pyarrow.fs

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
    from dmh.data.d4rl import d4rl_available, d4rl_cache_path

    previous = os.environ.get("D4RL_DATASET_DIR")
    missing = []
    try:
        if d4rl_dir:
            os.environ["D4RL_DATASET_DIR"] = d4rl_dir
        for task in sorted(t for t in tasks if t in D4RL_DATASETS):
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


# -------------------------------------------------------------------------------------------------------------- Ray
def connect_ray(address: str | None) -> bool:
    """Join a cluster if there is one, else start Ray in this process bound to 127.0.0.1.

    Order: ``--ray-address`` (``local`` = always in-process), ``$RAY_ADDRESS``, a cluster already running on this
    machine (what ``ray submit`` gives the script on a head node), else in-process. Returns whether this call
    connected (and so must disconnect); an already initialised Ray (a test's shared session) is reused.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address not in (None, "local"):
        ray.init(address=address, log_to_driver=True)
        return True
    # Only a cluster made by `ray start` (it records its address in Ray's temp folder): address="auto" alone would
    # also adopt any Ray it finds running here, such as another sweep's in-process Ray, which ends with that sweep.
    from ray._private.services import find_bootstrap_address

    recorded = find_bootstrap_address(None) if address is None else None
    if recorded and reachable(recorded):
        try:
            ray.init(address="auto", log_to_driver=True)
            return True
        except ConnectionError:
            pass  # stopped between the probe and the connection: start our own
    # else no cluster, or a stale record of a stopped one (ray.init would keep retrying a dead address for minutes)
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False)
    return True


def reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (a cluster's GCS), within ``timeout`` seconds."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


# -------------------------------------------------------------------------------------------------- the trainable
class TrialSession:
    """What a trial needs from Tune, behind a small interface so the trial logic also runs without Ray (tests)."""

    @property
    def trial_id(self) -> str:
        from ray import tune

        return tune.get_context().get_trial_id()

    @property
    def cluster(self) -> str:
        """The GCS address of the Ray cluster running the trial (which cluster a run came from)."""
        import ray

        return ray.get_runtime_context().gcs_address

    def restore(self, into: Path) -> Path | None:
        """Copy the trial's last reported checkpoint file into ``into``; None on a first start."""
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            into.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / "checkpoint.pt", into / "checkpoint.pt")
        return into / "checkpoint.pt"

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        """Report metrics, with the checkpoint file if given (Tune persists it to storage before returning)."""
        from ray import tune

        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="dmh-tune-ckpt-") as folder:
            shutil.copy2(checkpoint, Path(folder) / "checkpoint.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial = one ``dmh train`` run = one MLflow run. The cell sits under one key,
    ``trial``, so a grid is a single ``grid_search`` over whole cells (algos and swept values need not be a product)."""
    run_trial(config["trial"], TrialSession())


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python/numpy MemoryError, or torch's CPU allocator failing (a RuntimeError with this message)."""
    import torch

    oom_types: tuple[type[BaseException], ...] = (MemoryError, torch.OutOfMemoryError)
    return isinstance(exc, oom_types) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def run_trial(config: dict[str, Any], session: TrialSession) -> None:
    """Train one cell, reporting each checkpoint to Tune; a restarted trial continues its checkpoint and MLflow run."""
    from dmh.training.checkpoint import load_checkpoint
    from dmh.training.config import make_config
    from dmh.training.run import train_run
    from dmh.training.train import run_name

    os.environ.update(config["env"])  # e.g. D4RL_DATASET_DIR, for trials on workers that did not inherit it
    cfg = make_config(config["algo"], config["task"], config["preset"], config["seed"],
                      sets=as_set_args(config["sets"]))
    uri, trial_id = config["tracking_uri"], session.trial_id
    # A retry lands in a fresh working folder (another worker, or Tune's new session after --resume): the checkpoint
    # Tune kept is the one to continue. A retry in the same folder may also find one written but not yet reported.
    # Paths are relative to the trial's working folder (Tune's cwd for the trial), and per trial in case it is not.
    resume_from = session.restore(Path("dmh-restored") / trial_id)
    local = Path(cfg.run_dir) / run_name(cfg) / "checkpoint.pt"
    if resume_from is None and local.exists():
        resume_from = local
    run_id = load_checkpoint(resume_from)["run_id"] if resume_from is not None else None
    discard_stale_runs(uri, cfg.experiment, config["sweep_run"], trial_id, keep=run_id)
    tags = {"sweep": config["sweep"], "sweep_run": config["sweep_run"], "trial_id": trial_id,
            "worker_pid": str(os.getpid()), "ray_cluster": session.cluster, "status_detail": "running"}
    last: dict[str, Any] = {"step": 0}

    def on_checkpoint(path: Path, step: int, metrics: dict[str, float]) -> None:
        last.update(step=step, **metrics)
        if config.get("evaluate_checkpoints"):  # a search on the return needs it at every report (ASHA, Optuna)
            metrics = {**metrics, "eval/last_return": evaluate_quietly(path)}
        session.report({"step": step, **metrics}, checkpoint=path)

    try:
        result = train_run(cfg, tracking_uri=uri, tags=tags, resume_from=resume_from, on_checkpoint=on_checkpoint)
    except SystemExit:
        # Tune ends a trial it stops (ASHA, an interrupted driver) with sys.exit(0) in this thread, which would
        # record the unfinished run FINISHED.
        end_trial_runs(uri, cfg.experiment, config["sweep_run"], trial_id, "KILLED", "stopped")
        raise
    except BaseException as exc:
        if not (config["oom_is_result"] and is_out_of_memory(exc)):
            raise
        record_out_of_memory(cfg, uri, tags, exc)
        session.report({"step": last["step"], "oom": 1})
        return
    mark_completed(uri, result.run_id, log_oom=config["oom_is_result"])
    session.report({"step": result.steps, "train/loss": result.final_loss,
                    "eval/last_return": result.evaluation.last_return,
                    "time/online_min": result.evaluation.online_seconds / 60,
                    "time/train_seconds": result.train_seconds, "oom": 0, "run_id": result.run_id})


def evaluate_quietly(checkpoint: Path) -> float:
    """A checkpoint's online last-episode return, leaving the training run's random streams as they were (so a
    resumed trial still trains exactly as an uninterrupted one)."""
    import random

    import numpy as np
    import torch

    from dmh.training.run import evaluate_checkpoint

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            return evaluate_checkpoint(checkpoint, log_to_run=False).last_return
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


# --------------------------------------------------------------------------------------------- MLflow bookkeeping
def trial_runs(uri: str, experiment: str, sweep_run: str, trial_id: str | None = None) -> list[Any]:
    """The MLflow runs of one sweep (tag ``sweep_run``: its Tune folder) or of one of its trials, deleted runs
    excluded. Filtering by folder, not by script, leaves other sweeps of the same script alone."""
    from dmh.tracking import open_client

    client = open_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.sweep_run = '{sweep_run}'" + (f" and tags.trial_id = '{trial_id}'" if trial_id else "")
    return client.search_runs([found.experiment_id], filter_string=query, max_results=50_000)


def discard_stale_runs(uri: str, experiment: str, sweep_run: str, trial_id: str, keep: str | None) -> None:
    """Delete this trial's runs other than ``keep``: attempts that died before their first checkpoint, which a
    restart cannot continue. Deleting them keeps one run per trial (MLflow can still restore a deleted run)."""
    from dmh.tracking import open_client

    client = open_client(uri)
    for run in trial_runs(uri, experiment, sweep_run, trial_id):
        if run.info.run_id != keep:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, "status_detail", "superseded_by_restart")
            client.delete_run(run.info.run_id)


def end_trial_runs(uri: str, experiment: str, sweep_run: str, trial_id: str, status: str, detail: str) -> None:
    """Mark one trial's runs ``status`` with ``status_detail=detail``."""
    from dmh.tracking import open_client

    client = open_client(uri)
    for run in trial_runs(uri, experiment, sweep_run, trial_id):
        client.set_terminated(run.info.run_id, status=status)
        client.set_tag(run.info.run_id, "status_detail", detail)


def close_unfinished_runs(uri: str, experiment: str, sweep_run: str) -> int:
    """After the sweep, when no trial process is left: every run that did not complete (ASHA stopped it, the driver
    was interrupted, its process died before it could say so) ends KILLED with ``status_detail=stopped``; ``--resume``
    reopens those of unfinished trials. Completed means FINISHED with a final evaluation, or out of memory: a stopped
    trial's thread can end its run FINISHED on the way out (Tune stops it with ``sys.exit(0)``). Returns how many."""
    from dmh.tracking import open_client

    client = open_client(uri)
    closed = 0
    for run in trial_runs(uri, experiment, sweep_run):
        detail = run.data.tags.get("status_detail")
        completed = run.info.status == "FINISHED" and ("eval/last_return" in run.data.metrics
                                                       or detail == "out_of_memory")
        if completed:
            if detail not in ("completed", "out_of_memory"):
                client.set_tag(run.info.run_id, "status_detail", "completed")
        elif run.info.status != "KILLED" or detail != "stopped":
            client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, "status_detail", "stopped")
            closed += 1
    return closed


def mark_completed(uri: str, run_id: str | None, log_oom: bool) -> None:
    """Tag a run completed; where out-of-memory is a possible outcome, log ``oom=0`` so every run has the metric."""
    from dmh.tracking import open_client

    if run_id:
        client = open_client(uri)
        client.set_tag(run_id, "status_detail", "completed")
        if log_oom:
            client.log_metric(run_id, "oom", 0.0)


def record_out_of_memory(cfg: Any, uri: str, tags: dict[str, str], exc: BaseException) -> None:
    """An out-of-memory trial is a result (the paper's Fig. 3 marks DT and DM "out of memory" at 20k): its run ends
    FINISHED with ``status_detail=out_of_memory`` and metric ``oom=1``, whether or not training had started a run."""
    from dmh.tracking import TrackedRun
    from dmh.training.train import run_name

    found = trial_runs(uri, cfg.experiment, tags["sweep_run"], tags["trial_id"])
    run_id = found[0].info.run_id if found else None
    params = None if run_id else dataclasses.asdict(cfg)
    with TrackedRun(cfg.experiment, run_name=run_name(cfg), params=params, run_id=run_id, tracking_uri=uri,
                    tags={**tags, "task": cfg.task, "algo": cfg.algo, "status_detail": "out_of_memory"}) as run:
        run.log_metrics({"oom": 1.0}, step=0)
        run.log_text(f"{type(exc).__name__}: {exc}\n", "out_of_memory.txt")


# ------------------------------------------------------------------------------------------------------- the Tuner
def build_tuner(plan: Plan, param_space: dict[str, Any] | None = None, tune_config: Any = None) -> Any:
    """A new Tuner for ``plan``, or the restored one with ``--resume`` (only unfinished or errored trials run)."""
    from ray import cloudpickle, tune

    # Workers get the trainable by value: on a cluster only the driver has this checkout (`ray submit` copies the
    # script alone), while dmh itself is installed on every node.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    runnable = tune.with_resources(trainable, plan.resources)
    if plan.resume:
        return tune.Tuner.restore(plan.path, runnable, resume_unfinished=True, resume_errored=True)
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage, verbose=1,
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        # Only the latest checkpoint matters for a retry; older ones would fill the storage.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )
    if tune_config is None:
        tune_config = tune.TuneConfig(max_concurrent_trials=plan.max_concurrent or None,
                                      trial_dirname_creator=short_trial_dirname)
    if param_space is None:
        param_space = {"trial": tune.grid_search(plan.trials)}
    return tune.Tuner(runnable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def short_trial_dirname(trial: Any) -> str:
    """Trial folders named by id: Tune's default packs the whole (long) config into the name."""
    return f"trial_{trial.trial_id}"


def run(plan: Plan, param_space: dict[str, Any] | None = None, tune_config: Any = None) -> int:
    """Start or join Ray, run the sweep, close any run the sweep left RUNNING, and say how it ended."""
    import ray

    started = connect_ray(plan.ray_address)
    previous_sigterm = forward_sigterm_as_sigint()
    try:
        started_at = time.perf_counter()
        results = build_tuner(plan, param_space, tune_config).fit()
        elapsed = time.perf_counter() - started_at
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if started:
            ray.shutdown()
    done = sum(1 for r in results if r.error is None and r.metrics.get("done", False))
    left = close_unfinished_runs(plan.tracking_uri, plan.experiment, plan.path)
    print(f"{plan.sweep.name}: {done}/{len(results)} trials finished in {elapsed:.0f} s; "
          f"MLflow experiment {plan.experiment!r} at {plan.tracking_uri}; Tune state at {plan.path}"
          + (f"; {left} unfinished run(s) marked KILLED" if left else ""))
    if done < len(results) or results.num_errors:
        print(f"{plan.sweep.name}: incomplete; rerun with the same arguments and --resume to finish it",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def forward_sigterm_as_sigint() -> Any:
    """Cluster schedulers stop jobs with SIGTERM; Tune saves its state and stops gracefully only on SIGINT.
    Returns the previous handler, or None where handlers cannot be installed (a sweep run in a thread)."""
    try:
        return signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
    except ValueError:
        return None


def main(sweep: Sweep, argv: list[str] | None = None) -> int:
    """The command line of every sweep script: parse, validate (before Ray), run."""
    args = build_parser(sweep).parse_args(argv)
    try:
        checked = plan(sweep, args)
    except DmhError as exc:
        print(f"{sweep.name}: error: {exc}", file=sys.stderr)
        return 2
    return run(checked)
