"""The ``dmh`` command. Every subcommand checks its input before any work starts (its options against
``dmh.boundary.OPTIONS``, then what they name: files, the data, the checkpoint); bad input prints one line
``dmh: error: …`` and exits with status 2, with no traceback and no file touched. SIGINT or SIGTERM stops any
subcommand with one line saying what was kept, and exit status 128 + the signal's number."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from dmh.boundary import (
    D4RL_SAMPLE_BYTES_PER_STEP,
    GENERATED_BYTES_PER_STEP,
    Parser,
    check_memory,
    interrupted_line,
    parse,
    signal_number,
    stop_on_sigterm,
)
from dmh.errors import DmhError

log = logging.getLogger("dmh")


# ----------------------------------------------------------------------------------------------------- dmh data …
def _cmd_data_grid(args: argparse.Namespace) -> None:
    from dmh.data.cache import cached_path, load_or_build
    from dmh.data.histories import (
        GRID_NAMES,
        check_history_config,
        check_learning,
        generate_histories,
        history_config,
        summarize_learning,
    )
    from dmh.io import check_writable_output

    names = GRID_NAMES if args.env == ["all"] else args.env
    configs = [history_config(name, steps=args.steps, histories_per_task=args.histories_per_task, seed=args.seed,
                              num_tasks=args.num_tasks) for name in names]
    for cfg in configs:
        check_history_config(cfg)
    check_memory(GENERATED_BYTES_PER_STEP * args.steps, f"--steps {args.steps}")
    if args.out is not None:
        if len(configs) != 1:
            raise DmhError("--out names one file: use it with a single --env (or use --data-dir)")
        check_writable_output(args.out, args.overwrite)

    for cfg in configs:
        def build(cfg=cfg):
            dataset = generate_histories(cfg, show_progress=not args.quiet)
            check_learning(summarize_learning(dataset), cfg.min_improvement)
            return dataset

        path = args.out or cached_path(cfg.env, asdict(cfg), args.data_dir)
        dataset, built = load_or_build(path, build, rebuild=args.overwrite or args.out is not None)
        args.kept.append(str(path))
        summary = summarize_learning(dataset)
        print(f"{summary.line()}   {'wrote' if built else 'cached'} {path}", flush=True)


def _cmd_data_tmaze(args: argparse.Namespace) -> None:
    from dmh.data.cache import cached_path, load_or_build
    from dmh.data.tmaze import TMazeDataConfig, check_tmaze_config, generate_tmaze
    from dmh.io import check_writable_output

    cfg = TMazeDataConfig(memory_length=args.memory_length, active=args.active, histories=args.histories,
                          episodes_per_history=args.episodes_per_history, seed=args.seed)
    check_tmaze_config(cfg)
    steps = args.histories * args.episodes_per_history * (args.memory_length + 1)  # every episode runs L + 1 steps
    check_memory(GENERATED_BYTES_PER_STEP * steps, f"{args.histories} histories x {args.episodes_per_history} episodes "
                 f"of a T-maze of length {args.memory_length}")
    if args.out is not None:
        check_writable_output(args.out, args.overwrite)
    path = args.out or cached_path(f"tmaze-{cfg.memory_length}", asdict(cfg), args.data_dir)
    dataset, built = load_or_build(path, lambda: generate_tmaze(cfg), rebuild=args.overwrite or args.out is not None)
    returns = dataset.episode_returns
    print(f"tmaze-{cfg.memory_length}: {dataset.num_episodes} episodes, {dataset.num_steps} steps, return min "
          f"{returns.min():.3f} mean {returns.mean():.3f} max {returns.max():.3f}, optimal "
          f"{(returns >= 1 - 1e-6).mean():.0%}   {'wrote' if built else 'cached'} {path}")


def _cmd_data_d4rl_sample(args: argparse.Namespace) -> None:
    from dmh.data.d4rl import write_d4rl_sample

    check_memory(D4RL_SAMPLE_BYTES_PER_STEP * args.episodes * args.max_episode_steps,
                 f"{args.episodes} episodes of up to {args.max_episode_steps} steps")
    path = write_d4rl_sample(args.name, args.out, episodes=args.episodes, max_episode_steps=args.max_episode_steps,
                             seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {path} (D4RL HDF5 layout, {args.episodes} episodes of {args.name} rolled out in gymnasium MuJoCo)")


def _cmd_data_show(args: argparse.Namespace) -> None:
    import json

    from dmh.data.d4rl import load_dataset_file

    dataset = load_dataset_file(args.path, args.name)  # either layout, checked against its environment
    generator = dataset.metadata["generator"]
    summary = None
    if isinstance(generator, dict) and generator.get("name") == "tabular_q_learning":
        from dmh.data.histories import summarize_learning

        summary = summarize_learning(dataset)  # before printing: a failure here is one error line, not half a report
    print(json.dumps(dataset.metadata, indent=2, default=str))
    returns = dataset.episode_returns
    print(f"returns: min {returns.min():.3f} mean {returns.mean():.3f} max {returns.max():.3f}")
    if summary is not None:
        from dmh.data.histories import policy_entropy_floor

        print(summary.line())
        print(f"source learners' policy entropy ≥ {policy_entropy_floor(dataset):.3f} nats per step (ε-greedy, one "
              "greedy action): the floor of the action loss on these data")


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    from dmh.data.histories import GRID_NAMES

    data = sub.add_parser("data", help="generate or inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    data.set_defaults(doing="generating data", kept=[])  # kept: the files written so far (an interruption says so)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=0, help="generator seed")
        p.add_argument("--data-dir", type=Path, default=None, help="cache folder (default $DMH_DATA_DIR or ./data)")
        p.add_argument("--out", type=Path, default=None, help="write to this file instead of the cache")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    grid = dsub.add_parser("grid", help="Grid World learning histories (tabular Q-learning), with a learning summary")
    grid.add_argument("--env", nargs="+", default=["all"], choices=[*GRID_NAMES, "all"], metavar="ENV",
                      help=f"families: {', '.join(GRID_NAMES)} or all (default)")
    grid.add_argument("--steps", type=int, default=1_000_000, help="environment steps per family (paper: 1M)")
    grid.add_argument("--histories-per-task", type=int, default=1, help="learners (seeds) per training task")
    grid.add_argument("--num-tasks", type=int, default=60, help="training tasks used (at most 60)")
    grid.add_argument("--quiet", action="store_true", help="no progress output")
    common(grid)
    grid.set_defaults(func=_cmd_data_grid)

    tmaze = dsub.add_parser("tmaze", help="T-maze noisy-oracle episodes with a spread of returns")
    tmaze.add_argument("--memory-length", type=int, required=True, help="corridor length L")
    tmaze.add_argument("--active", action="store_true", help="active T-maze variant")
    tmaze.add_argument("--histories", type=int, default=10)
    tmaze.add_argument("--episodes-per-history", type=int, default=20)
    common(tmaze)
    tmaze.set_defaults(func=_cmd_data_tmaze)

    sample = dsub.add_parser("d4rl-sample", help="a small file in the exact D4RL HDF5 layout, from gymnasium MuJoCo")
    sample.add_argument("--name", default="hopper-medium-v2", help="D4RL dataset name, e.g. hopper-medium-v2")
    sample.add_argument("--out", type=Path, required=True)
    sample.add_argument("--episodes", type=int, default=5)
    sample.add_argument("--max-episode-steps", type=int, default=1000)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--overwrite", action="store_true")
    sample.set_defaults(func=_cmd_data_d4rl_sample)

    show = dsub.add_parser("show", help="check a dataset file (dmh or D4RL layout) against its environment and print "
                           "its metadata and returns")
    show.add_argument("path", type=Path)
    show.add_argument("--name", default=None, help="the D4RL dataset a D4RL-layout file holds, e.g. hopper-medium-v2 "
                      "(default: what the file records, or its d4rl file name)")
    show.set_defaults(func=_cmd_data_show, doing="reading a dataset")


# -------------------------------------------------------------------------------------------- dmh train / evaluate
def _cmd_train(args: argparse.Namespace) -> None:
    from dmh.tracking import check_store, default_tracking_uri
    from dmh.training.config import make_config
    from dmh.training.run import train_run

    cfg = make_config(args.algo, args.task, args.preset, seed=args.seed, config_file=args.config, sets=args.set)
    args.checkpoint = cfg.checkpoint_path  # what an interruption keeps
    check_store(default_tracking_uri())  # the store the run will use, before data or a model is built
    result = train_run(cfg, resume=args.resume or args.resume_or_start, start_if_missing=args.resume_or_start)
    curve = " ".join(f"{r:.2f}" for r in result.evaluation.curve)
    print(f"run {result.run_id}: {result.steps} updates, loss {result.final_loss:.4f}, last-episode return "
          f"{result.evaluation.last_return:.3f}\nin-context curve (mean return per episode): {curve}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    import numpy as np

    from dmh.tasks import resolve_task
    from dmh.tracking import check_store, default_tracking_uri
    from dmh.training.checkpoint import load_checkpoint
    from dmh.training.config import evaluation_counts
    from dmh.training.run import checkpoint_of_run, evaluate_checkpoint

    check_store(default_tracking_uri())  # where the checkpoint may come from and the result is logged
    path = Path(args.target)
    checkpoint = path if path.suffix == ".pt" or path.exists() else checkpoint_of_run(args.target)
    task = load_checkpoint(checkpoint)["config"]["task"]  # its held-out tasks bound --tasks
    evaluation_counts(resolve_task(task), args.tasks, args.episodes, names=("--tasks", "--episodes"))
    lasts = []
    for seed in args.seeds or [None]:
        result = evaluate_checkpoint(checkpoint, episodes=args.episodes or 0, n_tasks=args.tasks or 0, seed=seed)
        lasts.append(result.last_return)
        curve = " ".join(f"{r:.2f}" for r in result.curve)
        which = "" if seed is None else f"seed {seed}: "
        print(f"{which}last-episode return {result.last_return:.3f} over {result.returns.shape[0]} test tasks, "
              f"online {result.online_seconds:.1f} s\n{which}in-context curve: {curve}")
    if len(lasts) > 1:
        spread = np.std(lasts, ddof=1)
        print(f"{len(lasts)} evaluation seeds: last-episode return {np.mean(lasts):.3f} ± "
              f"{spread / np.sqrt(len(lasts)):.3f} (s.e.; s.d. of one evaluation {spread:.3f})")


def _add_train_parsers(sub: argparse._SubParsersAction) -> None:
    from dmh.training.config import ALGOS, EVAL_SEED_OFFSET, PRESETS

    train = sub.add_parser("train", help="train a model on a task, tracked in MLflow")
    train.set_defaults(checkpoint=None)  # the checkpoint an interruption keeps, once known
    train.add_argument("--algo", required=True, choices=ALGOS)
    train.add_argument("--task", required=True, help="darkroom … large-key-to-door, tmaze-<L>, or a D4RL name")
    train.add_argument("--preset", default="cpu", choices=list(PRESETS))
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--config", default=None, help="YAML file of settings (applied after the preset)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set c=10 --set model.d_model=64 (applied last)")
    resume = train.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue this configuration's checkpoint and MLflow run (an error if there is none)")
    resume.add_argument("--resume-or-start", action="store_true",
                        help="continue this configuration's checkpoint if there is one, else start a new run")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="online in-context evaluation of a checkpoint or an MLflow run id")
    evaluate.add_argument("target", help="checkpoint file (.pt) or MLflow run id")
    evaluate.add_argument("--episodes", type=int, default=None,
                          help="episodes per test task (default: the run's, else the paper's)")
    evaluate.add_argument("--tasks", type=int, default=None,
                          help="test tasks, at most the task's held-out ones (default: the run's, else all)")
    evaluate.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                          help="evaluation seeds, one evaluation each, not logged to the run (default: the run's own "
                               f"evaluation seed, its training seed + {EVAL_SEED_OFFSET}, logged back to the run)")
    evaluate.set_defaults(func=_cmd_evaluate)


def _cmd_report(argv: list[str]) -> int:
    """``python -m dmh.report.make_all`` under the ``dmh`` command; imported here, not at the top, because pandas and
    matplotlib would slow every other command's start."""
    from dmh.report.make_all import main as make_all

    return make_all(argv)


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    # listed for --help only: main() hands everything after "report" to dmh.report.make_all, which parses it
    sub.add_parser("report", add_help=False, help="regenerate the paper's tables and figures from MLflow runs "
                   "(dmh.report.make_all; `dmh report --help` for its options)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dmh", name="dmh", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and a traceback with an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_parser(sub)
    _add_train_parsers(sub)
    _add_report_parser(sub)
    return parser


def _interrupted(argv: list[str], args: argparse.Namespace | None) -> tuple[str, str]:
    """What an interrupted command was doing, and what it kept."""
    if argv[:1] == ["report"]:
        return "building the report", "each file it wrote is complete; its index is written last, so rerun it"
    if args is None:
        return "starting", "nothing written"
    if args.command == "train":
        if args.checkpoint is not None and args.checkpoint.exists():
            return "training", f"kept its last checkpoint {args.checkpoint}; the same command with --resume continues"
        return "training", "no checkpoint was written yet"
    if args.command == "evaluate":
        return "evaluating", "nothing logged (an evaluation is logged to its run only once complete)"
    return args.doing, "kept " + ", ".join(args.kept) if args.kept else "nothing written (a file appears only complete)"


def main(argv: list[str] | None = None) -> int:
    from dmh.tracking import RunInterrupted  # SIGINT or SIGTERM during a tracked run, which ends it KILLED

    argv = sys.argv[1:] if argv is None else argv
    args = None
    with stop_on_sigterm():
        try:
            if argv[:1] == ["report"]:  # dmh.report.make_all parses its own options
                return _cmd_report(argv[1:])
            args = parse(build_parser(), argv)
            logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                                format="%(asctime)s %(message)s", stream=sys.stderr)
            return args.func(args) or 0
        except DmhError as exc:
            if argv[:1] in (["-v"], ["--verbose"]):  # where it was raised, for whoever debugs the check itself
                traceback.print_exc()
            print(f"dmh: error: {exc}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, RunInterrupted) as exc:
            if argv[:1] in (["-v"], ["--verbose"]):
                traceback.print_exc()
            print(interrupted_line("dmh", exc, *_interrupted(argv, args)), file=sys.stderr)
            return 128 + signal_number(exc)


if __name__ == "__main__":
    sys.exit(main())
