"""Every option of every command at the boundary (issue 31), the cases generated from the argument parsers: each
numeric option at 0, -1, a huge value and a non-number, each path option at a path under a regular file, each plain
name at a path. The command either runs (where the value is legal: it reaches its work, stubbed here) or exits 2
with one line ``<command>: error: …``, within a time bound, touching no existing file. An option missing from
``dmh.boundary.OPTIONS`` fails here, so a new option is covered without editing this file.

Most cases call the commands in-process; a few representative ones run the real command line in a subprocess.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dmh.boundary import Integer, PathRule, PlainName, Real, checked_actions, rule_for

REPO = Path(__file__).resolve().parent.parent
SWEEP_SCRIPTS = ("c_sensitivity", "d4rl", "grid_world", "subgoal_ablation", "tmaze", "z_study")
HUGE = {int: "1000000000000", float: "1e12"}
IN_PROCESS_SECONDS = 30  # what "at once" means here, on two busy cores; no case may wait on a resource
SUBPROCESS_SECONDS = 120  # the same with an interpreter start, imports, and for a sweep Ray's own start


class ReachedWork(Exception):  # noqa: N818  (not an error: the command got past its checks)
    """Raised by the stubbed work of a command: its input was accepted."""


def reached_work(*args, **kwargs):
    raise ReachedWork


@dataclasses.dataclass(frozen=True)
class Command:
    """One command as the cases call it: its parser, the argv it runs with, and how it is called."""

    name: str  # how its error lines start
    parser: Callable[[], argparse.ArgumentParser]  # the parser whose options are covered
    base: tuple[str, ...]  # a valid argv ({tmp}, {dataset}, {checkpoint} filled in); options are set over it
    call: Callable[[list[str]], int]


def dmh_main(argv):
    from dmh.cli import main

    return main(argv)


def dmh_leaf(*path: str) -> Callable[[], argparse.ArgumentParser]:
    def parser():
        from dmh.cli import build_parser

        found = build_parser()
        for name in path:
            found = next(a for a in found._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        return found
    return parser


def sweep_command(script: str) -> Command:
    from dmh.sweep import build_parser, tuner

    module = importlib.import_module(f"sweeps.{script}")
    if script == "tune":
        return Command("tune", lambda: build_parser(module.SWEEP), ("--algo", "dmh", "--task", "darkroom",
                                                                    "--preset", "smoke"), module.main)
    return Command(module.SWEEP.name, lambda: build_parser(module.SWEEP), ("--preset", "smoke"),
                   lambda argv: tuner.main(module.SWEEP, argv))


def report_parser():
    from dmh.report.make_all import build_parser

    return build_parser()


def campaign_main(argv):
    from sweeps import campaign

    return campaign.main(argv)


def campaign_parser():
    from sweeps import campaign

    return campaign.build_parser()


COMMANDS = [
    Command("dmh", dmh_leaf("data", "grid"), ("data", "grid", "--env", "darkroom", "--num-tasks", "2", "--steps",
                                              "2400", "--data-dir", "{tmp}/data"), dmh_main),
    Command("dmh", dmh_leaf("data", "tmaze"), ("data", "tmaze", "--memory-length", "5", "--data-dir", "{tmp}/data"),
            dmh_main),
    Command("dmh", dmh_leaf("data", "d4rl-sample"), ("data", "d4rl-sample", "--out", "{tmp}/new.h5"), dmh_main),
    Command("dmh", dmh_leaf("data", "show"), ("data", "show", "{dataset}"), dmh_main),
    Command("dmh", dmh_leaf("train"), ("train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke"), dmh_main),
    Command("dmh", dmh_leaf("evaluate"), ("evaluate", "{checkpoint}"), dmh_main),
    Command("report", report_parser, ("report", "--out", "{tmp}/report"), dmh_main),
    *(sweep_command(script) for script in (*SWEEP_SCRIPTS, "tune")),
    Command("campaign", campaign_parser, ("--storage", "{tmp}/campaign", "--only", "tmaze"), campaign_main),
]
# Where each command's work starts (stubbed: reaching it means the input was accepted).
WORK = ["dmh.data.histories.generate_histories", "dmh.data.tmaze.generate_tmaze",
        "dmh.data.d4rl.rollout_random_policy", "dmh.training.run.Trainer", "dmh.training.run.evaluate_online",
        "dmh.report.make_all.build_report", "dmh.sweep.tuner.open_parent_run", "sweeps.campaign.run_sweep"]


def option_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def value_type(action: argparse.Action) -> type | None:
    return action.type if action.type in (int, float) else None


def cases() -> list[pytest.param]:
    """(command, option, value, must refuse) for every option of every command that takes a number, a path or a
    plain name."""
    found = []
    for command in COMMANDS:
        parser = command.parser()
        for owner, action in checked_actions(parser):
            rule = rule_for(owner.prog, action)  # a TypeError here: an option missing from dmh.boundary.OPTIONS
            name = option_name(action)
            kind = value_type(action)
            values = []
            if kind is not None:
                for text in ("0", "-1", HUGE[kind]):
                    refused = isinstance(rule, Integer | Real) and refuses(rule, name, kind(float(text)))
                    values.append((text, refused))
                values.append(("x", True))
            if isinstance(rule, PathRule):
                values.append(("sqlite:///{file}/under/mlflow.db" if name == "--tracking-uri" else "{file}/under/x.pt"
                               if name == "target" else "{file}/under/x", True))
            if isinstance(rule, PlainName):
                values.append(("../escape", True))
            found += [pytest.param(command, name, action, text, refused, id=f"{owner.prog} {name}={text}")
                      for text, refused in values]
    return found


def refuses(rule, name, value) -> bool:
    try:
        rule.check(name, value)
    except Exception:
        return True
    return False


def with_option(command: Command, action: argparse.Action, value: str, fill: dict[str, str]) -> list[str]:
    """The command's base argv with ``action`` set to ``value``."""
    argv = [part.format(**fill) for part in command.base]
    value = value.format(**fill)
    if not action.option_strings:  # a positional: the base's own value is replaced
        positional = next(i for i, part in enumerate(command.base) if part.startswith("{") and
                          part.strip("{}") in ("dataset", "checkpoint"))
        argv[positional] = value
        return argv
    for flag in action.option_strings:
        if flag in argv:
            i = argv.index(flag)
            end = i + 1
            while end < len(argv) and not argv[end].startswith("--"):
                end += 1
            return [*argv[:i], flag, value, *argv[end:]]
    return [*argv, max(action.option_strings, key=len), value]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What the commands read (a dataset, a checkpoint, an MLflow store) and a regular file to put paths under."""
    from dmh.cli import main
    from dmh.tracking import open_client
    from dmh.training.config import make_config
    from dmh.training.train import Trainer

    tmp = tmp_path_factory.mktemp("command-line")
    previous = Path.cwd()
    os.chdir(tmp)
    try:
        (tmp / "a-file").write_text("a regular file\n")
        assert main(["data", "tmaze", "--memory-length", "5", "--out", str(tmp / "dataset.h5")]) == 0
        cfg = make_config("dmh", "darkroom", "smoke", sets=[f"data_dir={tmp / 'data'}", "run_dir=checkpoints"])
        trainer = Trainer(cfg)
        trainer.save()
        checkpoint = trainer.checkpoint_path.resolve()
        open_client(f"sqlite:///{tmp / 'mlflow.db'}")
    finally:
        os.chdir(previous)
    return {"tmp": str(tmp), "file": str(tmp / "a-file"), "dataset": str(tmp / "dataset.h5"),
            "checkpoint": str(checkpoint)}


def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def stubbed(world, monkeypatch):
    """The cases' folder and environment, every command's work stubbed, and no Ray: a sweep sees a cluster like
    this machine (2 CPUs, no GPU, no autoscaler)."""
    from dmh.sweep import ray_session, tuner

    monkeypatch.chdir(world["tmp"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{world['tmp']}/mlflow.db")
    monkeypatch.setenv("DMH_DATA_DIR", f"{world['tmp']}/data")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if str(REPO) not in sys.path:
        monkeypatch.syspath_prepend(str(REPO))
    for target in WORK:
        module, _, name = target.rpartition(".")
        monkeypatch.setattr(importlib.import_module(module), name, reached_work)
    monkeypatch.setattr(tuner, "connect_ray", lambda address: False)
    machine = ray_session.Cluster(nodes=({"CPU": 2.0, "memory": 8.0 * 2**30},), autoscaling=False,
                                  where="started in this process")
    monkeypatch.setattr(tuner, "describe_cluster", lambda started: machine)
    return world


@pytest.mark.parametrize(("command", "name", "action", "value", "refused"), cases())
def test_every_option_is_refused_in_one_line_or_runs_at_once_touching_no_existing_file(
        stubbed, capsys, command, name, action, value, refused):
    argv = with_option(command, action, value, stubbed)
    before = snapshot(Path(stubbed["tmp"]))
    started = time.monotonic()
    try:
        code = command.call(argv)
    except ReachedWork:
        code = None
    except SystemExit as exc:  # argparse
        code = exc.code
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert elapsed < IN_PROCESS_SECONDS, f"{argv}: {elapsed:.0f} s"
    assert code in (None, 0, 2), (argv, code, err[-2000:])
    if code == 2:
        assert err.count("\n") == 1 and err.startswith(f"{command.name}: error: "), (argv, err[-2000:])
    assert not (refused and code != 2), f"{argv} was accepted: {out[-500:]}{err[-500:]}"
    assert {p: s for p, s in snapshot(Path(stubbed["tmp"])).items() if p in before} == before


def test_every_option_of_every_command_has_a_rule():
    for command in COMMANDS:
        for owner, action in checked_actions(command.parser()):
            rule_for(owner.prog, action)  # a TypeError for an option missing from dmh.boundary.OPTIONS


# ------------------------------------------------------------------------------- the real command line, end to end
def run_command(argv, cwd, env=None):
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_SECONDS,
                          env={**os.environ, **(env or {})})
    return done, time.monotonic() - started


@pytest.mark.parametrize(("argv", "message"), [
    (["evaluate", "{checkpoint}", "--episodes", "-3"], "dmh: error: --episodes must be a positive integer, got -3"),
    (["report", "--out", "{file}"], "report: error: --out {file} is a file, not a folder"),
    (["train", "--algo", "ad-mamba", "--task", "darkroom", "--preset", "smoke", "--set", "n_context=100000"],
     "dmh: error: n_context=100000 is more episodes than a learning history of darkroom holds (25 with "
     "data_steps=30000)"),
])
def test_the_dmh_command_refuses_bad_input_in_one_line_and_exit_2(world, tmp_path, argv, message):
    argv = [part.format(**world) for part in argv]
    done, _ = run_command([sys.executable, "-m", "dmh.cli", *argv], tmp_path)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(message.format(**world)), done.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_sweep_asking_per_trial_for_what_no_node_has_stops_at_once_in_one_line(tmp_path):
    """Ray in-process has no autoscaler: nothing could ever add a GPU to this machine (nor 999 CPUs)."""
    import torch

    asking = ["--gpus-per-trial", "1"] if not torch.cuda.is_available() else ["--cpus-per-trial", "999"]
    done, _ = run_command([sys.executable, str(REPO / "sweeps" / "c_sensitivity.py"), "--preset", "smoke",
                                 "--ray-address", "local", *asking], tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert done.stderr.startswith("c_sensitivity: error: every trial asks for "), done.stderr
    assert "no node of the Ray cluster started in this process (which has no autoscaler" in done.stderr
    assert f"lower {asking[0]}" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no parent run was opened

