"""Hyper-parameter search for any algo and task: Optuna proposes settings (``OptunaSearch``), ASHA stops the trials
that trail at each checkpoint (``ASHAScheduler``). Every trial is one ``dmh train`` run and one MLflow run, as in the
grid sweeps.

    python sweeps/tune.py --algo dmh --task darkroom [--preset smoke|cpu|paper] [--num-samples 20]
                          [--metric train/loss|eval/last_return] [--resume] [--storage PATH]

Searched: lr (log-uniform), batch_size, model.d_model and, for DM-H, c (values that fit the task's episode).
``--metric eval/last_return`` evaluates every checkpoint online so ASHA and Optuna see the return while training
(slower); ``train/loss`` (the default) costs nothing extra. Trials ASHA stops end KILLED in MLflow with
``status_detail=stopped``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dmh.sweep import Plan, Sweep, Trial, run, short_trial_dirname
from dmh.sweep import main as sweep_main
from dmh.tasks import PAPER_C, resolve_task
from dmh.training.config import ALGOS
from dmh.vocabulary import Metric

METRICS = {Metric.TRAIN_LOSS: "min", Metric.LAST_RETURN: "max"}
NUM_SAMPLES = {"smoke": 3, "cpu": 8, "paper": 50}  # trials per search without --num-samples
# The search space per preset: sizes a preset's machine can afford around its defaults.
SPACE = {
    "smoke": dict(batch_size=[2, 4], d_model=[8, 16], lr=(1e-4, 1e-2)),
    "cpu": dict(batch_size=[8, 16, 32], d_model=[32, 64], lr=(1e-4, 3e-3)),
    "paper": dict(batch_size=[64, 128, 256], d_model=[64, 128, 256], lr=(3e-5, 1e-3)),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", required=True, choices=ALGOS)
    parser.add_argument("--task", required=True, help="darkroom … large-key-to-door, tmaze-<L> or a D4RL name")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every trial")
    parser.add_argument("--num-samples", type=int, default=None,
                        help=f"trials (default: {', '.join(f'{k} {v}' for k, v in NUM_SAMPLES.items())})")
    parser.add_argument("--metric", default=Metric.TRAIN_LOSS, choices=list(METRICS),
                        help="what Optuna optimises and ASHA compares at each checkpoint")


def base_trial(args: argparse.Namespace) -> list[Trial]:
    """The fixed part of every trial; validating it checks --algo, --task and --set before Ray starts."""
    return [Trial(args.algo, args.task, args.seed)]


SWEEP = Sweep(name="tune", description=__doc__.splitlines()[0], grid=base_trial, add_arguments=add_arguments,
              # cpu: ASHA rungs at 100, 200 and 400 updates; eight samples fit in 15 minutes on 2 CPUs
              preset_settings={"cpu": {"steps": 600, "checkpoint_every": 100, "eval_tasks": 8}},
              default_name=lambda args: f"tune_{args.algo}_{args.task}_{args.preset}")  # one folder per search


def search_space(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """The Tune param space: the validated base trial with Tune's samplers in the searched config fields."""
    # Ray Tune is imported only once the plan is valid (here and in tune_config): a bad argument should not pay the
    # seconds that importing it costs.
    from ray import tune

    space = SPACE[args.preset]
    searched = {"batch_size": tune.choice(space["batch_size"]), "lr": tune.loguniform(*space["lr"]),
                "model.d_model": tune.choice(space["d_model"])}
    if args.algo == "dmh":
        horizon = resolve_task(args.task).horizon
        searched["c"] = tune.choice([c for c in PAPER_C if c <= horizon])
    # the sampled settings join the base trial's own, and the trial resolves its run from them (make_config): c
    # changes the model config it builds
    return {"trial": {**base, "searched": searched, "evaluate_checkpoints": args.metric == Metric.LAST_RETURN}}


def tune_config(args: argparse.Namespace, checked: Plan) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    base = checked.trials[0]["config"]
    mode = METRICS[args.metric]
    # Metric and mode go to the searcher and the scheduler, not to TuneConfig, which would hand them to both again.
    return tune.TuneConfig(
        search_alg=OptunaSearch(metric=args.metric, mode=mode, seed=args.seed),
        # max_t one past the last update: at max_t ASHA stops a trial, which would cut off its final evaluation
        scheduler=ASHAScheduler(time_attr="step", metric=args.metric, mode=mode, max_t=base["steps"] + 1,
                                grace_period=min(base["checkpoint_every"], base["steps"]), reduction_factor=2),
        num_samples=args.num_samples or NUM_SAMPLES[args.preset], max_concurrent_trials=checked.max_concurrent or None,
        trial_dirname_creator=short_trial_dirname,
    )


def search(checked: Plan, args: argparse.Namespace) -> int:
    """Run the planned search (a restored one as Tune saved it)."""
    if checked.resume:
        return run(checked)
    return run(checked, search_space(args, checked.trials[0]), tune_config(args, checked))


def main(argv: list[str] | None = None) -> int:
    return sweep_main(SWEEP, argv, run_sweep=search)


if __name__ == "__main__":
    sys.exit(main())
