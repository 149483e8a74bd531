"""Online evaluation hands actions to the environments on the CPU whatever device the model is on: a CUDA tensor's
``.numpy()`` fails, and so does sampling it with a CPU ``torch.Generator``. On a CPU-only machine ``OnGpu`` stands in
for a CUDA tensor (it refuses both, as CUDA does); the tests marked ``cuda`` run the real thing on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmh.evaluation.online import choose_actions, evaluate_online
from dmh.training.config import make_config
from dmh.training.train import Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class OnGpu(torch.Tensor):
    """A CPU tensor that behaves like a CUDA one where evaluation once relied on the CPU: ``.numpy()`` and sampling
    with a CPU generator raise CUDA's errors; ``.cpu()`` gives a plain CPU tensor back. Results of other operations
    stay ``OnGpu``, as results of operations on CUDA tensors stay on CUDA."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        generator = kwargs.get("generator")
        if func is torch.multinomial and generator is not None and generator.device.type == "cpu":
            raise RuntimeError("Expected a 'cuda' device type for generator but found 'cpu'")
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor).clone()
        return super().__torch_function__(func, types, args, kwargs)


def test_the_stand_in_refuses_what_a_cuda_tensor_refuses() -> None:
    x = torch.zeros(2, 3).as_subclass(OnGpu)
    with pytest.raises(TypeError, match="cuda"):
        x.numpy()
    with pytest.raises(RuntimeError, match="generator"):
        torch.multinomial(torch.softmax(x, -1), 1, generator=torch.Generator())
    assert type(x.cpu()) is torch.Tensor


@pytest.mark.parametrize(("discrete", "sample"), [(True, True), (True, False), (False, False)])
def test_actions_from_outputs_on_a_gpu_come_back_as_the_same_actions_on_the_cpu(discrete, sample) -> None:
    out = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    on_cpu = choose_actions(out, discrete, sample, torch.Generator().manual_seed(0))
    on_gpu = choose_actions(out.clone().as_subclass(OnGpu), discrete, sample, torch.Generator().manual_seed(0))
    assert type(on_gpu) is torch.Tensor and on_gpu.device.type == "cpu"
    np.testing.assert_array_equal(on_gpu.numpy(), on_cpu.numpy())  # the CPU generator draws the same actions


class OutputsOnGpu:
    """A policy whose outputs come back like a CUDA model's (``OnGpu``); everything else is the wrapped policy's."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs, timestep):
        return self.policy.act(obs, timestep).as_subclass(OnGpu)

    def observe(self, action, reward, done, terminated=None) -> None:
        assert type(action) is torch.Tensor  # what the environment was given, fed back: on the CPU
        self.policy.observe(action, reward, done, terminated)


@pytest.mark.parametrize("algo", ["dmh", "ad-transformer"])
def test_online_evaluation_of_a_model_whose_outputs_live_on_a_gpu_plays_the_same_episodes(workdir, algo,
                                                                                           monkeypatch) -> None:
    trainer = Trainer(make_config(algo, "darkroom", "smoke", sets=["steps=1"]))
    expected = trainer.evaluate().returns
    real_policy = trainer.model.policy
    monkeypatch.setattr(trainer.model, "policy", lambda *args, **kwargs: OutputsOnGpu(real_policy(*args, **kwargs)))
    np.testing.assert_array_equal(trainer.evaluate().returns, expected)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(("discrete", "sample"), [(True, True), (True, False), (False, False)])
def test_actions_from_cuda_outputs_are_numpy_ready_and_sampled_with_the_cpu_generator(discrete, sample) -> None:
    out = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    expected = choose_actions(out, discrete, sample, torch.Generator().manual_seed(0))
    got = choose_actions(out.cuda(), discrete, sample, torch.Generator().manual_seed(0))
    assert got.device.type == "cpu"
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("algo", ["dmh", "dm", "dt", "ad-transformer", "ad-mamba"])
def test_a_model_on_cuda_evaluates_online(workdir, algo) -> None:
    trainer = Trainer(make_config(algo, "darkroom", "smoke", sets=["steps=1", "device=cuda"]))
    assert next(trainer.model.parameters()).is_cuda
    result = evaluate_online(trainer.model, trainer.spec, trainer.obs_mean, trainer.obs_std, n_tasks=2, episodes=2)
    assert result.returns.shape == (2, 2) and np.isfinite(result.returns).all()


class Played:
    """Wraps a policy and keeps, for every row, what the evaluation loop fed it and what it answered."""

    def __init__(self, policy) -> None:
        self.policy, self.steps = policy, {"obs": [], "t": [], "out": [], "a": [], "r": [], "d": [], "term": []}

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs, timestep):
        out = self.policy.act(obs, timestep)
        for key, value in (("obs", obs), ("t", timestep), ("out", out)):
            self.steps[key].append(torch.as_tensor(value).clone())
        return out

    def observe(self, action, reward, done, terminated=None) -> None:
        for key, value in (("a", action), ("r", reward), ("d", done), ("term", terminated)):
            self.steps[key].append(torch.as_tensor(value).clone())
        self.policy.observe(action, reward, done, terminated)

    def stacked(self) -> dict[str, torch.Tensor]:
        """Every record as [rows, steps, ...]."""
        return {k: torch.stack(v, dim=1) for k, v in self.steps.items()}

    def as_batch(self) -> dict[str, torch.Tensor]:
        s = self.stacked()
        return dict(obs=s["obs"].float(), actions=s["a"].long(), rewards=s["r"].float(), timesteps=s["t"].long(),
                    episode_start=s["t"] == 0, done=s["d"].bool(), terminal=s["term"].bool(),
                    mask=torch.ones_like(s["d"]).bool(), rtg=torch.zeros_like(s["r"]).float())


def play_online(monkeypatch, model, spec, obs_mean, obs_std, **kwargs) -> Played:
    """``evaluate_online`` of ``model`` with its policy recorded."""
    made = []
    real = model.policy
    monkeypatch.setattr(model, "policy", lambda *a, **k: made.append(Played(real(*a, **k))) or made[-1])
    evaluate_online(model, spec, obs_mean, obs_std, **kwargs)
    monkeypatch.undo()
    (played,) = made
    return played


@pytest.mark.parametrize("algo", ["dmh", "ad-mamba"])  # the recurrent policies: their context is every step played
def test_what_the_policy_answers_in_the_online_loop_is_the_forward_over_the_steps_it_played(workdir, algo,
                                                                                           monkeypatch) -> None:
    """The loop advances its timestep array in place; a policy that kept the previous step's timestep without a copy
    (DM-H did) embedded the previous (a, r) at the wrong time within a block, which the parity tests, driving the
    policy with fresh slices, could not see."""
    sets = ["steps=1", "model.dropout=0.0", *(["model.z_eval=mean"] if algo == "dmh" else [])]
    trainer = Trainer(make_config(algo, "darkroom", "smoke", sets=sets))
    played = play_online(monkeypatch, trainer.model, trainer.spec, trainer.obs_mean, trainer.obs_std, n_tasks=3,
                         episodes=3)
    trainer.model.eval()
    with torch.no_grad():
        forward = trainer.model(played.as_batch())
    torch.testing.assert_close(torch.stack(played.steps["out"], dim=1), forward, atol=1e-5, rtol=1e-4)


class Oracle:
    """A stand-in model whose policy knows each row's task: it walks straight to the goal (Key-to-Door: to the key,
    then to the door) and stays there. It reads the observation as the model does, normalised, and undoes the
    normalisation with the statistics the evaluation was given."""

    def __init__(self, tasks: np.ndarray, obs_mean: np.ndarray, obs_std: np.ndarray) -> None:
        self.tasks, self.obs_mean, self.obs_std = tasks, obs_mean, obs_std

    def policy(self, rows: int, target_return: float, generator: torch.Generator) -> Oracle:
        assert rows == len(self.tasks)
        return self

    def reset(self) -> None:
        self.has_key = np.zeros(len(self.tasks), dtype=bool)

    def act(self, obs: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        pos = np.rint(obs.numpy() * self.obs_std + self.obs_mean).astype(np.int64)
        target = np.where(self.has_key[:, None], self.tasks[:, -2:], self.tasks[:, :2])  # Darkrooms: no key
        dx, dy = (target - pos).T
        action = np.select([dx < 0, dx > 0, dy > 0, dy < 0], [0, 1, 2, 3], default=4)  # left, right, up, down, stay
        logits = torch.full((len(pos), 5), -1e9)
        logits[torch.arange(len(pos)), torch.as_tensor(action)] = 0.0
        return logits

    def observe(self, action: torch.Tensor, reward: torch.Tensor, done: torch.Tensor, terminated: torch.Tensor) -> None:
        if self.tasks.shape[1] == 4:
            self.has_key |= reward.numpy() > 0
        self.has_key[done.numpy()] = False


@pytest.mark.parametrize("task", ["darkroom", "darkroom-hard", "key-to-door", "large-darkroom", "large-darkroom-hard",
                                  "large-key-to-door"])
def test_an_agent_that_knows_each_held_out_task_scores_its_best_return_in_every_online_episode(task) -> None:
    """The evaluation plays each row on its own held-out task, resets rows whose episodes end, and counts returns per
    episode, on the Large families as on the small ones: a policy told each row's task gets the most that task allows
    (Darkroom: every step from reaching the goal to the horizon), in all the paper's 20 episodes."""
    from dmh.envs import grid_family
    from dmh.tasks import held_out_tasks, resolve_task

    spec = resolve_task(task)
    family = grid_family(task)
    tasks = held_out_tasks(spec)
    obs_mean, obs_std = np.full(2, family.size / 2 - 0.5), np.full(2, family.size / 3)
    result = evaluate_online(Oracle(tasks, obs_mean, obs_std), spec, obs_mean, obs_std, seed=3)
    assert result.returns.shape == (len(tasks), 20)
    if family.rule == "darkroom":
        distance = np.abs(tasks - family.size // 2).sum(axis=1)  # Darkroom starts at the grid's centre
        best = family.horizon - np.maximum(distance, 1) + 1  # rewarded on arrival and on every step after it
    else:
        best = np.full(len(tasks), family.max_return)
    np.testing.assert_array_equal(result.returns, np.repeat(best[:, None], 20, axis=1))
