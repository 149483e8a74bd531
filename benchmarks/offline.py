"""Offline: seconds per gradient update (forward, backward, gradient clip, AdamW step).

Two settings. (1) The paper's models on synthetic HalfCheetah-shaped contexts of 200, 2000 and 4000 steps (4
episodes each, as D4RL's n = 4), batch 4: the paper's 128 contexts of 4000 steps do not fit one CPU thread in
reasonable time, and the ratios between models are what a batch size changes least. (2) The project's `cpu` preset on
Grid World Darkroom through `Trainer.train_step()`, which also samples the batch from the learning histories: what a
`dmh train --preset cpu` run pays per update.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass

import torch

from benchmarks.common import (
    LABELS,
    SEPARATE,
    Measure,
    Row,
    median_seconds,
    paper_config,
    peak_added_mib,
    ratio_label,
    ratio_of,
    ratio_rows,
    row,
    run_in_process,
    synthetic_batch,
    wide_table,
)
from dmh.models import algorithm, build_model
from dmh.training.config import make_config
from dmh.training.train import Trainer

PART = "offline"
ALGOS = ("dmh", "ad-transformer", "ad-mamba")  # the models of Table 4's offline columns
VARIANTS = {SEPARATE: ("ad-transformer", {"tokens": "separate"})}  # the same models in another layout
# Contexts per forward + backward of a variant: the separate-token AD's dropout makes CPU attention fall back to the
# kernel that materialises [T, T] scores; at 4000 steps (12,000 tokens) a batch of 4 took over 24 GiB (killed for
# memory), so its update accumulates the gradient of one context at a time (the same update, bounded memory).
MICRO_BATCH = {SEPARATE: 1}
PRESET_ALGOS = ("dmh", "ad-transformer", "ad-mamba", "dt", "dm")
PRESET = "cpu preset: "  # prefix of the preset rows' model names (the same models, another setting)
# The preset's DM-H decoding a quarter of its blocks (the speed option the claims' comparisons do not use): what
# supervising every step costs, measured beside it
SUBSAMPLED = "DM-H (train_blocks=10)"
PRESET_VARIANTS = {SUBSAMPLED: ("dmh", ["model.train_blocks=10"])}


@dataclass(frozen=True)
class OfflineSettings:
    """What the offline part measures."""

    contexts: tuple[int, ...]  # steps per synthetic training context
    batch_size: int  # synthetic contexts per update
    episodes: int  # episodes per synthetic context (D4RL's n = 4)
    repetitions: int  # timed updates per point, after one warm-up update
    preset: bool  # also time the `cpu` preset's Trainer.train_step() (needs the Darkroom data: 1-2 min the first time)
    preset_task: str  # the preset's task
    preset_updates: int  # timed Trainer updates per algo, after 3 warm-up ones
    memory_context: int  # steps of the one context whose DM-H forward + backward peak memory is measured
    preset_c: tuple[int, ...] = ()  # DM-H's c values timed besides the task's own c (every block decoded)


QUICK = OfflineSettings(contexts=(200,), batch_size=4, episodes=4, repetitions=2, preset=True, preset_task="darkroom",
                        preset_updates=5, memory_context=2000)
FULL = OfflineSettings(contexts=(200, 2000, 4000), batch_size=4, episodes=4, repetitions=2, preset=True,
                       preset_task="darkroom", preset_updates=20, memory_context=20_000)
MEMORY_TARGET_MIB = 4096  # the speed issue's bound on a 20,000-step DM-H forward + backward

# Table 4, HalfCheetah, 4000-step context: hours per 10k gradient updates (the authors' GPU, their batch).
PAPER_HOURS = {LABELS["ad-mamba"]: 28.56, LABELS["ad-transformer"]: 37.10, LABELS["dmh"]: 20.96}
RATIOS = ((LABELS["dmh"], LABELS["ad-transformer"]), (LABELS["ad-mamba"], LABELS["ad-transformer"]),
          (LABELS["dmh"], LABELS["ad-mamba"]), (LABELS["dmh"], SEPARATE))
PRESET_RATIOS = RATIOS[:3]  # the preset runs the default layout only
PRESET_PAIRS = (*PRESET_RATIOS, (LABELS["dmh"], SUBSAMPLED))  # and what decoding every block costs DM-H


def paper_update_seconds(algo: str, context: int, s: OfflineSettings, micro_batch: int | None = None,
                         **fields: object) -> float:
    """Median seconds of one update of the paper-sized `algo` (dropout 0.1, lr 1e-4, wd 1e-4, clip 0.25: Table 3);
    `micro_batch` contexts per forward + backward, the gradient accumulated over the batch (default: all at once)."""
    torch.manual_seed(0)
    model = build_model(algo, paper_config(algo, dropout=0.1, context_len=context, **fields)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = synthetic_batch(s.batch_size, context, s.episodes)
    size = micro_batch or s.batch_size
    parts = [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, s.batch_size, size)]

    def update() -> None:
        optimizer.zero_grad(set_to_none=True)
        for part in parts:
            loss, _ = model.loss(part)
            (loss * part["obs"].shape[0] / s.batch_size).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()

    return median_seconds(update, s.repetitions, warmup=1)


def dmh_memory(case: dict) -> dict:
    """In its own process: the peak memory one forward + backward of the paper-sized DM-H (dropout 0.1, valuable
    sub-goals on) adds over one context of `case["context"]` steps (20 HalfCheetah-shaped episodes: the paper's
    longest Tmaze context has 20,000 steps)."""
    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    model = build_model("dmh", paper_config("dmh", dropout=0.1)).train()
    batch = synthetic_batch(1, case["context"], 20)
    return peak_added_mib(lambda: model.loss(batch)[0].backward())


def memory_rows(s: OfflineSettings, threads: int) -> list[Row]:
    result = run_in_process("benchmarks.offline", {"context": s.memory_context, "threads": threads}, memory=True,
                            what=f"DM-H memory at {s.memory_context} steps")
    if result is None:
        return []
    note = (f"one forward + backward over one context; target < {MEMORY_TARGET_MIB} MiB at 20000 steps"
            + ("" if result["exact_peak"] else "; peak of the whole process (no /proc/self/clear_refs)"))
    return [row(PART, LABELS["dmh"], Measure.PEAK_MIB, result["peak_mib"], 1, s.memory_context, 1, note)]


def preset_models(s: OfflineSettings) -> dict[str, tuple[str, list[str]]]:
    """The preset's models to time, by row label: each algorithm, the variants, and DM-H at every c of ``preset_c``."""
    with_c = {f"DM-H (c={c})": ("dmh", [f"c={c}"]) for c in s.preset_c}
    return {LABELS[a]: (a, []) for a in PRESET_ALGOS} | PRESET_VARIANTS | with_c


def preset_rows(s: OfflineSettings, threads: int) -> list[Row]:
    rows = []
    run_dir = tempfile.mkdtemp(prefix="dmh-benchmarks-runs-")  # the Trainer checks it; nothing is saved
    try:
        for label, (algo, sets) in preset_models(s).items():
            cfg = make_config(algo, s.preset_task, "cpu", sets=[f"threads={threads}", f"run_dir={run_dir}", *sets])
            trainer = Trainer(cfg)
            seconds = median_seconds(trainer.train_step, s.preset_updates, warmup=3)
            context = (cfg.n_context * cfg.spec.horizon if algorithm(algo).context != "episode"
                       else cfg.model.context_len)
            note = f"Trainer.train_step() on {s.preset_task}"
            rows.append(row(PART, PRESET + label, Measure.UPDATE_S, seconds, s.preset_updates, context,
                            cfg.batch_size, note))
            rows.append(row(PART, PRESET + label, Measure.PRESET_MIN, seconds * cfg.steps / 60,
                            s.preset_updates, context, cfg.batch_size, f"{cfg.steps} updates x update_s"))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    keys = sorted({(r.context, r.batch) for r in rows})
    pairs = [(PRESET + a, PRESET + b) for a, b in PRESET_PAIRS]
    return rows + ratio_rows(rows, pairs, Measure.UPDATE_S, keys)


def run(s: OfflineSettings, threads: int) -> list[Row]:
    rows = []
    models = {LABELS[a]: (a, {}) for a in ALGOS} | VARIANTS
    for context in s.contexts:
        for label, (algo, fields) in models.items():
            micro = MICRO_BATCH.get(label)
            seconds = paper_update_seconds(algo, context, s, micro, **fields)
            note = f"gradient accumulated over micro-batches of {micro} (memory)" if micro else ""
            rows.append(row(PART, label, Measure.UPDATE_S, seconds, s.repetitions, context, s.batch_size, note))
            rows.append(row(PART, label, Measure.HOURS_PER_10K, seconds * 10_000 / 3600, s.repetitions,
                            context, s.batch_size))
    rows += ratio_rows(rows, RATIOS, Measure.UPDATE_S, [(c, s.batch_size) for c in s.contexts])
    rows += memory_rows(s, threads)
    if s.preset:
        rows += preset_rows(s, threads)
    return rows


def table(rows: list[Row], s: OfflineSettings) -> str:
    models = [*(LABELS[a] for a in ALGOS), *VARIANTS]
    paper = ", ".join(f"{k} {v}" for k, v in PAPER_HOURS.items())
    paper_ratios = ", ".join(f"{ratio_label(a, b)} {PAPER_HOURS[a] / PAPER_HOURS[b]:.2f}" for a, b in RATIOS
                             if b in PAPER_HOURS)
    parts = [
        wide_table(f"Offline: s per update, paper-sized models, synthetic batch of {s.batch_size} contexts", rows,
                   models, Measure.UPDATE_S, s.contexts, [s.batch_size]),
        wide_table("Offline: hours per 10k updates (Table 4's unit) at this batch", rows, models,
                   Measure.HOURS_PER_10K, s.contexts, [s.batch_size],
                   notes=[f"Paper (Table 4, HalfCheetah, 4000 steps, GPU, its batch): {paper}."]),
        wide_table("Offline: ratios of the update times above", rows, [ratio_label(*p) for p in RATIOS],
                   ratio_of(Measure.UPDATE_S), s.contexts, [s.batch_size], notes=[f"Paper: {paper_ratios}."]),
    ]
    memory = [r for r in rows if r.metric == Measure.PEAK_MIB]
    if memory:
        parts.append(wide_table("Offline: peak MiB one DM-H forward + backward adds (batch 1)", memory,
                                [LABELS["dmh"]], Measure.PEAK_MIB, [memory[0].context], [1],
                                notes=[memory[0].note + "."], digits=4))
    preset = [r for r in rows if r.model.startswith(PRESET)]
    if preset:
        contexts = sorted({r.context for r in preset})
        batches = sorted({r.batch for r in preset})
        labels = [PRESET + label for label in preset_models(s)]
        parts += [
            wide_table(f"Offline: s per update, cpu preset on {s.preset_task} (Trainer.train_step)", preset, labels,
                       Measure.UPDATE_S, contexts, batches),
            wide_table("Offline: minutes for the cpu preset's updates", preset, labels, Measure.PRESET_MIN, contexts,
                       batches),
            wide_table("Offline: ratios, cpu preset", preset,
                       [ratio_label(PRESET + a, PRESET + b) for a, b in PRESET_PAIRS], ratio_of(Measure.UPDATE_S),
                       contexts, batches),
        ]
    return "\n".join(parts)


if __name__ == "__main__":
    print(json.dumps(dmh_memory(json.loads(sys.argv[1]))))
