"""What every part of the suite shares: the measurement record, the timer, the paper-sized models, the tables and
the results files.

A measurement is a `Row`; a part returns its rows and prints its table from them, so the printed tables and the
files always show the same numbers. Ratios are rows too, computed from rows of the same run (`ratio_rows`).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dmh.models import ModelConfig, algorithm, config_class

REPO_ROOT = Path(__file__).resolve().parent.parent


class Measure:
    """What a benchmark row measures, with its unit (`UNITS`); MLflow's metric names are `dmh.vocabulary.Metric`."""

    STEP_MS = "step_ms"  # wall time of one environment step through the policy (act + observe)
    EPISODES_MIN = "episodes_min"  # Table 4's online testing time: minutes for 10 online episodes
    UPDATE_S = "update_s"  # one gradient update: forward, backward, gradient clip, AdamW step
    HOURS_PER_10K = "h_per_10k_updates"  # Table 4's offline training unit, from update_s
    PRESET_MIN = "preset_min"  # update_s times the preset's number of updates
    FWD_BWD_S = "fwd_bwd_s"  # one forward + backward of the selective scan alone
    PEAK_MIB = "peak_mib"  # peak resident memory a case added over the process before it
    TOKEN_US = "token_us"  # one recurrent step of a Mamba block (one token per row)
    STEPS_PER_S = "steps_per_s"  # environment steps per second of wall time
    SWEEP_WALL_S = "sweep_wall_s"  # a whole sweep, from starting its script to the exit of its last process
    TRIALS = "trials"  # how many trials a sweep ran
    TRIAL_S = "trial_s"  # seconds inside a sweep's trials (their Tune time_total_s), summed over its trials
    SCHEDULING_S_PER_TRIAL = "scheduling_s_per_trial"  # a sweep's slot-seconds not inside a trial, per trial
    CPU_S = "cpu_s"  # user + system CPU seconds of a process and every process below it
    CPU_UTILISATION = "cpu_utilisation"  # CPU seconds over (wall seconds x usable cores)


UNITS = {
    Measure.STEP_MS: "ms", Measure.EPISODES_MIN: "min", Measure.UPDATE_S: "s",
    Measure.HOURS_PER_10K: "h", Measure.PRESET_MIN: "min", Measure.FWD_BWD_S: "s", Measure.PEAK_MIB: "MiB",
    Measure.TOKEN_US: "us", Measure.STEPS_PER_S: "steps/s", Measure.SWEEP_WALL_S: "s", Measure.TRIALS: "trials",
    Measure.TRIAL_S: "s", Measure.SCHEDULING_S_PER_TRIAL: "s", Measure.CPU_S: "s", Measure.CPU_UTILISATION: "%",
}


def ratio_of(metric: str) -> str:
    """The metric name of a ratio of two `metric` measurements (unit "x"), e.g. step_ms_ratio."""
    return f"{metric}_ratio"


@dataclass(frozen=True)
class Row:
    """One measurement (or one ratio of two) as it goes into results.csv / results.json."""

    part: str  # online | offline | scan | data | sweep
    model: str  # what was measured, e.g. "DM-H" or, for a ratio, "DM-H / AD (Mamba)"
    context: int | None  # context length in environment steps (scan: tokens); None where it does not apply
    batch: int | None  # rows per call (environments, contexts, sequences); None where it does not apply
    metric: str  # a Measure name, or ratio_of(a Measure name)
    value: float  # median over the repetitions (or the ratio)
    unit: str  # UNITS[metric]; "x" for a ratio
    repetitions: int  # timed repetitions behind the median (a ratio: the fewer of its two)
    note: str = ""  # how it was measured where that differs from the part's rule (projected, window, ...)


COLUMNS = tuple(f.name for f in fields(Row))


def row(part: str, model: str, metric: str, value: float, repetitions: int, context: int | None = None,
        batch: int | None = None, note: str = "") -> Row:
    """A row with the metric's unit filled in."""
    unit = "x" if metric.endswith("_ratio") else UNITS[metric]
    return Row(part, model, context, batch, metric, float(value), unit, repetitions, note)


def find(rows: Iterable[Row], model: str, metric: str, context: int | None = None,
         batch: int | None = None) -> Row | None:
    """The row of `model` / `metric` at `context` and `batch`, or None when it was not measured."""
    for r in rows:
        if (r.model, r.metric, r.context, r.batch) == (model, metric, context, batch):
            return r
    return None


def ratio_label(numerator: str, denominator: str) -> str:
    """"A / B"; names sharing a "setting: " prefix keep it once ("cpu preset: A / B")."""
    prefix, sep, rest = numerator.partition(": ")
    if sep and denominator.startswith(prefix + sep):
        return f"{prefix}{sep}{rest} / {denominator.removeprefix(prefix + sep)}"
    return f"{numerator} / {denominator}"


def ratio_rows(rows: list[Row], pairs: Iterable[tuple[str, str]], metric: str,
               keys: Iterable[tuple[int | None, int | None]], note: str = "") -> list[Row]:
    """`numerator / denominator` of `metric` for every (context, batch) in `keys` where both were measured in this
    run; the ratio row's model is ratio_label(numerator, denominator) and its metric ratio_of(metric)."""
    keys = list(keys)
    out = []
    for numerator, denominator in pairs:
        for context, batch in keys:
            top, bottom = find(rows, numerator, metric, context, batch), find(rows, denominator, metric, context, batch)
            if top is not None and bottom is not None:
                out.append(row(top.part, ratio_label(numerator, denominator), ratio_of(metric),
                               top.value / bottom.value, min(top.repetitions, bottom.repetitions), context, batch,
                               note))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------------


def synchronize() -> None:
    """Wait for queued GPU work: CUDA kernels run asynchronously, so a timer read before they finish times their
    launch only. Nothing to wait for where CUDA was never started."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], repetitions: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repetitions` calls after `warmup` untimed ones (first calls pay for lazy
    allocation and kernel selection), each call's GPU work included."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repetitions):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# Peak memory, measured in a process of its own. The peak is the resident-set high-water mark during the measured call
# (VmHWM, reset through /proc/self/clear_refs just before it) minus the resident size at that moment (inputs already
# allocated), in a process where glibc maps every allocation over 64 KiB on its own and unmaps it when freed
# (MEMORY_ENV), so the resident size follows the live tensors instead of what the allocator keeps for reuse (with the
# default allocator, the scan at 1000 tokens showed 1.1 GiB instead of 0.2 GiB: mostly freed memory glibc kept).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_added_mib(fn: Callable[[], object]) -> dict[str, Any]:
    """{"peak_mib": the peak resident memory `fn()` adds, "exact_peak": whether the peak could be reset first}."""
    before = _rss_mib()
    exact = _reset_peak()
    fn()
    return {"peak_mib": _peak_mib() - before, "exact_peak": exact}


def run_in_process(module: str, case: dict[str, Any], memory: bool, what: str) -> dict[str, Any] | None:
    """`python -m module CASE_JSON` in a fresh process (with MEMORY_ENV for a memory case) -> the JSON it prints
    last; None (and a message) when it failed, e.g. killed for memory."""
    env = {**os.environ, **(MEMORY_ENV if memory else {})}
    done = subprocess.run([sys.executable, "-m", module, json.dumps(case)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode:
        print(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------------
# Paper-sized models with HalfCheetah-shaped inputs
# ----------------------------------------------------------------------------------------------------------------------

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah: the task of Table 4's 4000-step rows and of the 28x
EPISODE_LEN = 1000  # a HalfCheetah episode (it never terminates early)
AD_WINDOW = 4000  # AD (Transformer)'s context: n = 4 episodes x 1000 steps (Table 4)
DT_WINDOW = 20  # DT / DM on D4RL: a window of K = 20 steps of one episode
LABELS = {name: algorithm(name).label for name in ("dmh", "dm", "dt", "ad-transformer", "ad-mamba")}
KV_CACHE = "AD (Transformer, KV cache)"  # the project's AD policy as it is
REENCODING = "AD (Transformer, re-encoding)"  # AD as the paper's baseline ran online: a full forward per step
SEPARATE = "AD (Transformer, separate tokens)"  # AD with (s, a, r) as three tokens per step (ADConfig.tokens)
SEPARATE_REENCODING = "AD (Transformer, separate tokens, re-encoding)"
HOP = AD_WINDOW // 4  # steps the hopping KV cache drops at once (ADConfig.window_hop): a quarter of the window
KV_HOP = "AD (Transformer, KV cache, hop 1/4 window)"  # a full window drops a quarter of itself at once
DEVICE = torch.device("cpu")  # where the online part's models (and so their inputs) live: `--device`, set by __main__


def on_device(model: torch.nn.Module) -> torch.nn.Module:
    """`model` on DEVICE (read when called, so the runner's `--device` applies)."""
    return model.to(DEVICE)


def paper_config(algo: str, dropout: float = 0.0, context_len: int | None = None, **fields: Any) -> ModelConfig:
    """The paper's sizes (d_model 128, 3 GPT layers, 1 head, 2 Mamba layers, d_state 16, c = 20) on
    HalfCheetah-shaped inputs; `context_len` is AD's window or DT/DM's K (defaults: 4000 and 20); `fields` set other
    config fields (e.g. AD's `tokens`)."""
    common: dict[str, Any] = dict(obs_dim=OBS_DIM, act_dim=ACT_DIM, discrete=False, max_timestep=EPISODE_LEN,
                                  d_model=128, n_layer=3, n_head=1, n_mamba_layer=2, d_state=16, dropout=dropout,
                                  mamba_backend="torch")
    if algo == "dmh":
        common.update(c=20, rtg_token=True)  # D4RL conditions DM-H's blocks on return-to-go (dmh/tasks.py)
    elif algo in ("dt", "dm"):
        common.update(context_len=context_len or DT_WINDOW)
    else:
        common.update(context_len=context_len or AD_WINDOW)
    return config_class(algo)(**common, **fields)


def synthetic_batch(batch_size: int, length: int, episodes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch in the models' format: every row is `episodes` consecutive HalfCheetah-shaped episodes of
    length // episodes steps (an across-episodic context for AD and DM-H), with continuous actions in (-1, 1)."""
    g = torch.Generator().manual_seed(seed)
    episode_len = length // episodes
    t = torch.arange(length)
    timesteps = (t % episode_len).repeat(batch_size, 1)  # [B, L]
    rewards = torch.rand(batch_size, length, generator=g)  # [B, L]
    episode_id = t // episode_len
    collected = torch.zeros_like(rewards)
    for e in range(episodes):  # return still to go within each episode
        sl = episode_id == e
        collected[:, sl] = torch.cumsum(rewards[:, sl], 1) - rewards[:, sl]
    return dict(
        obs=torch.randn(batch_size, length, OBS_DIM, generator=g),  # [B, L, obs_dim]
        actions=torch.rand(batch_size, length, ACT_DIM, generator=g) * 1.8 - 0.9,  # [B, L, act_dim]
        rewards=rewards,
        timesteps=timesteps,
        episode_start=timesteps == 0,  # [B, L] bool
        done=timesteps == episode_len - 1,  # [B, L] bool
        mask=torch.ones(batch_size, length, dtype=torch.bool),
        rtg=1.0 - collected / episode_len,  # [B, L]
    )


# ----------------------------------------------------------------------------------------------------------------------
# Tables and results files
# ----------------------------------------------------------------------------------------------------------------------

MISSING = "–"  # a cell that was not measured (too slow, or not applicable)


def number(value: float | None, digits: int = 3) -> str:
    """A cell: `digits` significant digits, MISSING for None."""
    if value is None:
        return MISSING
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def format_table(title: str, header: list[str], body: list[list[str]], notes: Iterable[str] = ()) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned, notes underneath."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                              strict=True)))

    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *map(line, body), rule, *notes, ""])


def machine_info(threads: int) -> dict[str, Any]:
    """Where and when the numbers were measured: CPU, cores, load, torch, the dmh commit, the date."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "dmh_commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def git_commit() -> str:
    """HEAD of the checkout, with "+dirty" for uncommitted changes; "unknown" outside git. Read-only
    (--no-optional-locks: no index refresh while other work uses the checkout)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return "unknown"
        dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")


def write_results(out: Path, header: dict[str, Any], rows: list[Row]) -> tuple[Path, Path]:
    """results.json ({"header": ..., "rows": [...]}) and results.csv (the header as `# key: value` lines, then one
    line per row; read it with `pandas.read_csv(path, comment="#")`)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "results.json", out / "results.csv"
    json_path.write_text(json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    with csv_path.open("w", newline="") as f:
        for key, value in header.items():
            f.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return csv_path, json_path


def wide_table(title: str, rows: list[Row], models: Iterable[str], metric: str, contexts: Iterable[int],
               batches: Iterable[int | None], notes: Iterable[str] = (), digits: int = 3) -> str:
    """One line per (batch, model), one column per context: `metric`'s value, MISSING where not measured. Lines
    with nothing measured are left out."""
    contexts, models = list(contexts), list(models)
    body = []
    for batch in batches:
        for model in models:
            cells = [find(rows, model, metric, context, batch) for context in contexts]
            if any(cells):
                body.append([model, MISSING if batch is None else str(batch),
                             *(number(c.value if c else None, digits) for c in cells)])
    return format_table(title, ["", "batch", *map(str, contexts)], body, notes)
