"""Online: what one environment step costs through `model.policy` (act + observe) once the context is filled, and
Table 4's online testing time (minutes for 10 episodes at a 4000-step context).

Every policy is stepped through its context first (the per-step cost of a cache or a recurrent state depends on what
it holds), then the next steps are timed. The one exception is the re-encoding AD, whose state is only its inputs:
they are written at once (`ReencodingAD.prefill`) instead of paying a full forward for every step of the fill.
Only the models are timed: observations and rewards are HalfCheetah-shaped random tensors, not a MuJoCo simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from benchmarks.common import (
    ACT_DIM,
    AD_WINDOW,
    DT_WINDOW,
    EPISODE_LEN,
    HOP,
    KV_CACHE,
    KV_HOP,
    LABELS,
    OBS_DIM,
    REENCODING,
    SEPARATE_REENCODING,
    Measure,
    Row,
    find,
    format_table,
    median_seconds,
    number,
    on_device,
    paper_config,
    ratio_label,
    ratio_of,
    ratio_rows,
    row,
    wide_table,
)
from dmh.models import Policy, build_model

PART = "online"


@dataclass(frozen=True)
class OnlineSettings:
    """What the online part measures."""

    contexts: tuple[int, ...]  # context lengths (environment steps played since reset) at which a step is timed
    batches: tuple[int, ...]  # policy rows: 1, and an evaluation's 20 held-out test tasks played at once (quick: 4,
    # since AD's KV cache at 20 rows costs ~30 ms a step to fill)
    runs: int  # timed runs per point for the policies whose step does not re-encode a window
    steps_per_run: int  # consecutive steps per run: one DM-H block (c = 20), so every run includes the Mamba
    # update at the block boundary exactly as often as a rollout does
    slow_steps: int  # timed single steps per point for the policies that re-encode a window every step
    reencode_max: int  # longest context the re-encoding AD is timed at (each step is a full forward over it)
    hop_contexts: dict[int, tuple[int, ...]]  # batch -> contexts (at or past the window) the hopping KV cache is
    # timed at, each over one whole hop cycle (HOP steps, one re-encode)
    separate_batches: tuple[int, ...]  # batches the separate-token re-encoding AD is timed at (3x the tokens)
    protocol_episode_len: int  # Table 4: steps per online episode (HalfCheetah: 1000)
    protocol_episodes: int  # Table 4: online episodes (D4RL: 10)
    protocol_points: int  # context lengths the re-encoding cost is measured at for Table 4's projection


QUICK = OnlineSettings(contexts=(200, 1000), batches=(1, 4), runs=3, steps_per_run=20, slow_steps=2,
                       reencode_max=4000, hop_contexts={1: (4000,)}, separate_batches=(1,), protocol_episode_len=100,
                       protocol_episodes=10, protocol_points=4)
FULL = OnlineSettings(contexts=(200, 1000, 4000, 10_000, 20_000), batches=(1, 20), runs=10, steps_per_run=20,
                      slow_steps=3, reencode_max=4000, hop_contexts={1: (4000, 10_000), 20: (4000,)},
                      separate_batches=(1,), protocol_episode_len=1000, protocol_episodes=10, protocol_points=8)

# Table 4, HalfCheetah, 4000-step context: minutes of online testing for 10 episodes (the authors' GPU).
PAPER_MINUTES = {LABELS["ad-mamba"]: 6.16, REENCODING: 173.11, LABELS["dmh"]: 6.21}
RATIOS = ((LABELS["dmh"], LABELS["ad-mamba"]), (REENCODING, LABELS["dmh"]), (KV_CACHE, LABELS["dmh"]),
          (KV_HOP, LABELS["dmh"]), (SEPARATE_REENCODING, LABELS["dmh"]))
PROTOCOL_RATIOS = RATIOS[:4]  # Table 4's protocol runs the default token layout


class Rollout:
    """Drives a policy with HalfCheetah-shaped inputs: every row plays `episode_len`-step episodes in lockstep
    (HalfCheetah never ends early) and the action fed back is the policy's own output."""

    POOL = 256  # distinct random observations and rewards, cycled: drawing fresh ones would time the generator

    def __init__(self, policy: Policy, batch_size: int, episode_len: int = EPISODE_LEN, seed: int = 0) -> None:
        g, d = torch.Generator().manual_seed(seed), policy.device  # inputs drawn on the CPU, kept where the model is
        self.policy, self.episode_len = policy, episode_len
        self.obs = torch.randn(self.POOL, batch_size, OBS_DIM, generator=g).to(d)  # [pool, B, obs_dim]
        self.rewards = torch.rand(self.POOL, batch_size, generator=g).to(d)  # [pool, B]
        self.timesteps = torch.arange(episode_len, device=d)[:, None].repeat(1, batch_size)  # [T, B]
        self.done = (torch.zeros(batch_size, dtype=torch.bool, device=d), torch.ones(batch_size, dtype=torch.bool,
                                                                                     device=d))
        self.steps = 0  # steps played since reset: the context the policy holds
        policy.reset()

    def step(self) -> None:
        i, t = self.steps % self.POOL, self.steps % self.episode_len
        action = self.policy.act(self.obs[i], self.timesteps[t])  # [B, act_dim] tanh means
        self.policy.observe(action, self.rewards[i], self.done[t == self.episode_len - 1])
        self.steps += 1

    def play(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def advance_to(self, context: int) -> None:
        self.play(context - self.steps)

    def seconds_per_step(self, runs: int, steps_per_run: int) -> float:
        """Median over `runs` runs (after one untimed run) of a run's time / its steps; the context grows by the
        steps played, which the caller accounts for."""
        return median_seconds(lambda: self.play(steps_per_run), runs, warmup=1) / steps_per_run


class ReencodingAD(Policy):
    """AD (Transformer) online as the paper's baseline ran it: no cache, every act is a full forward of the model
    over the context so far (at most its last `context_len` steps), of which only the last output is used."""

    def __init__(self, model: nn.Module, batch_size: int, capacity: int) -> None:
        super().__init__(model, batch_size)
        self.window = model.cfg.context_len
        b = batch_size
        d = self.device
        self.history = dict(
            obs=torch.zeros(b, capacity, OBS_DIM, device=d),
            actions=torch.zeros(b, capacity, ACT_DIM, device=d),
            rewards=torch.zeros(b, capacity, device=d),
            episode_start=torch.zeros(b, capacity, dtype=torch.bool, device=d),
            timesteps=torch.zeros(b, capacity, dtype=torch.long, device=d),
        )  # every step since reset, [B, capacity, ...]; the model shifts actions and rewards itself
        self.reset()

    def reset(self) -> None:
        self._prepare()
        self.length = 0
        self.history["episode_start"][:, 0] = True

    def prefill(self, steps: int, episode_len: int, seed: int = 0) -> None:
        """The inputs a rollout of `steps` steps leaves (random, HalfCheetah-shaped), written at once."""
        g, b, h = torch.Generator().manual_seed(seed), self.batch_size, self.history
        h["obs"][:, :steps] = torch.randn(b, steps, OBS_DIM, generator=g)
        h["actions"][:, :steps] = torch.rand(b, steps, ACT_DIM, generator=g) * 2 - 1
        h["rewards"][:, :steps] = torch.rand(b, steps, generator=g)
        t = torch.arange(steps + 1) % episode_len
        h["timesteps"][:, :steps] = t[:steps]
        h["episode_start"][:, : steps + 1] = t == 0
        self.length = steps

    @torch.no_grad()
    def act(self, obs: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        n, h = self.length, self.history
        h["obs"][:, n], h["timesteps"][:, n] = obs, timestep
        start = max(0, n + 1 - self.window)
        return self.model({k: v[:, start : n + 1] for k, v in h.items()})[:, -1]  # [B, act_dim]

    @torch.no_grad()
    def observe(self, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor) -> None:
        n, h = self.length, self.history
        h["actions"][:, n], h["rewards"][:, n] = action, reward
        h["episode_start"][:, n + 1] = done
        self.length = n + 1


def build(algo: str, context_len: int | None = None, **fields: object) -> nn.Module:
    """The paper-sized `algo` in eval mode, the same weights every time (seeded)."""
    torch.manual_seed(0)
    return on_device(build_model(algo, paper_config(algo, context_len=context_len, **fields))).eval()


def policy_of(model: nn.Module, batch_size: int) -> Policy:
    """The model's own online policy, built the way evaluation builds it."""
    return model.policy(batch_size, target_return=12_000.0)  # HalfCheetah's target; AD ignores it


# ----------------------------------------------------------------------------------------------------------------------
# Per-step cost by context
# ----------------------------------------------------------------------------------------------------------------------


def stepped_rows(label: str, policy: Policy, batch: int, s: OnlineSettings, window: int | None = None) -> list[Row]:
    """Step one policy through the contexts in order, timing the steps after each. `window`: the policy holds at
    most this many steps (AD's KV cache); from there on every step slides the window and re-encodes it."""
    rollout, rows = Rollout(policy, batch), []
    for context in s.contexts:
        if window is not None and context > window:
            continue  # the cache is full from `window` on: the cost at any longer context is the one at `window`
        rollout.advance_to(context)
        if window is not None and context + (s.runs + 1) * s.steps_per_run > window:
            seconds, reps = rollout.seconds_per_step(s.slow_steps, 1), s.slow_steps
            note = f"window of {window} steps full: every step slides it and re-encodes {window - 1} steps"
        else:
            seconds, reps, note = rollout.seconds_per_step(s.runs, s.steps_per_run), s.runs, ""
        rows.append(row(PART, label, Measure.STEP_MS, seconds * 1e3, reps, context, batch, note))
    return rows


def hop_rows(batch: int, s: OnlineSettings) -> list[Row]:
    """The KV cache with `window_hop` = HOP: per-step cost averaged over one whole hop cycle (HOP steps, of which
    one drops HOP steps and re-encodes the rest), at contexts at or past the window."""
    model = build("ad-transformer", window_hop=HOP)
    rollout, rows = Rollout(policy_of(model, batch), batch), []
    for context in s.hop_contexts.get(batch, ()):
        rollout.advance_to(context)
        seconds = rollout.seconds_per_step(1, HOP)
        rows.append(row(PART, KV_HOP, Measure.STEP_MS, seconds * 1e3, 1, context, batch,
                        f"one cycle of {HOP} steps timed (one re-encode of {model.cfg.context_len - HOP} steps in it); "
                        f"attends to the last {model.cfg.context_len - HOP + 1}-{model.cfg.context_len} steps"))
    return rows


def reencoding_rows(model: nn.Module, batch: int, s: OnlineSettings, label: str = REENCODING) -> list[Row]:
    rows = []
    for context in s.contexts:
        if context > s.reencode_max:
            continue
        policy = ReencodingAD(model, batch, capacity=context + s.slow_steps + 2)
        rollout = Rollout(policy, batch)
        policy.prefill(context, EPISODE_LEN)
        rollout.steps = context
        seconds = rollout.seconds_per_step(s.slow_steps, 1)
        rows.append(row(PART, label, Measure.STEP_MS, seconds * 1e3, s.slow_steps, context, batch,
                        f"a full forward over the last min(context + 1, {model.cfg.context_len}) steps per step"
                        + (" (3 tokens each)" if model.cfg.tokens == "separate" else "")))
    return rows


def single_episode_rows(algo: str, batch: int, s: OnlineSettings) -> list[Row]:
    """DT / DM hold one episode: their context is their K-step window, filled by playing K steps of an episode."""
    rollout = Rollout(policy_of(build(algo), batch), batch)
    rollout.advance_to(DT_WINDOW)
    seconds = rollout.seconds_per_step(s.runs, s.steps_per_run)
    return [row(PART, LABELS[algo], Measure.STEP_MS, seconds * 1e3, s.runs, DT_WINDOW, batch,
                f"single episode: K = {DT_WINDOW}-step window, full from step {DT_WINDOW} on")]


# ----------------------------------------------------------------------------------------------------------------------
# Table 4's online testing time
# ----------------------------------------------------------------------------------------------------------------------


def protocol_rows(s: OnlineSettings) -> list[Row]:
    """Minutes for `protocol_episodes` online episodes of `protocol_episode_len` steps, one task (batch 1), with a
    context of 4 episodes (Table 4: 4000 steps = 4 x 1000, 10 episodes). DM-H and AD (Mamba) are timed over the whole
    rollout. AD (Transformer) is timed in part and projected, because its 10,000 steps would take hours here."""
    episode, total = s.protocol_episode_len, s.protocol_episodes * s.protocol_episode_len
    window = 4 * episode
    rows = []
    for algo in ("dmh", "ad-mamba"):
        rollout = Rollout(policy_of(build(algo), 1), 1, episode)
        seconds = median_seconds(lambda r=rollout: r.play(total), repetitions=1, warmup=0)
        rows.append(row(PART, LABELS[algo], Measure.EPISODES_MIN, seconds / 60, 1, window, 1,
                        f"{total} steps timed as one rollout"))
    hopping = build("ad-transformer", context_len=window, window_hop=window // 4)
    rollout = Rollout(policy_of(hopping, 1), 1, episode)
    seconds = median_seconds(lambda: rollout.play(total), repetitions=1, warmup=0)
    rows.append(row(PART, KV_HOP, Measure.EPISODES_MIN, seconds / 60, 1, window, 1,
                    f"{total} steps timed as one rollout, hop {window // 4}"))
    model = build("ad-transformer", context_len=window)
    rollout = Rollout(policy_of(model, 1), 1, episode)
    fill = median_seconds(lambda: rollout.play(window), repetitions=1, warmup=0)
    slide = rollout.seconds_per_step(s.slow_steps, 1)
    rows.append(row(PART, KV_CACHE, Measure.EPISODES_MIN, (fill + (total - window) * slide) / 60, s.slow_steps, window,
                    1, f"first {window} steps timed; the other {total - window} projected from the median sliding "
                       "step"))
    lengths = [round(window * k / s.protocol_points) for k in range(1, s.protocol_points + 1)]
    costs = []
    for length in lengths:  # a step at context `length - 1` re-encodes `length` steps
        policy = ReencodingAD(model, 1, capacity=length + s.slow_steps + 2)
        reencoding = Rollout(policy, 1, episode)
        policy.prefill(length - 1, episode)
        reencoding.steps = length - 1
        costs.append(reencoding.seconds_per_step(s.slow_steps, 1))
    encoded = np.minimum(np.arange(1, total + 1), window)  # steps each of the rollout's forwards covers
    minutes = float(np.interp(encoded, lengths, costs).sum()) / 60
    rows.append(row(PART, REENCODING, Measure.EPISODES_MIN, minutes, s.slow_steps, window, 1,
                    f"projected: the step cost measured at {len(lengths)} context lengths up to {window}, "
                    f"interpolated over the {total} steps"))
    return rows + ratio_rows(rows, PROTOCOL_RATIOS, Measure.EPISODES_MIN, [(window, 1)])


# ----------------------------------------------------------------------------------------------------------------------


def run(s: OnlineSettings, threads: int) -> list[Row]:
    """Every online measurement, then the ratios between them."""
    rows: list[Row] = []
    for batch in s.batches:
        for algo in ("dmh", "ad-mamba"):
            rows += stepped_rows(LABELS[algo], policy_of(build(algo), batch), batch, s)
        ad = build("ad-transformer")
        rows += stepped_rows(KV_CACHE, policy_of(ad, batch), batch, s, window=ad.cfg.context_len)
        rows += reencoding_rows(ad, batch, s)
        rows += hop_rows(batch, s)
        if batch in s.separate_batches:
            rows += reencoding_rows(build("ad-transformer", tokens="separate"), batch, s, SEPARATE_REENCODING)
        for algo in ("dt", "dm"):
            rows += single_episode_rows(algo, batch, s)
    keys = [(c, b) for b in s.batches for c in s.contexts]
    rows += ratio_rows(rows, RATIOS, Measure.STEP_MS, keys)
    return rows + protocol_rows(s)


def table(rows: list[Row], s: OnlineSettings) -> str:
    models = [LABELS["dmh"], LABELS["ad-mamba"], KV_CACHE, KV_HOP, REENCODING, SEPARATE_REENCODING, LABELS["dt"],
              LABELS["dm"]]
    contexts = [DT_WINDOW, *s.contexts]
    window = 4 * s.protocol_episode_len
    steps = wide_table(
        "Online: ms per environment step (act + observe), context filled first", rows, models, Measure.STEP_MS,
        contexts, s.batches, notes=[
            f"DT and DM hold one episode: their context is their K = {DT_WINDOW}-step window (column {DT_WINDOW}).",
            f"{KV_CACHE}: the project's policy, window {AD_WINDOW} steps; at {AD_WINDOW} the window is full and every",
            f"  step re-encodes it, so beyond {AD_WINDOW} it costs what it costs at {AD_WINDOW} (not run: filling it",
            "  step by step past its window would take hours).",
            f"{KV_HOP}: a full window drops {HOP} steps at once (window_hop), so it re-encodes once per {HOP} steps;",
            "  its cost is averaged over one such cycle.",
            f"{REENCODING}: a full forward per step (the paper's baseline); not run beyond {s.reencode_max} steps.",
            f"{SEPARATE_REENCODING}: the same with AD's (s, a, r) as three tokens per step (tokens=separate).",
        ])
    ratios = wide_table("Online: ratios of the per-step costs above", rows, [ratio_label(*p) for p in RATIOS],
                        ratio_of(Measure.STEP_MS), s.contexts, s.batches)
    body, notes = [], []
    for label in (LABELS["dmh"], LABELS["ad-mamba"], KV_CACHE, KV_HOP, REENCODING):
        r = find(rows, label, Measure.EPISODES_MIN, window, 1)
        paper = PAPER_MINUTES.get(label) if window == AD_WINDOW else None
        body.append([label, number(r.value if r else None), number(paper)])
        notes.append(f"{label}: {r.note if r else 'not measured'}.")
    for pair in PROTOCOL_RATIOS:
        r = find(rows, ratio_label(*pair), ratio_of(Measure.EPISODES_MIN), window, 1)
        top, bottom = PAPER_MINUTES.get(pair[0]), PAPER_MINUTES.get(pair[1])
        paper = top / bottom if window == AD_WINDOW and top and bottom else None
        body.append([f"{ratio_label(*pair)} (x)", number(r.value if r else None), number(paper)])
    notes.append("Model time only (no environment simulation). Paper: Table 4, HalfCheetah, GPU; its AD (Transformer) "
                 "re-encodes.")
    protocol = format_table(
        f"Online (Table 4 protocol): minutes for {s.protocol_episodes} episodes x {s.protocol_episode_len} steps, "
        f"context {window} steps, batch 1", ["", "here", "paper (GPU)"], body, notes)
    return "\n".join([steps, ratios, protocol])

