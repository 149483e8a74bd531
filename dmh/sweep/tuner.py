"""Running a planned sweep: the Tuner (new, or restored with ``--resume``), fault tolerance, the parent run that
groups the sweep's trials in MLflow, what the console shows while it runs (trials named after their cells, the
settings the grid varies as columns), and the exit status. :func:`main` is every sweep script's command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from dmh.boundary import interrupted_line, signal_handlers
from dmh.errors import DmhError
from dmh.sweep.bookkeeping import close_unfinished_runs, end_parent_run, open_parent_run
from dmh.sweep.declare import Sweep, SweepError
from dmh.sweep.plan import Plan, parse_args, plan
from dmh.sweep.ray_session import check_resources, connect_ray, describe_cluster
from dmh.tracking import flatten_params

EXIT_BAD_ARGUMENTS = 2  # nothing started (as argparse exits for an unknown option)
EXIT_INCOMPLETE = 3  # the sweep stopped before every trial finished (interrupted, or trials errored too often)
CELL = ("algo", "task", "seed")  # what names every cell; a grid's other columns are the settings it sweeps
REPORT_EVERY_S = 30  # seconds between two progress tables (Tune's own default, 5, floods a 15-minute sweep)

# What Tune reads from the environment when fit() starts, in this process. Set only while it runs, and only where
# the user has not set them.
TUNE_CONSOLE_ENV = {
    # Ray's default output engine (ray.tune.experimental.output, on unless RAY_AIR_NEW_OUTPUT=0) takes no progress
    # reporter and shows the search space's top-level keys as columns: here the one "trial" dict, cut to its last 20
    # characters. The CLIReporter that build_tuner sets shows the settings the grid varies under short names.
    "RAY_AIR_NEW_OUTPUT": "0",
    # With CheckpointConfig(num_to_keep=1) Tune snapshots the experiment state after every trial checkpoint, so that
    # the state --resume restores from never names a checkpoint already deleted; with trials checkpointing every
    # few seconds (the smoke and cpu presets) it then warns ("Experiment state snapshotting has been triggered
    # multiple times …") whenever one snapshot follows another within 5 s. The snapshots are what makes --resume
    # safe and cost a few small JSON files each, so the cadence stays and only that warning goes: 0 turns off this
    # one warning (Ray reads the variable for nothing else), not Ray's other warnings.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def build_tuner(plan: Plan, parent_run_id: str, param_space: dict[str, Any] | None = None,
                tune_config: Any = None) -> Any:
    """A new Tuner for ``plan``, or the restored one with ``--resume`` (only unfinished or errored trials run)."""
    # Deferred to here, once the plan is valid: importing Ray Tune (also done by the trainable's module) costs
    # seconds that a bad argument should not pay.
    from ray import tune

    from dmh.sweep.trial import trainable

    runnable = tune.with_resources(tune.with_parameters(trainable, parent_run_id=parent_run_id), plan.resources)
    if plan.resume:
        # Tune restores the reporter and the trial names with the run and tune configs it saved (tuner.pkl).
        return tune.Tuner.restore(plan.path, runnable, resume_unfinished=True, resume_errored=True)
    if param_space is None:
        columns = grid_columns([trial["config"] for trial in plan.trials])
        paths = {f"trial/config/{name.replace('.', '/')}": short for name, short in columns.items()}
    else:  # a search (sweeps/tune.py): the settings its searcher samples
        columns = short_names(list(param_space["trial"]["searched"]))
        paths = {f"trial/searched/{name}": short for name, short in columns.items()}
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage, verbose=1,
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        # Only the latest checkpoint matters for a retry; older ones would fill the storage.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        progress_reporter=tune.CLIReporter(
            parameter_columns=paths,
            max_report_frequency=REPORT_EVERY_S, print_intermediate_tables=True),
    )
    if tune_config is None:
        tune_config = tune.TuneConfig(max_concurrent_trials=plan.max_concurrent or None,
                                      trial_name_creator=TrialNames(tuple(columns.items())),
                                      trial_dirname_creator=short_trial_dirname)
    if param_space is None:
        param_space = {"trial": tune.grid_search(plan.trials)}
    return tune.Tuner(runnable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def short_trial_dirname(trial: Any) -> str:
    """Trial folders named by id: Tune's default packs the whole (long) config into the name."""
    return f"trial_{trial.trial_id}"


def grid_columns(configs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The settings that tell a grid's cells apart, as their MLflow param names (``c``, ``model.z_dim``) → the short
    names the console shows them under (``c``, ``z_dim``), in the order a cell is read: algo, task, swept settings,
    seed. ``configs`` are the cells' dmh configs as dicts. algo, task and seed count when they differ between
    cells; another setting only when it differs between cells of one algo and task (a swept value such as c), not
    when it merely follows the algo or the task (DM-H's z settings, which AD has not), nor when it copies one shown
    already (``model.c``, the model's copy of ``c``)."""
    params = [flatten_params(config) for config in configs]
    cells: dict[tuple[str, str], list[dict[str, str]]] = {}
    for p in params:
        cells.setdefault((p["algo"], p["task"]), []).append(p)

    def varies(name: str, among: list[dict[str, str]]) -> bool:
        return any(p.get(name) != among[0].get(name) for p in among)

    settings = dict.fromkeys(name for p in params for name in p if name not in CELL)  # union, in config order
    swept: dict[tuple[str | None, ...], str] = {}  # each swept column's values, cell by cell → its name
    for name in settings:
        if any(varies(name, same) for same in cells.values()):
            swept.setdefault(tuple(p.get(name) for p in params), name)  # a copy of a column (model.c of c) is none
    names = [n for n in CELL[:2] if varies(n, params)] + [*swept.values()] + [n for n in CELL[2:] if varies(n, params)]
    return short_names(names)


def short_names(names: list[str]) -> dict[str, str]:
    """MLflow param names → the console's names for them: the last part (``z_dim`` for ``model.z_dim``), or the
    whole name where two would share one."""
    last = [name.rpartition(".")[2] for name in names]
    return {name: short if last.count(short) == 1 else name for name, short in zip(names, last, strict=True)}


@dataclass(frozen=True)
class TrialNames:
    """Tune's ``trial_name_creator``: a trial named after its cell, ``<algo>-<task>-<swept>=<value>…-s<seed>``
    (``dmh-darkroom-hard-c=5-s0``), where Tune's default is ``trainable_<id>``."""

    columns: tuple[tuple[str, str], ...]  # grid_columns(...).items(): the swept settings among them join the name

    def __call__(self, trial: Any) -> str:
        params = flatten_params(trial.config["trial"]["config"])
        swept = [f"{short}={params[name]}" for name, short in self.columns if name not in CELL]
        return "-".join([params["algo"], params["task"], *swept, f"s{params['seed']}"])


def run(plan: Plan, param_space: dict[str, Any] | None = None, tune_config: Any = None,
        connect: Callable[[str | None], bool] | None = None) -> int:
    """Start or join Ray (``connect``, default :func:`connect_ray`), check that its nodes can hold a trial, open the
    sweep's parent run, run the sweep, close any run it left RUNNING, and say how it ended. The parent run ends
    FINISHED only if every trial finished."""
    started = (connect or connect_ray)(plan.ray_address)
    try:
        waiting = check_resources(plan.resources, describe_cluster(started))
    except SweepError:
        if started:
            ray.shutdown()
        raise
    if waiting:
        print(f"{plan.sweep.name}: {waiting}", file=sys.stderr, flush=True)
    parent_run_id = open_parent_run(plan)
    finished = False
    try:
        try:
            started_at = time.perf_counter()
            with tune_console():
                results = build_tuner(plan, parent_run_id, param_space, tune_config).fit()
            elapsed = time.perf_counter() - started_at
        finally:
            if started:
                ray.shutdown()
        done = sum(1 for r in results if r.error is None and r.metrics.get("done", False))
        left = close_unfinished_runs(plan.tracking_uri, plan.experiment, plan.path)
        finished = done == len(results) and not results.num_errors
    finally:
        end_parent_run(plan.tracking_uri, parent_run_id, finished)
    print(f"{plan.sweep.name}: {done}/{len(results)} trials finished in {elapsed:.0f} s; "
          f"MLflow experiment {plan.experiment!r} (parent run {parent_run_id}) at {plan.tracking_uri}; "
          f"Tune state at {plan.path}" + (f"; {left} unfinished run(s) marked KILLED" if left else ""))
    if not finished:
        print(f"{plan.sweep.name}: incomplete; rerun with the same arguments and --resume to finish it",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


@contextlib.contextmanager
def tune_console() -> Iterator[None]:
    """:data:`TUNE_CONSOLE_ENV` while Tune runs; a variable the user set keeps its value."""
    added = {key: value for key, value in TUNE_CONSOLE_ENV.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def sweep_signals() -> Iterator[None]:
    """Cluster schedulers stop jobs with SIGTERM; Tune saves its state and stops gracefully only on SIGINT, so
    SIGTERM is passed on as SIGINT (before Tune runs, SIGINT is a ``KeyboardInterrupt``, which :func:`main` turns
    into one line). Nothing is installed where handlers cannot be (a sweep run in a thread)."""
    with signal_handlers(lambda signum, frame: os.kill(os.getpid(), signal.SIGINT)):
        yield


def main(sweep: Sweep, argv: list[str] | None = None, connect: Callable[[str | None], bool] | None = None,
         run_sweep: Callable[[Plan, argparse.Namespace], int] | None = None) -> int:
    """The command line of every sweep script: parse and check every option (dmh.boundary), plan (every check
    before Ray), then start or join Ray and run (``run_sweep(plan, args)``, default :func:`run`). Bad input is one
    line and exit 2; an interruption before Tune runs is one line too (Tune's own, after, says what it kept)."""
    with sweep_signals():
        try:
            args = parse_args(sweep, argv)
            checked = plan(sweep, args)
            return run_sweep(checked, args) if run_sweep else run(checked, connect=connect)
        except DmhError as exc:
            print(f"{sweep.name}: error: {exc}", file=sys.stderr)
            return EXIT_BAD_ARGUMENTS
        except KeyboardInterrupt as exc:
            print(interrupted_line(sweep.name, exc, "the sweep", "no trial had started: nothing to resume, run the "
                                   "same command again"), file=sys.stderr)
            return EXIT_INCOMPLETE
