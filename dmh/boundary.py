"""The command line's boundary: what every option of every command may hold (``OPTIONS``, one table, as
``FIELD_BOUNDS`` is for settings), checked right after parsing and before any work; and how a command stops when
interrupted.

Every command (``dmh …``, ``dmh report``, each sweep script, the campaign) parses with :func:`parse`: argparse's own
errors (an unknown option, a non-number, a bad choice) and the table's checks are one line
``<command>: error: …`` and exit status 2. What depends on what exists is checked where that is known: this
machine's memory (:func:`check_memory`, by the data commands and the settings), the held-out tasks of a task
(``dmh.training.config.evaluation_counts``), a Ray cluster's nodes (``dmh.sweep.ray_session.check_resources``).
``tests/test_command_line.py`` runs every option of every command through this, the cases generated from the parsers,
and fails for an option missing here.

SIGINT and SIGTERM stop a long command with one line saying what was interrupted and what was kept
(:func:`stop_on_sigterm`, :func:`interrupted_line`); files are written atomically (``dmh.io``), so none that looks
complete is left half-written.

This module imports only ``dmh.errors`` and ``dmh.io``: every layer may use it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmh.errors import DmhError
from dmh.io import check_writable_dir

EXIT_BAD_INPUT = 2  # as argparse exits for an unknown option: nothing was started


class Parser(argparse.ArgumentParser):
    """argparse under the project's rule for bad input: one line ``<name>: error: …``, exit 2, no usage block.
    ``name`` is how every error line of the command starts (its subcommands' too): ``dmh``, ``c_sensitivity``."""

    def __init__(self, *args: Any, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name or self.prog

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        kwargs.setdefault("parser_class", functools.partial(Parser, name=self.name))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse's signature; it never returns
        self.exit(EXIT_BAD_INPUT, f"{self.name}: error: {message}\n")


# ------------------------------------------------------------------------------------------------------ the rules
class Rule:
    """What one option may hold; ``check`` raises a one-line ``DmhError`` naming the option otherwise."""

    def check(self, option: str, value: Any) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Given(Rule):
    """Checked by argparse itself (a flag, ``choices``) or, where it says, by the command before any work."""

    by: str = "argparse"

    def check(self, option: str, value: Any) -> None:
        pass


@dataclass(frozen=True)
class Integer(Rule):
    """A whole number in [low, high) (high None: no upper bound), or a list of them (``nargs``)."""

    low: int = 1
    high: int | None = None
    high_words: str = ""  # how a message names ``high``: "2**32"
    noun: str = ""  # a list option's values, for its message: "--c: every c must be a positive integer"

    def holds(self, value: Any) -> bool:
        return value >= self.low and (self.high is None or value < self.high)

    def words(self, value: Any, plural: bool = False) -> str:
        """The bound ``value`` breaks: "a positive integer", "non-negative integers", "an integer below 2**32"."""
        a, s = ("", "s") if plural else ("a ", "")
        if value >= self.low and self.high_words:
            return f"{'' if plural else 'an '}integer{s} below {self.high_words}"
        if value >= self.low:
            return f"{'' if plural else 'an '}integer{s} of at most {self.high - 1}"
        if self.low == 1:
            return f"{a}positive integer{s}"
        if self.low == 0:
            return f"{a}non-negative integer{s}"
        return f"{'' if plural else 'an '}integer{s} of at least {self.low}"

    def check(self, option: str, value: Any) -> None:
        if not isinstance(value, list):
            if not self.holds(value):
                raise DmhError(f"{option} must be {self.words(value)}, got {value}")
            return
        bad = [v for v in value if not self.holds(v)]
        if bad and self.noun:
            raise DmhError(f"{option}: every {self.noun} must be {self.words(bad[0])}, got {bad}")
        if bad:
            raise DmhError(f"{option} must be {self.words(bad[0], plural=True)}, got {' '.join(map(str, value))}")


@dataclass(frozen=True)
class Real(Rule):
    """A finite number above ``low`` (or at ``low``, unless ``open_low``)."""

    low: float = 0.0
    open_low: bool = True

    def check(self, option: str, value: Any) -> None:
        above = value > self.low if self.open_low else value >= self.low
        if not (math.isfinite(value) and above):
            words = ("positive" if self.open_low else "non-negative") if self.low == 0 else f"at least {self.low:g}"
            raise DmhError(f"{option} must be a {words} number, got {value}")


@dataclass(frozen=True)
class PlainName(Rule):
    """A name that cannot become a path: letters, digits, '.', '_', '-', not starting with '.' or '-'."""

    def check(self, option: str, value: Any) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", value):
            raise DmhError(f"{option} must be a plain name (letters, digits, '.', '_', '-'; no '/', not starting "
                           f"with '.' or '-'), got {value!r}")


@dataclass(frozen=True)
class Text(Rule):
    """Free text on one line, not empty (an MLflow experiment, a Ray address), or a list of such."""

    def check(self, option: str, value: Any) -> None:
        for text in value if isinstance(value, list) else [value]:
            if not text.strip() or not text.isprintable():
                raise DmhError(f"{option} must be non-empty text on one line, got {text!r}")


class PathRule(Rule):
    """An option naming a file or folder: a path under a regular file, or one that cannot be written where the
    command writes, is refused before any work."""


@dataclass(frozen=True)
class Output(PathRule):
    """A file (``folder`` False) or folder the command writes: it must not be the other kind, and the nearest folder
    that exists on its way takes a probe file (written and removed: permission bits say nothing for root, and a
    read-only mount or a full disk show only when written)."""

    folder: bool = False

    def check(self, option: str, value: Any) -> None:
        path = Path(value)
        if path.exists() and path.is_dir() != self.folder:
            raise DmhError(f"{option} {path} is a {'file' if self.folder else 'folder'}, not a "
                           f"{'folder' if self.folder else 'file'}")
        check_writable_dir(path if self.folder else path.absolute().parent, option)


@dataclass(frozen=True)
class Input(PathRule):
    """An existing file (``folder`` False) or folder the command reads."""

    folder: bool = False
    what: str = ""  # how messages name it ("config file"; default: the option)

    def check(self, option: str, value: Any) -> None:
        if not isinstance(value, str | os.PathLike):  # e.g. --from-cache given without a folder (True)
            return
        path = Path(value)
        if not path.exists():
            raise DmhError(f"{self.what or option} {path} does not exist")
        if path.is_dir() != self.folder:
            raise DmhError(f"{self.what or option} {path} is not a {'folder' if self.folder else 'file'}")


@dataclass(frozen=True)
class CheckedPath(PathRule):
    """A path (or URI) that the command checks itself before any work, with the function ``by`` names (it may be
    remote, or need the command's other options)."""

    by: str

    def check(self, option: str, value: Any) -> None:
        pass


FLAG = Given()
CHOICE = Given()
SEED = Integer(0, 2**32, high_words="2**32")  # what numpy and torch accept as a seed (FIELD_BOUNDS' SEED)
COUNT = Integer(1)
MAX_SWEEP_SEEDS = 1000  # more seeds than this in one sweep is a mistake (the paper runs 10): a grid is built at once
# Every option of every command, by its name (a positional argument by its dest). An option means one thing in
# every command, except where PER_COMMAND says otherwise.
OPTIONS: dict[str, Rule] = {
    # dmh
    "--verbose": FLAG,
    # dmh data grid | tmaze | d4rl-sample | show
    "--env": CHOICE,
    "--steps": COUNT,  # and what memory holds (dmh.cli)
    "--histories-per-task": COUNT,
    "--num-tasks": COUNT,  # and at most the family's training tasks (check_history_config)
    "--quiet": FLAG,
    "--seed": SEED,
    "--data-dir": Output(folder=True),
    "--out": Output(),  # a file, or dmh report's folder (PER_COMMAND)
    "--overwrite": FLAG,
    "--memory-length": Given("dmh.envs.tmaze.check_memory_length: a positive integer"),
    "--active": FLAG,
    "--histories": COUNT,
    "--episodes-per-history": COUNT,
    "--name": PlainName(),  # a D4RL dataset name, or a sweep's folder under --storage
    "--episodes": COUNT,  # and what memory holds (dmh.cli)
    "--max-episode-steps": COUNT,  # and at most D4RL's episode length (write_d4rl_sample)
    "path": CheckedPath("dmh.io.open_hdf5: an existing dataset file"),
    # dmh train | evaluate
    "--algo": CHOICE,
    "--task": Given("dmh.tasks.resolve_task"),
    "--preset": CHOICE,
    "--config": Input(what="config file"),
    "--set": Given("dmh.training.config.make_config: every setting by FIELD_BOUNDS, and against the data"),
    "--resume": FLAG,
    "--resume-or-start": FLAG,
    "target": CheckedPath("dmh.training.checkpoint.load_checkpoint, or an MLflow run id"),
    "--tasks": COUNT,  # and at most the task's held-out tasks (dmh.cli)
    # dmh report
    "--tracking-uri": CheckedPath("dmh.tracking.check_store"),
    "--experiments": Text(),
    "--from-cache": CheckedPath("dmh.report.make_all.cache_folder: a report folder, or its data/, with runs.csv"),
    "--verdicts-before": CheckedPath("dmh.report.make_all.cache_folder: a report folder, or its data/, with runs.csv"),
    # every sweep script
    "--seeds": Integer(1, MAX_SWEEP_SEEDS + 1),  # per cell; dmh evaluate's are seeds (PER_COMMAND)
    "--first-seed": SEED,  # and --first-seed + --seeds within SEED (dmh.sweep.plan)
    "--storage": CheckedPath("dmh.sweep.plan.check_storage: a local folder or a URI, created and probed"),
    "--experiment": Text(),
    "--cells": Given("dmh.sweep.plan.select_cells: KEY=VALUE[,VALUE] naming the grid's cells"),
    "--ray-address": Given("dmh.sweep.ray_session.connect_ray: reachable before Ray joins it"),
    "--cpus-per-trial": Real(0.0),  # and what the Ray cluster's nodes have (dmh.sweep.ray_session)
    "--gpus-per-trial": Real(0.0, open_low=False),  # idem
    "--memory-per-trial": Real(0.0, open_low=False),  # idem
    "--max-concurrent": Integer(0),
    "--max-failures": Integer(0),
    "--d4rl-dir": Input(folder=True),
    "--c": Integer(1, noun="c"),
    "--lengths": Integer(1, noun="memory length"),
    "--z": CHOICE,
    "--row": CHOICE,
    "--z-dim": Integer(1, noun="z size"),
    "--num-samples": COUNT,
    "--metric": CHOICE,
    # the campaign
    "--campaign": CHOICE,
    "--results": Output(folder=True),
    "--only": Given("sweeps/campaign.py: its stages"),
    "--dry-run": FLAG,
}
PER_COMMAND: dict[tuple[str, str], Rule] = {
    ("dmh train", "--seed"): Given("dmh.training.config.make_config: FIELD_BOUNDS' seed"),
    ("dmh evaluate", "--seeds"): SEED,
    ("dmh report", "--out"): Output(folder=True),
}


def rule_for(prog: str, action: argparse.Action) -> Rule:
    """The rule of one parsed option of the command ``prog`` (a parser's prog: ``dmh evaluate``)."""
    name = max(action.option_strings, key=len) if action.option_strings else action.dest
    rule = PER_COMMAND.get((prog, name)) or OPTIONS.get(name)
    if rule is None:
        raise TypeError(f"{prog} {name}: no rule in dmh.boundary.OPTIONS")  # a programming error, caught by the tests
    return rule


def checked_actions(parser: argparse.ArgumentParser, args: argparse.Namespace | None = None,
                    ) -> Iterator[tuple[argparse.ArgumentParser, argparse.Action]]:
    """Every option of ``parser`` with the parser it belongs to; with ``args``, through the subcommands chosen,
    without, through every subcommand. Help is left out (it takes no value)."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.values() if args is None else [action.choices[getattr(args, action.dest)]]
            for sub in dict.fromkeys(chosen):  # aliases name one parser twice
                yield from checked_actions(sub, args)
            continue
        yield parser, action


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every value ``args`` holds against its rule (defaults included; None is "not given")."""
    for owner, action in checked_actions(parser, args):
        rule = rule_for(owner.prog, action)
        value = getattr(args, action.dest, None)
        if value is not None and value is not False:
            rule.check(max(action.option_strings, key=len) if action.option_strings else action.dest, value)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``argv`` parsed and checked: argparse's errors exit 2 in one line (:class:`Parser`), the table's raise a
    ``DmhError`` for the command to print."""
    args = parser.parse_args(argv)
    check_options(parser, args)
    return args


# ---------------------------------------------------------------------------------- what exists, checked at once
# Memory per environment step while dmh generates data (Grid World histories, T-maze episodes: its buffers and the
# dataset they become exist together for a moment) and while ``dmh data d4rl-sample`` rolls out (float64
# observations, next observations, actions, qpos, qvel), rounded up: what check_memory compares a size with.
GENERATED_BYTES_PER_STEP = 48
D4RL_SAMPLE_BYTES_PER_STEP = 512


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(nbytes: float, what: str) -> None:
    """Refuse at once what could never fit in this machine's memory (it would fail with a MemoryError, or swap,
    after the work it needs)."""
    total = memory_bytes()
    if nbytes > total:
        raise DmhError(f"{what} needs about {nbytes / 2**30:,.0f} GiB of memory; this machine has "
                       f"{total / 2**30:,.0f} GiB")


# ---------------------------------------------------------------------------------------------------- interruption
class Interrupted(KeyboardInterrupt):
    """SIGTERM while a command runs, raised where the command is, as SIGINT raises ``KeyboardInterrupt``: ``finally``
    blocks run (an atomic write removes its temporary file) and the command's ``main`` says what was kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signal_handlers(on_sigterm: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGTERM calls ``on_sigterm`` and SIGINT raises Python's own ``KeyboardInterrupt`` while the block runs (a
    command started in the background, ``nohup … &``, inherits SIGINT ignored); the previous handlers come back
    after. Nothing is installed where handlers cannot be (a command run in a test's thread)."""
    try:
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_sigterm),
                    signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` in the main thread while the block runs (by default it would end the
    process at once, leaving temporary files and no word of what was kept); the previous handler comes back after.
    SIGINT is set back to Python's own ``KeyboardInterrupt`` too: a command started in the background (``nohup …
    &``) inherits it ignored."""
    def on_sigterm(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    with signal_handlers(on_sigterm):
        yield


def signal_number(exc: BaseException) -> int:
    """Which signal stopped a command: :class:`Interrupted` and ``dmh.tracking.RunInterrupted`` say; a bare
    ``KeyboardInterrupt`` is SIGINT."""
    return getattr(exc, "signum", signal.SIGINT)


def interrupted_line(name: str, exc: BaseException, what: str, kept: str) -> str:
    """``dmh: interrupted by SIGINT: generating data stopped; kept …``."""
    return f"{name}: interrupted by {signal.Signals(signal_number(exc)).name}: {what} stopped; {kept}"
