"""The results campaigns of ``docs/results.md`` as data: every sweep each runs, one seed per sweep, all into one
store. Run a campaign again after an interruption, in the same or a later sitting: a sweep whose parent run ended
FINISHED is skipped, an interrupted one is continued with ``--resume``, the rest start in order.

    python sweeps/campaign.py [--campaign short-horizon] [--storage sweep_results/<campaign>]
                              [--results docs/results/<campaign>] [--only grid_world ...] [--dry-run]

Campaigns (``CAMPAIGNS``): ``short-horizon`` (the default: Fig. 2's short row, Fig. 4a and T-maze, every algorithm
supervised on every step of its context and evaluated on the context shapes it trained on), ``z-study`` (the
sub-goal z study that chose the ``cpu`` preset's z), ``darkroom-c`` (Fig. 4b's c on Darkroom, c/H >= 0.25: outside
the paper's claim, kept as what it is) and ``long-horizon`` (Fig. 2's long row and Fig. 4b on Large Darkroom Hard,
c/H <= 0.1, where the paper makes its claims for DM-H). Within a campaign, stages in ``first`` run to their last seed
before the rest, which then go seed by seed, so that a partial campaign holds whole seeds of every figure. The MLflow
store is ``<storage>/mlflow.db`` unless ``--tracking-uri`` says otherwise; each sweep's log is
``<storage>/<name>.log``.

``--results FOLDER`` keeps the campaign beyond its store: after every sweep, finished or interrupted, its experiment's
runs are merged into the report cache ``FOLDER/data`` (one row per trial, the latest result winning), the report is
redrawn there from the cache (with which verdicts moved against the report the campaign reruns, where it names one),
and a finished sweep is listed in ``FOLDER/data/campaign.json``. A listed sweep counts as done in any later sitting,
with a new store or none, so a campaign spans machines whose ignored folders do not survive; commit FOLDER after each
sweep. What is lost with a store is only the Tune state of an unfinished sweep: it starts again, and its runs replace
the merged ones trial by trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import IO

from dmh.boundary import Parser, parse, stop_on_sigterm
from dmh.errors import DmhError
from dmh.io import atomic_path, check_writable_dir
from dmh.sweep import EXIT_BAD_ARGUMENTS, EXIT_INCOMPLETE
from dmh.sweep.bookkeeping import parent_run
from dmh.sweep.plan import check_storage
from dmh.tracking import check_store, open_client

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the checkout: campaigns name committed reports relative to it
# The cpu preset's full training, every held-out task, and evaluations along the way (so best-during-training exists).
CPU = ("--set", "steps=3000", "--set", "eval_tasks=0", "--set", "eval_every=500", "--set", "checkpoint_every=500")
# T-maze: at 50 DT and DM-H reach return 1 within 750 updates; at 1000 one update took DT 7.8 s, DM 10.7 s, DM-H 2.3 s
# on cores shared ~2.5 ways, hours per run: so lengths 50 and 200 at 1000 updates (docs/results.md)
TMAZE = ("--lengths", "50", "200", "--set", "steps=1000", "--set", "eval_tasks=0", "--set", "eval_every=250",
         "--set", "checkpoint_every=250")
# The Large tasks' 2000-step contexts: what one update of every run of the long-horizon campaign costs, and so how
# many updates the issue's 60 trial-hours buy, is in docs/results.md ("The long-horizon campaign"); 1000 stay under
# it. Provisional: the pilot on Large Darkroom found AD (Mamba) still rising at 2000 updates, so the grid
# (c values, tasks) or the scale is to be cut to afford more updates before this campaign runs
LONG = ("--set", "steps=1000", "--set", "eval_tasks=0", "--set", "eval_every=250", "--set", "checkpoint_every=250")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One of the campaign's sweeps, run once per seed."""

    key: str  # the name --only selects, and the sweep names' stem (<key>_cpu_s<seed>)
    script: str  # the sweep script under sweeps/
    args: tuple[str, ...]  # its arguments besides seed, name, storage and store
    seeds: int  # seeds 0 … seeds-1, one sweep each
    figure: str  # what the paper shows with it (for --dry-run)


Z_STUDY = Stage("z_study", "z_study.py", ("--preset", "cpu"), 3, "the sub-goal z study, issue 13 part 2")
GRID_WORLD = Stage("grid_world", "grid_world.py", ("--preset", "cpu", *CPU), 5, "Fig. 2, short-horizon row")
SUBGOAL = Stage("subgoal", "subgoal_ablation.py", ("--preset", "cpu", *CPU), 5, "Fig. 4a")
DARKROOM_C = Stage("c", "c_sensitivity.py", ("--preset", "cpu", *CPU), 5, "Fig. 4b on Darkroom")
TMAZE_STAGE = Stage("tmaze", "tmaze.py", ("--preset", "cpu", *TMAZE), 5, "Fig. 3")
GRID_WORLD_LONG = Stage("grid_world_long", "grid_world.py", ("--preset", "cpu", "--row", "long", *LONG), 5,
                        "Fig. 2, long-horizon row")
# every block decoded, as in the other comparisons (the cpu c sweep's own default decodes about 50 steps per context)
LARGE_C = Stage("c_large", "c_sensitivity.py", ("--preset", "cpu", "--task", "large-darkroom-hard", "--set",
                                                "model.train_blocks=0", *LONG), 5, "Fig. 4b on Large Darkroom Hard")


@dataclasses.dataclass(frozen=True)
class Campaign:
    """A campaign: its stages, and those run to their last seed before the rest go seed by seed."""

    stages: tuple[Stage, ...]
    first: tuple[str, ...] = ()  # stage keys run to their last seed first
    verdicts_before: str | None = None  # a committed report (path in the checkout) whose verdicts --results' report
    # sets its own beside (tables/claims_moved.*): what this campaign reruns


CAMPAIGNS = {
    "short-horizon": Campaign((GRID_WORLD, SUBGOAL, TMAZE_STAGE), verdicts_before="docs/results/campaign"),
    "z-study": Campaign((Z_STUDY,), first=("z_study",)),
    "darkroom-c": Campaign((DARKROOM_C,)),
    "long-horizon": Campaign((GRID_WORLD_LONG, LARGE_C)),
}
DEFAULT_CAMPAIGN = "short-horizon"
STAGES = CAMPAIGNS[DEFAULT_CAMPAIGN].stages
FIRST = CAMPAIGNS[DEFAULT_CAMPAIGN].first
MANIFEST = "campaign.json"  # in --results' data/: the sweeps that finished and whose runs that cache holds


@dataclasses.dataclass(frozen=True)
class Step:
    """One sweep of the campaign: a stage at one seed."""

    stage: Stage
    seed: int

    @property
    def name(self) -> str:
        return f"{self.stage.key}_cpu_s{self.seed}"

    def argv(self, storage: str, tracking_uri: str, resume: bool) -> list[str]:
        return [sys.executable, str(HERE / self.stage.script), *self.stage.args, "--first-seed", str(self.seed),
                "--seeds", "1", "--name", self.name, "--storage", storage, "--tracking-uri", tracking_uri,
                *(["--resume"] if resume else [])]


def steps(stages: tuple[Stage, ...] = STAGES, first: tuple[str, ...] = FIRST) -> list[Step]:
    """The campaign in running order: the ``first`` stages seed by seed, then the others interleaved seed by seed."""
    early = [Step(s, k) for s in stages if s.key in first for k in range(s.seeds)]
    rest = [s for s in stages if s.key not in first]
    late = [Step(s, k) for k in range(max((s.seeds for s in rest), default=0)) for s in rest if k < s.seeds]
    return early + late


class Results:
    """The report folder a campaign keeps its runs in (``--results``): its cache (``data/``) and the manifest of the
    sweeps that finished into it."""

    def __init__(self, folder: Path, verdicts_before: Path | None = None) -> None:
        from dmh.report.export import load_export
        from dmh.report.make_all import cache_folder

        self.folder = folder
        self.data = folder / "data"
        check_writable_dir(self.data, "--results")
        if verdicts_before is not None:
            cache_folder(verdicts_before, "the campaign's earlier report")  # there, before any sweep runs
        self.verdicts_before = verdicts_before
        self.cache = load_export(self.data) if (self.data / "runs.csv").exists() else None  # a bad cache: one line
        manifest = self.data / MANIFEST
        try:
            self.finished: list[str] = json.loads(manifest.read_text())["finished"] if manifest.exists() else []
        except (ValueError, KeyError, TypeError):
            raise DmhError(f"{manifest} is not a campaign manifest ({{\"finished\": [sweep names]}})") from None

    def keep(self, step: Step, tracking_uri: str, finished: bool) -> None:
        """Merge the step's experiment from the store into the cache, redraw the report there, and list the step
        if it finished. A sweep that stopped before its experiment existed has nothing to merge."""
        from dmh.report.export import export_runs, merge_exports, save_export
        from dmh.report.make_all import build_report

        try:
            export = export_runs(tracking_uri, [sweep_name(step.stage.script)])
        except DmhError:
            return
        self.cache = export if self.cache is None else merge_exports(self.cache, export)
        save_export(self.cache, self.data)
        build_report(self.folder, None, None, from_cache=True, echo=lambda _: None,
                     verdicts_before=self.verdicts_before)
        if finished and step.name not in self.finished:
            self.finished.append(step.name)
        with atomic_path(self.data / MANIFEST) as tmp:  # last: a sweep is listed only once its runs are kept
            Path(tmp).write_text(json.dumps({"finished": self.finished}, indent=2) + "\n")


def state(step: Step, storage: str, tracking_uri: str) -> str:
    """``done`` (its parent run ended FINISHED), ``resume`` (Tune state is there) or ``start``."""
    from dmh.sweep.plan import sweep_exists  # imports Ray Tune: after the arguments are checked

    path = f"{storage.rstrip('/')}/{step.name}"
    run_id = parent_run(tracking_uri, sweep_name(step.stage.script), path)
    if run_id is not None and open_client(tracking_uri).get_run(run_id).info.status == "FINISHED":
        return "done"
    return "resume" if sweep_exists(path) else "start"


def load_script(script: str) -> ModuleType:
    """A sweep script under sweeps/ as a module (its ``SWEEP`` declaration; its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(f"campaign_{Path(script).stem}", HERE / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the script look their module up there
    spec.loader.exec_module(module)
    return module


def sweep_name(script: str) -> str:
    """The sweep's name, which is also the MLflow experiment its runs go to (the campaign passes no --experiment)."""
    return load_script(script).SWEEP.name


def run(stages: tuple[Stage, ...], storage: str, tracking_uri: str | None, dry_run: bool = False,
        first: tuple[str, ...] = FIRST, results: Path | None = None, verdicts_before: Path | None = None) -> int:
    """Run every step not yet done, in order; stop at the first sweep that does not finish (its exit code).
    ``results``: the report folder the campaign's runs are kept in (the module docstring); ``verdicts_before``: the
    report whose verdicts that folder's report sets its own beside."""
    storage = check_storage(storage)
    tracking_uri = tracking_uri or f"sqlite:///{Path(storage) / 'mlflow.db'}"
    check_store(tracking_uri)
    kept = None if results is None else Results(results, verdicts_before)
    lock = None if dry_run else (Path(storage) / "campaign.lock").open("w")  # held while this function runs
    if lock is not None:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DmhError(f"another campaign is running on {storage} (campaign.lock is held)") from None
    plan = steps(stages, first)
    for i, step in enumerate(plan, 1):
        line = f"campaign: [{i}/{len(plan)}] {step.name} ({step.stage.figure}): "
        if kept is not None and step.name in kept.finished:
            print(f"{line}done (kept in {kept.folder})", flush=True)
            continue
        now = state(step, storage, tracking_uri)
        if now == "done" and kept is not None and not dry_run:  # finished in this store before --results kept it
            kept.keep(step, tracking_uri, finished=True)
            print(f"{line}done; its runs merged into {kept.folder}", flush=True)
            continue
        if dry_run or now == "done":
            print(line + now, flush=True)
            continue
        log = Path(storage) / f"{step.name}.log"
        print(f"{line}{now}; log {log}", flush=True)
        with log.open("a") as out:
            code = run_sweep(step.argv(storage, tracking_uri, resume=now == "resume"), out)
        if kept is not None:
            kept.keep(step, tracking_uri, finished=code == 0)
        if code != 0:
            print(f"campaign: {step.name} ended with exit code {code} (see {log}); run the campaign again to "
                  "continue it", file=sys.stderr)
            return code if code in (EXIT_INCOMPLETE, EXIT_BAD_ARGUMENTS) else 1
    print(f"campaign: {'planned' if dry_run else 'done'}: {len(plan)} sweeps; MLflow store {tracking_uri}")
    return 0


def run_sweep(argv: list[str], out: IO[str]) -> int:
    """One sweep as a child process in its own session, so that it hears only this driver: SIGINT or SIGTERM here is
    passed on once, as the SIGINT on which Tune saves its state and stops (a second would make it quit at once).
    Both handlers are installed here, before the child starts: a driver started in the background (``nohup … &``)
    inherits SIGINT ignored, and would otherwise ignore it, and so would the sweep it starts."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in signals}  # both raise KeyboardInterrupt
    try:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python sweeps/campaign.py", name="campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--campaign", choices=tuple(CAMPAIGNS), default=DEFAULT_CAMPAIGN,
                        help=f"which campaign (default {DEFAULT_CAMPAIGN})")
    parser.add_argument("--storage", default=None,
                        help="Tune state, logs and the default store (default sweep_results/<campaign>)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default sqlite:///<storage>/mlflow.db)")
    parser.add_argument("--results", type=Path, default=None, metavar="FOLDER",
                        help="keep every sweep's runs in this report folder's cache and list the finished ones, so "
                             "a later sitting skips them even with a new store (e.g. docs/results/campaign)")
    parser.add_argument("--only", nargs="+", default=None, metavar="STAGE",
                        help="run only these stages of the campaign: " + "; ".join(
                            f"{name}: {', '.join(s.key for s in c.stages)}" for name, c in CAMPAIGNS.items()))
    parser.add_argument("--dry-run", action="store_true", help="say what each sweep's state is, run nothing")
    return parser


def main(argv: list[str] | None = None, stages: tuple[Stage, ...] | None = None) -> int:
    with stop_on_sigterm():
        try:
            args = parse(build_parser(), argv)
            chosen = CAMPAIGNS[args.campaign]
            stages = chosen.stages if stages is None else stages
            if args.only is not None:
                unknown = sorted(set(args.only) - {s.key for s in stages})
                if unknown:
                    raise DmhError(f"--only: unknown stage(s) {', '.join(unknown)}; valid: "
                                   f"{', '.join(s.key for s in stages)}")
                stages = tuple(s for s in stages if s.key in args.only)
            before = ROOT / chosen.verdicts_before if chosen.verdicts_before else None
            return run(stages, args.storage or f"sweep_results/{args.campaign}", args.tracking_uri, args.dry_run,
                       first=chosen.first, results=args.results, verdicts_before=before)
        except DmhError as exc:
            print(f"campaign: error: {exc}", file=sys.stderr)
            return EXIT_BAD_ARGUMENTS
        except KeyboardInterrupt:
            print("campaign: interrupted between sweeps; run it again to continue", file=sys.stderr)
            return EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
