"""Offline: seconds per gradient update (forward, backward, gradient clip, AdamW step).

Two settings. (1) The paper's models on synthetic HalfCheetah-shaped contexts of 200, 2000 and 4000 steps (4
episodes each, as D4RL's n = 4), batch 4: the paper's 128 contexts of 4000 steps do not fit one CPU thread in
reasonable time, and the ratios between models are what a batch size changes least. (2) The project's `cpu` preset on
Grid World Darkroom through `Trainer.train_step()`, which also samples the batch from the learning histories: what a
`dmh train --preset cpu` run pays per update.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

import torch

from benchmarks.common import (
    LABELS,
    SEPARATE,
    Metric,
    Row,
    median_seconds,
    paper_config,
    ratio_label,
    ratio_of,
    ratio_rows,
    row,
    synthetic_batch,
    wide_table,
)
from dmh.models import algorithm, build_model
from dmh.training.config import make_config
from dmh.training.train import Trainer

PART = "offline"
ALGOS = ("dmh", "ad-transformer", "ad-mamba")  # the models of Table 4's offline columns
VARIANTS = {SEPARATE: ("ad-transformer", {"tokens": "separate"})}  # the same models in another layout
PRESET_ALGOS = ("dmh", "ad-transformer", "ad-mamba", "dt", "dm")
PRESET = "cpu preset: "  # prefix of the preset rows' model names (the same models, another setting)


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


QUICK = OfflineSettings(contexts=(200,), batch_size=4, episodes=4, repetitions=2, preset=True, preset_task="darkroom",
                        preset_updates=5)
FULL = OfflineSettings(contexts=(200, 2000, 4000), batch_size=4, episodes=4, repetitions=2, preset=True,
                       preset_task="darkroom", preset_updates=20)

# Table 4, HalfCheetah, 4000-step context: hours per 10k gradient updates (the authors' GPU, their batch).
PAPER_HOURS = {LABELS["ad-mamba"]: 28.56, LABELS["ad-transformer"]: 37.10, LABELS["dmh"]: 20.96}
RATIOS = ((LABELS["dmh"], LABELS["ad-transformer"]), (LABELS["ad-mamba"], LABELS["ad-transformer"]),
          (LABELS["dmh"], LABELS["ad-mamba"]), (LABELS["dmh"], SEPARATE))
PRESET_RATIOS = RATIOS[:3]  # the preset runs the default layout only


def paper_update_seconds(algo: str, context: int, s: OfflineSettings, **fields: object) -> float:
    """Median seconds of one update of the paper-sized `algo` (dropout 0.1, lr 1e-4, wd 1e-4, clip 0.25: Table 3)."""
    torch.manual_seed(0)
    model = build_model(algo, paper_config(algo, dropout=0.1, context_len=context, **fields)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = synthetic_batch(s.batch_size, context, s.episodes)

    def update() -> None:
        loss, _ = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()

    return median_seconds(update, s.repetitions, warmup=1)


def preset_rows(s: OfflineSettings, threads: int) -> list[Row]:
    rows = []
    run_dir = tempfile.mkdtemp(prefix="dmh-benchmarks-runs-")  # the Trainer checks it; nothing is saved
    try:
        for algo in PRESET_ALGOS:
            cfg = make_config(algo, s.preset_task, "cpu", sets=[f"threads={threads}", f"run_dir={run_dir}"])
            trainer = Trainer(cfg)
            seconds = median_seconds(trainer.train_step, s.preset_updates, warmup=3)
            setup = trainer.setup
            context = (setup.n_context * setup.spec.horizon if algorithm(algo).context != "episode"
                       else trainer.model_cfg.context_len)
            note = f"Trainer.train_step() on {s.preset_task}"
            rows.append(row(PART, PRESET + LABELS[algo], Metric.UPDATE_S, seconds, s.preset_updates, context,
                            cfg.batch_size, note))
            rows.append(row(PART, PRESET + LABELS[algo], Metric.PRESET_MIN, seconds * cfg.steps / 60,
                            s.preset_updates, context, cfg.batch_size, f"{cfg.steps} updates x update_s"))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    keys = sorted({(r.context, r.batch) for r in rows})
    pairs = [(PRESET + a, PRESET + b) for a, b in PRESET_RATIOS]
    return rows + ratio_rows(rows, pairs, Metric.UPDATE_S, keys)


def run(s: OfflineSettings, threads: int) -> list[Row]:
    rows = []
    models = {LABELS[a]: (a, {}) for a in ALGOS} | VARIANTS
    for context in s.contexts:
        for label, (algo, fields) in models.items():
            seconds = paper_update_seconds(algo, context, s, **fields)
            rows.append(row(PART, label, Metric.UPDATE_S, seconds, s.repetitions, context, s.batch_size))
            rows.append(row(PART, label, Metric.HOURS_PER_10K, seconds * 10_000 / 3600, s.repetitions,
                            context, s.batch_size))
    rows += ratio_rows(rows, RATIOS, Metric.UPDATE_S, [(c, s.batch_size) for c in s.contexts])
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
                   models, Metric.UPDATE_S, s.contexts, [s.batch_size]),
        wide_table("Offline: hours per 10k updates (Table 4's unit) at this batch", rows, models,
                   Metric.HOURS_PER_10K, s.contexts, [s.batch_size],
                   notes=[f"Paper (Table 4, HalfCheetah, 4000 steps, GPU, its batch): {paper}."]),
        wide_table("Offline: ratios of the update times above", rows, [ratio_label(*p) for p in RATIOS],
                   ratio_of(Metric.UPDATE_S), s.contexts, [s.batch_size], notes=[f"Paper: {paper_ratios}."]),
    ]
    preset = [r for r in rows if r.model.startswith(PRESET)]
    if preset:
        contexts = sorted({r.context for r in preset})
        batches = sorted({r.batch for r in preset})
        labels = [PRESET + LABELS[a] for a in PRESET_ALGOS]
        parts += [
            wide_table(f"Offline: s per update, cpu preset on {s.preset_task} (Trainer.train_step)", preset, labels,
                       Metric.UPDATE_S, contexts, batches),
            wide_table("Offline: minutes for the cpu preset's updates", preset, labels, Metric.PRESET_MIN, contexts,
                       batches),
            wide_table("Offline: ratios, cpu preset", preset,
                       [ratio_label(PRESET + a, PRESET + b) for a, b in PRESET_RATIOS], ratio_of(Metric.UPDATE_S),
                       contexts, batches),
        ]
    return "\n".join(parts)
