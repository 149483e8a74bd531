"""Sweep: what the project's Ray Tune sweep machinery costs around its trials. One real smoke sweep,
`sweeps/c_sensitivity.py --preset smoke` (DM-H on Darkroom Hard, c in {1, 5}, `--seeds` seeds each, one CPU per
trial), runs as a subprocess from the repository root with Ray in-process on 127.0.0.1 (`--ray-address local`), its
Tune storage and MLflow store (sqlite) in a temporary folder that is deleted afterwards. The dataset cache is the
usual one ($DMH_DATA_DIR or ./data): the very first run's trials also generate the Darkroom Hard histories.

- Wall seconds: from starting the subprocess to the exit of the last process below it (Python and imports, Ray's
  start and shutdown, the MLflow parent run and bookkeeping, the trials).
- CPU seconds: user + system time of the subprocess and every process below it, each read from /proc/PID/stat
  every 0.2 s (its last reading counts). Not `getrusage(RUSAGE_CHILDREN)`: Ray's raylet ignores SIGCHLD, so its
  workers (where the trials run) are reaped without their times being passed up. This process is a child subreaper
  for the sweep (Linux `prctl`): processes that outlive their parent, such as Ray workers after the driver exits,
  are reparented here, and it reads their final times as zombies before reaping them (exact for those); a process
  reaped by another parent may lose up to 0.2 s of CPU after its last reading. The readings cost this process about
  2% of a core (not counted). Left-over processes are killed `reap_s` after the script exits. CPU utilisation =
  CPU seconds / (wall seconds x the cores this process may use).
- Trial seconds: each trial's `time_total_s` in its Tune result file (`<storage>/<run>/trial_*/result.json`, last
  line): the time Tune measured inside the trainable (dataset loading, MLflow run, training, evaluation).
- Seconds per trial outside trials: (wall x concurrency - sum of trial seconds) / trials, with concurrency =
  min(trials, cores) (one CPU per trial, `--max-concurrent` cores): the slot-seconds of the sweep not spent inside
  a trial, per trial (start-up, scheduling, worker start, checkpoint syncing, shutdown).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO_ROOT, Measure, Row, format_table, number, row

PART = "sweep"
SCRIPT = "sweeps/c_sensitivity.py"
MODEL = "c_sensitivity --preset smoke"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
TICKS = os.sysconf("SC_CLK_TCK")  # the unit of the CPU times in /proc/PID/stat
SAMPLE_S = 0.2  # how often the sweep's processes are read
LABELS = {Measure.SWEEP_WALL_S: "sweep wall time", Measure.TRIALS: "trials", Measure.TRIAL_S: "time inside trials",
          Measure.SCHEDULING_S_PER_TRIAL: "outside trials, per trial", Measure.CPU_S: "CPU time",
          Measure.CPU_UTILISATION: "CPU utilisation"}


@dataclass(frozen=True)
class SweepSettings:
    """What the sweep part runs."""

    seeds: int  # seeds per cell of the smoke grid (two cells: c = 1 and 5), so 2 x seeds trials
    timeout_s: float = 600.0  # the sweep's limit: then its processes are killed
    reap_s: float = 30.0  # how long processes that outlive the sweep's script may take to exit before being killed


QUICK = SweepSettings(seeds=1)
FULL = SweepSettings(seeds=3)


def own_cpu(pid: int) -> tuple[str, float] | None:
    """(state, user + system seconds of the process itself: all its threads, none of its children), from /proc;
    None once it is gone. A zombie still shows its final times."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int | str = "self") -> set[int]:
    """The pids of a process's children (those of every thread), from /proc."""
    found: set[int] = set()
    with contextlib.suppress(OSError):  # gone meanwhile
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.update(map(int, (task / "children").read_text().split()))
    return found


def descendants(pids: set[int]) -> set[int]:
    """`pids` and every process below them."""
    found, frontier = set(), set(pids)
    while frontier:
        found |= frontier
        frontier = set().union(*map(children, frontier)) - found
    return found


def run_measured(argv: list[str], env: dict[str, str], log: Path, s: SweepSettings) -> tuple[float, float, int]:
    """Run `argv` from the repository root (output to `log`) and follow every process below it until the last one
    has exited -> (wall seconds, CPU seconds of all of them, how many had to be killed)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    known = children()
    cpu: dict[int, float] = {}
    killed: set[int] = set()
    start = time.perf_counter()
    deadline = start + s.timeout_s
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of the sweep become our children, not init's
    try:
        with log.open("w") as out:
            sweep = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while (ours := children() - known) or sweep.poll() is None:
            for pid in descendants(ours):
                if (found := own_cpu(pid)) is None:
                    continue
                state, seconds = found
                cpu[pid] = max(cpu.get(pid, 0.0), seconds)
                with contextlib.suppress(ProcessLookupError, ChildProcessError):
                    if pid in ours and state == "Z":  # read its final times above, now reap it
                        if pid == sweep.pid:
                            sweep.wait()
                            deadline = min(deadline, time.perf_counter() + s.reap_s)
                        else:
                            os.waitpid(pid, 0)
                    elif state != "Z" and time.perf_counter() > deadline and pid not in killed:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
            time.sleep(SAMPLE_S)
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    wall = time.perf_counter() - start
    if sweep.returncode:
        raise RuntimeError(f"{shlex.join(argv)} exited {sweep.returncode}:\n{log.read_text()[-3000:]}")
    return wall, sum(cpu.values()), len(killed)


def trial_seconds(storage: Path) -> list[float]:
    """Each trial's `time_total_s`, from the last line of its Tune result file."""
    return [json.loads(path.read_text().splitlines()[-1])["time_total_s"]
            for path in sorted(storage.glob("*/trial_*/result.json"))]


def run(s: SweepSettings, threads: int) -> list[Row]:
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="dmh-bench-sweep-") as folder:
        tmp = Path(folder)
        argv = [sys.executable, SCRIPT, "--preset", "smoke", "--seeds", str(s.seeds), "--ray-address", "local",
                "--max-concurrent", str(cores), "--storage", str(tmp / "tune"),
                "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]
        wall, cpu_s, killed = run_measured(argv, env, tmp / "sweep.log", s)
        inside = trial_seconds(tmp / "tune")
    trials = len(inside)
    concurrency = min(trials, cores)
    leftover = f"; {killed} left-over process(es) killed after {s.reap_s:.0f} s" if killed else ""
    return [
        row(PART, MODEL, Measure.SWEEP_WALL_S, wall, 1,
            note=f"subprocess start to the exit of its last process, {cores} cores{leftover}"),
        row(PART, MODEL, Measure.TRIALS, trials, 1, note=f"{s.seeds} seed(s) x c in {{1, 5}}, one CPU each"),
        row(PART, MODEL, Measure.TRIAL_S, sum(inside), 1, note="sum of the trials' Tune time_total_s"),
        row(PART, MODEL, Measure.SCHEDULING_S_PER_TRIAL, (wall * concurrency - sum(inside)) / trials, 1,
            note=f"(wall x concurrency {concurrency} - time inside trials) / trials"),
        row(PART, MODEL, Measure.CPU_S, cpu_s, 1,
            note=f"user + system of the sweep and every process below it, read from /proc every {SAMPLE_S} s"),
        row(PART, MODEL, Measure.CPU_UTILISATION, 100 * cpu_s / (wall * cores), 1,
            note=f"CPU time / (wall time x {cores} cores)"),
    ]


def table(rows: list[Row], s: SweepSettings) -> str:
    body = [[LABELS[r.metric], number(r.value), r.unit] for r in rows]
    notes = [f"{LABELS[r.metric]}: {r.note}." for r in rows if r.note]
    return format_table(f"Sweep overhead: {MODEL} --seeds {s.seeds}, one run", ["", "value", "unit"], body, notes)
