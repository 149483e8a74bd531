"""Scan: the selective scan alone, forward + backward, ours against its sequential twin and mambapy's parallel scan;
and the recurrent step of one Mamba block (one token per row), ours against mambapy's.

Each case runs in processes of its own (`python -m benchmarks.scan CASE_JSON`): one for the time, one for the memory
(`benchmarks.common.peak_added_mib`, in a process started with `MEMORY_ENV`). That setting slows allocation-heavy
code 2-5x, which is why the time is measured in a separate, default process, and why the memory cases run two at a
time once every timed case is done.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.common import (
    Measure,
    Row,
    find,
    format_table,
    median_seconds,
    number,
    peak_added_mib,
    ratio_label,
    ratio_of,
    ratio_rows,
    row,
    run_in_process,
    wide_table,
)
from dmh.models import Mamba, selective_scan, selective_scan_reference

PART = "scan"
OURS, REFERENCE, MAMBAPY = "selective_scan", "selective_scan_reference", "mambapy pscan"
SCANS = (OURS, REFERENCE, MAMBAPY)
RATIOS = ((REFERENCE, OURS), (OURS, MAMBAPY))
STEP_OURS, STEP_MAMBAPY = "Mamba.step (ours)", "MambaBlock.step (mambapy)"


@dataclass(frozen=True)
class ScanSettings:
    """What the scan part measures."""

    lengths: tuple[int, ...]  # tokens per sequence
    reference_max: int  # longest sequence the sequential reference runs (one Python iteration per token)
    batch: int  # sequences
    d_inner: int  # channels: expand 2 x d_model 128
    d_state: int  # SSM state per channel
    repetitions: int  # timed forward + backward passes per case (memory: one pass)
    warmup_max_length: int  # cases up to this length get one untimed pass first; in longer ones (tens of seconds
    # a pass) first-touch costs are a negligible part of the pass
    step_tokens: int  # tokens per timed run of the recurrent step
    step_batches: tuple[int, ...]  # rows of the recurrent step
    step_runs: int  # timed runs of the recurrent step
    memory_jobs: int  # memory cases run at once, after every timed case: their result does not depend on speed


QUICK = ScanSettings(lengths=(1000,), reference_max=4000, batch=4, d_inner=256, d_state=16, repetitions=2,
                     warmup_max_length=4000, step_tokens=100, step_batches=(1, 20), step_runs=3, memory_jobs=1)
FULL = ScanSettings(lengths=(1000, 4000, 16_000), reference_max=4000, batch=4, d_inner=256, d_state=16,
                    repetitions=2, warmup_max_length=4000, step_tokens=1000, step_batches=(1, 20), step_runs=5,
                    memory_jobs=2)


def mambapy_scan(d_inner: int, d_state: int) -> Callable[..., torch.Tensor]:
    """mambapy's `MambaBlock.selective_scan` (its parallel `pscan`, padding L to a power of two) on our inputs."""
    from mambapy.mamba import MambaBlock, MambaConfig

    block = MambaBlock(MambaConfig(d_model=d_inner // 2, n_layers=1, d_state=d_state))
    return block.selective_scan


def scan_of(name: str, d_inner: int, d_state: int) -> Callable[..., torch.Tensor]:
    """(u, delta, A, B, C, D) -> y [B, L, d_inner] for each scan compared."""
    if name == MAMBAPY:
        return mambapy_scan(d_inner, d_state)
    if name == REFERENCE:
        return lambda *args: selective_scan_reference(*args)[0]
    return lambda *args: selective_scan(*args, chunk_size=64, checkpoint_chunks=True)[0]  # the models' defaults


def scan_inputs(batch: int, length: int, d_inner: int, d_state: int) -> list[torch.Tensor]:
    """Leaves with gradients, shaped and scaled as a Mamba block feeds its scan (dt around softplus(-3) ~ 0.05)."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, length, d_inner, generator=g)  # [B, L, d_inner]
    delta = F.softplus(torch.randn(batch, length, d_inner, generator=g) - 3)  # [B, L, d_inner]
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # [d_inner, d_state], S4D-real
    B = torch.randn(batch, length, d_state, generator=g)  # [B, L, d_state]
    C = torch.randn(batch, length, d_state, generator=g)  # [B, L, d_state]
    D = torch.ones(d_inner)  # [d_inner]
    return [x.requires_grad_() for x in (u, delta, A, B, C, D)]


def measure_case(case: dict) -> dict:
    """In the case's own process: the median forward + backward seconds ("time"), or the peak memory one forward +
    backward adds ("memory", in a process started with MEMORY_ENV)."""
    torch.set_num_threads(case["threads"])
    inputs = scan_inputs(case["batch"], case["length"], case["d_inner"], case["d_state"])
    scan = scan_of(case["scan"], case["d_inner"], case["d_state"])

    def forward_backward() -> None:
        for x in inputs:
            x.grad = None
        scan(*inputs).sum().backward()

    if case["measure"] == "time":
        return {"seconds": median_seconds(forward_backward, case["repetitions"], warmup=case["warmup"])}
    return peak_added_mib(forward_backward)


def run_case(name: str, length: int, measure: str, s: ScanSettings, threads: int) -> dict | None:
    """One case in a fresh process; None (and a message) when it failed, e.g. killed for memory."""
    case = dict(scan=name, length=length, batch=s.batch, d_inner=s.d_inner, d_state=s.d_state,
                repetitions=s.repetitions, warmup=int(length <= s.warmup_max_length), threads=threads,
                measure=measure)
    return run_in_process("benchmarks.scan", case, memory=measure == "memory", what=f"scan {name} L={length}")


def step_us(name: str, batch: int, s: ScanSettings) -> float:
    """Median µs per token of one block's recurrent step (no gradients), d_model = d_inner / 2."""
    torch.manual_seed(0)
    d_model = s.d_inner // 2
    x = torch.randn(batch, d_model)  # [B, d_model]
    if name == STEP_OURS:
        block = Mamba(d_model, d_state=s.d_state, backend="torch").eval()
        state = [block.init_state(batch)]

        def tokens() -> None:
            for _ in range(s.step_tokens):
                _, state[0] = block.step(x, state[0])
    else:
        from mambapy.mamba import MambaBlock, MambaConfig

        block = MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=s.d_state)).eval()
        cache = [(torch.zeros(batch, s.d_inner, s.d_state), torch.zeros(batch, s.d_inner, block.config.d_conv - 1))]

        def tokens() -> None:
            for _ in range(s.step_tokens):
                _, cache[0] = block.step(x, cache[0])

    with torch.no_grad():
        return median_seconds(tokens, s.step_runs, warmup=1) / s.step_tokens * 1e6


def run(s: ScanSettings, threads: int) -> list[Row]:
    """Timed cases one at a time, then the recurrent step, then the memory cases `memory_jobs` at a time."""
    cases = [(name, length) for length in s.lengths for name in SCANS
             if not (name == REFERENCE and length > s.reference_max)]
    rows = []
    for name, length in cases:
        timed = run_case(name, length, "time", s, threads)
        if timed is not None:
            rows.append(row(PART, name, Measure.FWD_BWD_S, timed["seconds"], s.repetitions, length, s.batch))
    for batch in s.step_batches:
        for name in (STEP_OURS, STEP_MAMBAPY):
            rows.append(row(PART, name, Measure.TOKEN_US, step_us(name, batch, s), s.step_runs, None, batch,
                            f"runs of {s.step_tokens} tokens, d_model {s.d_inner // 2}"))
    with ThreadPoolExecutor(max_workers=s.memory_jobs) as pool:
        memory = list(pool.map(lambda case: run_case(*case, "memory", s, threads), cases))
    for (name, length), result in zip(cases, memory, strict=True):
        if result is not None:
            note = "" if result["exact_peak"] else "peak of the whole process (no /proc/self/clear_refs)"
            rows.append(row(PART, name, Measure.PEAK_MIB, result["peak_mib"], 1, length, s.batch, note))
    keys = [(length, s.batch) for length in s.lengths]
    rows += ratio_rows(rows, RATIOS, Measure.FWD_BWD_S, keys) + ratio_rows(rows, RATIOS, Measure.PEAK_MIB, keys)
    return rows + ratio_rows(rows, [(STEP_OURS, STEP_MAMBAPY)], Measure.TOKEN_US, [(None, b) for b in s.step_batches])


def table(rows: list[Row], s: ScanSettings) -> str:
    shape = f"B {s.batch}, d_inner {s.d_inner}, d_state {s.d_state}; columns: L tokens"
    ratio_names = [ratio_label(*p) for p in RATIOS]
    return "\n".join([
        wide_table(f"Scan: s per forward + backward ({shape})", rows, SCANS, Measure.FWD_BWD_S, s.lengths, [s.batch],
                   notes=[f"selective_scan: chunks of 64 tokens (checkpointed: the models' default); the reference "
                          f"is skipped above {s.reference_max} tokens;", f"median of {s.repetitions} passes, after "
                          f"one untimed pass up to {s.warmup_max_length} tokens."]),
        wide_table(f"Scan: peak MiB added by one forward + backward ({shape})", rows, SCANS, Measure.PEAK_MIB,
                   s.lengths, [s.batch], notes=["Resident-set high-water mark minus the resident size before, with "
                                                "glibc returning every allocation over 64 KiB", "when freed "
                                                "(benchmarks/scan.py): the peak of the live tensors."], digits=4),
        wide_table("Scan: ratios of the times", rows, ratio_names, ratio_of(Measure.FWD_BWD_S), s.lengths, [s.batch]),
        wide_table("Scan: ratios of the peak memory", rows, ratio_names, ratio_of(Measure.PEAK_MIB), s.lengths,
                   [s.batch]),
        step_table(rows, s),
    ])


def step_table(rows: list[Row], s: ScanSettings) -> str:
    body = []
    for batch in s.step_batches:
        for name, metric in ((STEP_OURS, Measure.TOKEN_US), (STEP_MAMBAPY, Measure.TOKEN_US),
                             (ratio_label(STEP_OURS, STEP_MAMBAPY), ratio_of(Measure.TOKEN_US))):
            r = find(rows, name, metric, None, batch)
            body.append([name, str(batch), number(r.value if r else None), "x" if metric != Measure.TOKEN_US else "µs"])
    return format_table(f"Scan: one token through one block's recurrent step (d_model {s.d_inner // 2})",
                        ["", "batch", "value", "unit"], body)


if __name__ == "__main__":
    print(json.dumps(measure_case(json.loads(sys.argv[1]))))
