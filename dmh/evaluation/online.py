"""Online in-context evaluation: a trained model plays m episodes on each held-out test task with no gradient updates,
carrying its context across episodes. All test tasks run at once as rows of one batched environment core; each row
restarts its own episodes, so tasks whose episodes end early (Darkroom Hard, Key-to-Door, D4RL falls) never wait.

Reported (paper §2.7): the return of every episode index (the in-context learning curve) and of the last episode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dmh.tasks import TaskSpec, held_out_tasks, make_eval_core


@dataclass
class EvalResult:
    """Returns of every (test task, episode index), and the wall time of online testing."""

    returns: np.ndarray  # [tasks, episodes]
    online_seconds: float

    @property
    def curve(self) -> np.ndarray:
        """[episodes] mean return over test tasks of each episode index."""
        return self.returns.mean(axis=0)

    @property
    def last_return(self) -> float:
        """Mean over test tasks of the last episode's return: the number the paper reports."""
        return float(self.returns[:, -1].mean())

    @property
    def first_return(self) -> float:
        """Mean over test tasks of the first episode's return (before any in-context learning)."""
        return float(self.returns[:, 0].mean())

    @property
    def last_return_se(self) -> float:
        """Standard error over test tasks of ``last_return`` (0 with one task): one evaluation's own noise."""
        tasks = self.returns.shape[0]
        return float(self.returns[:, -1].std(ddof=1) / np.sqrt(tasks)) if tasks > 1 else 0.0


def choose_actions(out: torch.Tensor, discrete: bool, sample: bool, generator: torch.Generator) -> torch.Tensor:
    """Policy outputs [B, act_dim] on any device → actions on the CPU, where the environments take them (``.numpy()``
    refuses a CUDA tensor): sampled (with the CPU ``generator``, so a seed draws the same actions from the same
    outputs on every device) or argmax for logits, the (tanh-bounded) mean otherwise."""
    out = out.cpu()  # one small copy per step: [B, act_dim]
    if not discrete:
        return out
    if sample:
        return torch.multinomial(torch.softmax(out.float(), dim=-1), 1, generator=generator).squeeze(-1)
    return out.argmax(dim=-1)


@torch.no_grad()
def evaluate_online(model: nn.Module, spec: TaskSpec, obs_mean: np.ndarray, obs_std: np.ndarray, *,
                    n_tasks: int = 0, episodes: int = 0, seed: int = 0, sample: bool = True) -> EvalResult:
    """Play ``episodes`` (default: the paper's m) episodes on ``n_tasks`` (default: all) held-out tasks."""
    episodes = episodes or spec.eval_episodes
    tasks = held_out_tasks(spec, n_tasks or None)
    rows = len(tasks)
    rng = np.random.default_rng(seed)
    # Every draw of the evaluation follows its seed: the environments' (rng), the actions' and the policy's own (a
    # DM-H sub-goal z), never torch's global stream, which whatever ran before in the process has moved.
    generator = torch.Generator().manual_seed(seed)
    core = make_eval_core(spec, rows)
    policy = model.policy(rows, target_return=spec.target_return, generator=generator)
    policy.reset()
    start = time.perf_counter()
    obs = core.reset(rng, tasks if spec.kind == "grid" else None)
    returns = np.zeros((rows, episodes))
    finished = np.zeros(rows, dtype=np.int64)  # episodes completed per row
    episode_return = np.zeros(rows)
    timestep = np.zeros(rows, dtype=np.int64)
    while (finished < episodes).any():
        x = torch.as_tensor((obs - obs_mean) / obs_std, dtype=torch.float32)
        out = policy.act(x, torch.as_tensor(timestep))
        action = choose_actions(out, spec.discrete, sample, generator)
        obs, reward, terminated, truncated = core.step(action.numpy())
        done = terminated | truncated
        policy.observe(action, torch.as_tensor(reward, dtype=torch.float32), torch.as_tensor(done),
                       torch.as_tensor(terminated))
        episode_return += reward
        timestep += 1
        for b in np.flatnonzero(done & (finished < episodes)):
            returns[b, finished[b]] = episode_return[b]
        finished += done
        episode_return[done] = 0.0
        timestep[done] = 0
        if done.any():
            obs = core.reset(rng, rows=done)
    return EvalResult(returns=returns, online_seconds=time.perf_counter() - start)
