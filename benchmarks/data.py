"""Data: environment steps per second of the vectorised learning-history generator (60 tabular Q-learners stepped
together through one `GridWorldCore`, Q-updates included) against a plain gymnasium loop over one
`dmh/Darkroom-v0` with random actions (no learning at all): how much the vectorisation buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium
import numpy as np

import dmh.envs  # noqa: F401  (registers the dmh/ environments with gymnasium)
from benchmarks.common import Measure, Row, format_table, median_seconds, number, ratio_label, ratio_of, row
from dmh.data.histories import generate_histories, history_config

PART = "data"
ENV_ID = "dmh/Darkroom-v0"
GENERATOR = "generate_histories (60 learners)"
GYM_LOOP = "gymnasium loop (random actions)"


@dataclass(frozen=True)
class DataSettings:
    """What the data part measures."""

    history_steps: int  # the generator's step budget for Darkroom's 60 training tasks (the paper: 1M per family)
    gym_steps: int  # steps of the plain gymnasium loop
    repetitions: int  # timed runs of each, after one warm-up run


QUICK = DataSettings(history_steps=100_000, gym_steps=10_000, repetitions=1)
FULL = DataSettings(history_steps=1_000_000, gym_steps=100_000, repetitions=3)


def generator_steps_per_s(steps: int, repetitions: int) -> tuple[float, int]:
    cfg = history_config("darkroom", steps=steps)
    played = []

    def generate() -> None:
        played.append(len(generate_histories(cfg, show_progress=False).observations))

    seconds = median_seconds(generate, repetitions)
    return played[-1] / seconds, cfg.num_tasks


def gym_steps_per_s(steps: int, repetitions: int) -> float:
    env = gymnasium.make(ENV_ID)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, steps)  # drawn up front: not timed

    def loop() -> None:
        env.reset(seed=0)
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()

    seconds = median_seconds(loop, repetitions)
    env.close()
    return steps / seconds


def run(s: DataSettings, threads: int) -> list[Row]:
    rate, learners = generator_steps_per_s(s.history_steps, s.repetitions)
    generator = row(PART, GENERATOR, Measure.STEPS_PER_S, rate, s.repetitions, None, learners,
                    f"{s.history_steps} steps budget on Darkroom, Q-learning updates included")
    loop = row(PART, GYM_LOOP, Measure.STEPS_PER_S, gym_steps_per_s(s.gym_steps, s.repetitions), s.repetitions,
               None, 1, f"{s.gym_steps} steps of {ENV_ID}, resets included")
    speedup = row(PART, ratio_label(GENERATOR, GYM_LOOP), ratio_of(Measure.STEPS_PER_S), generator.value / loop.value,
                  s.repetitions)
    return [generator, loop, speedup]


def table(rows: list[Row], s: DataSettings) -> str:
    body = [[r.model, number(r.batch), number(r.value), r.unit] for r in rows]
    notes = [f"{r.model}: {r.note}." for r in rows if r.note]
    return format_table("Data: environment steps per second", ["", "rows", "value", "unit"], body, notes)
