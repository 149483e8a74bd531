"""Running a planned sweep: the Tuner (new, or restored with ``--resume``), fault tolerance, the parent run that
groups the sweep's trials in MLflow, and the exit status. :func:`main` is every sweep script's command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray

from dmh.boundary import interrupted_line, signal_handlers
from dmh.errors import DmhError
from dmh.sweep.bookkeeping import close_unfinished_runs, end_parent_run, open_parent_run
from dmh.sweep.declare import Sweep, SweepError
from dmh.sweep.plan import Plan, parse_args, plan
from dmh.sweep.ray_session import check_resources, connect_ray, describe_cluster

EXIT_BAD_ARGUMENTS = 2  # nothing started (as argparse exits for an unknown option)
EXIT_INCOMPLETE = 3  # the sweep stopped before every trial finished (interrupted, or trials errored too often)


def build_tuner(plan: Plan, parent_run_id: str, param_space: dict[str, Any] | None = None,
                tune_config: Any = None) -> Any:
    """A new Tuner for ``plan``, or the restored one with ``--resume`` (only unfinished or errored trials run)."""
    # Deferred to here, once the plan is valid: importing Ray Tune (also done by the trainable's module) costs
    # seconds that a bad argument should not pay.
    from ray import tune

    from dmh.sweep.trial import trainable

    runnable = tune.with_resources(tune.with_parameters(trainable, parent_run_id=parent_run_id), plan.resources)
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
