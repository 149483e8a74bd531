"""dmh train / evaluate: exact resume, determinism, run status, bad configurations, the paper's metrics in MLflow."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from dmh.cli import main
from dmh.errors import DmhError
from dmh.tasks import held_out_histories
from dmh.training.checkpoint import load_checkpoint, restore_rng, rng_state
from dmh.training.config import config_from_dict, make_config, torch_device
from dmh.training.contexts import to_device
from dmh.training.run import train_run
from dmh.training.train import Trainer

ALGOS = ["dmh", "dm", "dt", "ad-transformer", "ad-mamba"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def smoke(algo="dmh", task="darkroom", **sets):
    return make_config(algo, task, "smoke", sets=[f"{k}={v}" for k, v in sets.items()])


def parameters(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("algo", ALGOS)
def test_interrupted_and_resumed_training_ends_with_exactly_the_uninterrupted_parameters(workdir, algo):
    straight = Trainer(smoke(algo, steps=6, checkpoint_every=2, run_dir="a"))
    straight.fit()
    interrupted = Trainer(smoke(algo, steps=6, checkpoint_every=2, run_dir="b"))
    assert interrupted.fit(stop_after=3) is None  # dies after update 3; the last checkpoint is from update 2
    resumed = Trainer(smoke(algo, steps=6, checkpoint_every=2, run_dir="b"))
    assert resumed.resume_if_possible() and resumed.step == 2
    resumed.fit()
    expected, got = parameters(straight.model), parameters(resumed.model)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("algo", ["dmh", "ad-transformer"])
def test_a_checkpoint_made_on_one_device_resumes_on_another_and_auto_picks_this_machines(workdir, algo):
    first = Trainer(smoke(algo, steps=4, checkpoint_every=2, device="cpu"))
    assert first.fit(stop_after=2) is None
    resumed = Trainer(smoke(algo, steps=4, checkpoint_every=2, device="auto"))
    assert resumed.resume_if_possible() and resumed.step == 2
    assert next(resumed.model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resumed.fit().steps == 4


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("algo", ALGOS)
def test_training_on_cuda_keeps_the_model_and_its_batches_on_the_gpu(workdir, algo):
    trainer = Trainer(smoke(algo, steps=2, device="cuda"))
    result = trainer.fit()
    assert next(trainer.model.parameters()).is_cuda and result.evaluation.returns.shape[0] > 0


def test_the_random_streams_of_a_cuda_run_include_its_devices_and_those_of_a_cpu_run_do_not(monkeypatch):
    """Training on a GPU draws dropout masks, DM-H's z and block choices from the GPU's generator: a checkpoint that
    left it out would resume with the stream of step 0. torch.cuda is faked here (this test runs without a GPU)."""
    saved, restored = torch.tensor([7, 8], dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved if device.type == "cuda" else None)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    sampler, gpu = np.random.default_rng(0), torch.device("cuda", 1)
    state = rng_state(sampler, gpu)
    assert torch.equal(state["cuda"], saved)
    restore_rng(state, sampler, gpu)
    assert len(restored) == 1 and torch.equal(restored[0][0], saved) and restored[0][1] == gpu
    assert "cuda" not in rng_state(sampler, torch.device("cpu"))
    restore_rng(state, sampler, torch.device("cpu"))  # a GPU checkpoint resumed on a CPU: its CUDA stream unused
    restore_rng(rng_state(sampler, torch.device("cpu")), sampler, gpu)  # a CPU checkpoint resumed on a GPU
    assert len(restored) == 1


def test_a_batch_for_the_cpu_is_moved_without_pinning_memory(monkeypatch):
    def refuse(self):
        raise AssertionError("pinned memory is for copies to a GPU (and fails on a CPU-only torch)")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    batch = {"obs": torch.randn(2, 3), "mask": torch.ones(2, 3, dtype=torch.bool)}
    moved = to_device(batch, torch.device("cpu"))
    assert all(torch.equal(moved[k], batch[k]) for k in batch)


@pytest.mark.cuda
@needs_cuda
def test_a_batch_goes_to_the_gpu_through_pinned_memory_unchanged(monkeypatch):
    pinned = []
    real_pin = torch.Tensor.pin_memory

    def pin(self):
        pinned.append(self.shape)
        return real_pin(self)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    batch = {"obs": torch.randn(2, 3), "actions": torch.arange(6).view(2, 3), "mask": torch.ones(2, 3).bool()}
    moved = to_device(batch, torch.device("cuda"))
    assert len(pinned) == len(batch)
    for key, value in batch.items():
        assert moved[key].is_cuda and moved[key].dtype == value.dtype and torch.equal(moved[key].cpu(), value)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("algo", ["dmh", "ad-transformer"])
def test_a_cuda_run_resumed_from_its_checkpoint_continues_its_gpu_random_stream(workdir, algo):
    """The GPU generator ends where the uninterrupted run's ends (the same draws in the same order); the
    parameters are not compared bitwise because some CUDA backward kernels are not deterministic."""
    settings = dict(steps=6, checkpoint_every=2, device="cuda", **{"model.dropout": 0.1})
    Trainer(smoke(algo, run_dir="a", **settings)).fit()
    straight = torch.cuda.get_rng_state()
    assert Trainer(smoke(algo, run_dir="b", **settings)).fit(stop_after=3) is None
    resumed = Trainer(smoke(algo, run_dir="b", **settings))
    assert resumed.resume_if_possible() and "cuda" in load_checkpoint(resumed.checkpoint_path)["rng"]
    resumed.fit()
    assert torch.equal(torch.cuda.get_rng_state(), straight)


def test_a_gpu_number_the_machine_does_not_have_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert torch_device("cuda:0") == torch.device("cuda", 0) and torch_device("auto").type == "cuda"
    with pytest.raises(DmhError, match="device cuda:1: torch sees 1 GPU"):
        torch_device("cuda:1")


def test_a_run_records_the_device_it_trains_on_not_the_machines_first_gpu(workdir, monkeypatch):
    import dmh.tracking.run as tracked

    real_tags = tracked.run_tags
    monkeypatch.setattr(tracked, "run_tags", lambda device=None: {**real_tags(device), "device": "cuda:0 (a GPU)"})
    result = train_run(smoke(steps=1, device="cpu"))
    run = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_run(result.run_id)
    assert run.data.tags["device"] == "cpu"


def test_same_seed_gives_identical_losses_and_returns_and_another_seed_differs(workdir):
    runs = [Trainer(smoke(seed=s, run_dir=f"r{i}")) for i, s in enumerate([0, 0, 1])]
    results = [t.fit() for t in runs]
    assert results[0].final_loss == results[1].final_loss
    assert (results[0].evaluation.returns == results[1].evaluation.returns).all()
    assert results[0].final_loss != results[2].final_loss


def test_a_tracked_run_records_the_paper_metrics_params_tags_and_artifacts(workdir):
    result = train_run(smoke())
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    for key in ("algo", "env", "c", "n_context", "valuable_subgoals", "seed", "preset", "backend", "lr",
                "model.d_model"):
        assert key in params, key
    assert (params["algo"], params["env"], params["c"], params["n_context"]) == ("dmh", "dmh/Darkroom-v0", "5", "2")
    assert params["backend"] == "torch"
    assert {"git_commit", "host", "device"} <= set(run.data.tags)
    metrics = run.data.metrics
    for key in ("train/loss", "eval/last_return", "time/offline_h_per_10k_updates", "time/online_min"):
        assert key in metrics, key
    curve = client.get_metric_history(result.run_id, "eval/return")
    assert [m.step for m in curve] == [0, 1]  # one point per episode index
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "checkpoint", "in_context_curve.csv", "in_context_curve.png"} <= artifacts


def test_a_dmh_run_logs_its_two_loss_branches_and_each_evaluation_s_first_last_and_noise(workdir):
    result = train_run(smoke(steps=4, log_every=2, eval_every=2))
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(result.run_id, key)}

    total, z, goal = history("train/loss"), history("train/loss_z"), history("train/loss_goal")
    assert set(total) == set(z) == set(goal) == {2, 4}
    for step in total:  # the total is the z branch plus half the f(s_g) branch (subgoal_loss_weight 0.5)
        assert total[step] == pytest.approx(z[step] + 0.5 * goal[step], rel=1e-5)
    during = [history(f"eval/{k}_during_training") for k in ("last_return", "first_return", "last_return_se")]
    assert all(set(h) == {2} for h in during)  # evaluations during training: at 2, not at the end (that is final)
    final = [history(f"eval/{k}") for k in ("last_return", "first_return", "last_return_se")]
    assert all(set(h) == {4} for h in final)
    assert final[0][4] == pytest.approx(result.evaluation.returns[:, -1].mean())
    assert final[1][4] == pytest.approx(result.evaluation.returns[:, 0].mean())


def test_a_grid_world_run_logs_its_loss_on_the_held_out_tasks_histories_at_every_evaluation(workdir):
    from dmh.envs.gridworld import tasks

    trainer = Trainer(smoke("ad-mamba", steps=4, log_every=2, eval_every=2))
    held_out = trainer.held_out_batch
    assert held_out is not None and held_out["obs"].shape[0] == trainer.cfg.batch_size
    before = trainer.held_out_loss()
    assert trainer.held_out_loss() == before  # one fixed batch, eval mode: the same number until the model changes
    result = train_run(smoke("ad-mamba", steps=4, log_every=2, eval_every=2))
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    during = client.get_metric_history(result.run_id, "eval/held_out_loss_during_training")
    final = client.get_metric_history(result.run_id, "eval/held_out_loss")
    assert [m.step for m in during] == [2] and [m.step for m in final] == [4]
    assert np.isfinite([m.value for m in (*during, *final)]).all()
    data = held_out_histories(trainer.spec, trainer.cfg.data_steps, trainer.cfg.data_seed, None)
    assert data.metadata["split"] == "test"
    assert {tuple(t) for t in data.tasks} <= {tuple(t) for t in tasks(trainer.spec.env_id, "test")}
    assert not {tuple(t) for t in data.tasks} & {tuple(t) for t in tasks(trainer.spec.env_id, "train")}


def test_a_model_without_loss_parts_logs_only_its_total(workdir):
    result = train_run(smoke("ad-mamba", steps=2, log_every=1))
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert {"train/loss_z", "train/loss_goal"}.isdisjoint(client.get_run(result.run_id).data.metrics)


def test_resume_continues_the_same_mlflow_run(workdir):
    first = train_run(smoke())
    again = train_run(smoke(), resume=True)
    assert again.run_id == first.run_id
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert len(client.search_runs([client.get_experiment_by_name("dmh").experiment_id])) == 1


def test_a_run_that_raises_ends_failed(workdir, monkeypatch):
    def boom(self):
        raise RuntimeError("diverged")

    monkeypatch.setattr(Trainer, "train_step", boom)
    with pytest.raises(RuntimeError, match="diverged"):
        train_run(smoke())
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("dmh").experiment_id])
    assert run.info.status == "FAILED"


def test_sigterm_ends_the_run_killed_and_resume_finishes_it(workdir):
    env = {**os.environ, "DMH_DATA_DIR": os.environ["DMH_DATA_DIR"]}
    cmd = [sys.executable, "-m", "dmh.cli", "train", "--algo", "ad-transformer", "--task", "darkroom",
           "--preset", "smoke", "--set", "steps=100000", "--set", "checkpoint_every=5"]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt_dir = workdir / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(ckpt_dir.glob("*/checkpoint.pt")):
        time.sleep(0.5)
    assert list(ckpt_dir.glob("*/checkpoint.pt")), proc.stdout.read().decode() if proc.poll() is not None else "no ckpt"
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    output = proc.stdout.read().decode()  # what the run said while it stopped, shown if the status is wrong
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("dmh").experiment_id])
    assert run.info.status == "KILLED", output[-3000:]
    (ckpt,) = ckpt_dir.glob("*/checkpoint.pt")
    assert load_checkpoint(ckpt)["run_id"] == run.info.run_id


@pytest.mark.parametrize("argv,message", [
    (["--algo", "dmh", "--task", "nowhere"], "unknown task 'nowhere'"),
    (["--algo", "dmh", "--task", "darkroom", "--set", "c=0"], "c must be a positive integer"),
    (["--algo", "dmh", "--task", "darkroom", "--set", "c=-3"], "c must be a positive integer"),
    (["--algo", "dmh", "--task", "darkroom", "--set", "c=21"], "c=21 is longer than an episode of darkroom"),
    (["--algo", "dmh", "--task", "darkroom", "--set", "n_context=-1"], "n_context must be a positive integer"),
    (["--algo", "dmh", "--task", "darkroom", "--set", "batch_size=0"], "batch_size must be a positive integer"),
    (["--algo", "dmh", "--task", "darkroom", "--set", "nonsense=1"], "unknown setting 'nonsense'"),
    (["--algo", "dmh", "--task", "darkroom", "--set", "model.wings=2"], "model: unknown field(s) wings"),
    (["--algo", "dmh", "--task", "tmaze-0"], "memory_length must be a positive integer"),
    (["--algo", "dmh", "--task", "darkroom", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["--algo", "dmh", "--task", "darkroom", "--set", "device=gpu"], "device must be auto, cpu, cuda or cuda:N"),
    *([(["--algo", "dmh", "--task", "darkroom", "--set", "device=cuda"], "torch sees no CUDA GPU here")]
      if not torch.cuda.is_available() else []),
])
def test_bad_configuration_is_rejected_before_any_work_naming_the_field(workdir, capsys, argv, message):
    assert main(["train", "--preset", "smoke", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "runs").exists()


def test_unknown_algo_is_rejected_by_the_command_line(workdir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--algo", "ppo", "--task", "darkroom"])
    assert exc.value.code == 2 and "invalid choice: 'ppo'" in capsys.readouterr().err


def test_a_dataset_for_another_environment_is_rejected(workdir, capsys):
    assert main(["data", "tmaze", "--memory-length", "10", "--out", "t.h5"]) == 0
    assert main(["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke", "--set",
                 "dataset_path=t.h5"]) == 2
    assert "is for tmaze-10, not for task darkroom" in capsys.readouterr().err


def test_resuming_with_a_checkpoint_of_another_architecture_is_rejected(workdir):
    Trainer(smoke(run_dir="x")).fit()
    other = Trainer(smoke(run_dir="x"))
    payload_cfg = load_checkpoint(other.checkpoint_path)
    payload_cfg["model"]["embed_timestep.weight"] = torch.zeros(3, 3)
    from dmh.training.checkpoint import load_weights

    with pytest.raises(DmhError, match="different architecture"):
        load_weights(other.model, payload_cfg["model"], "checkpoint")


def test_an_existing_run_is_not_overwritten_without_resume(workdir):
    train_run(smoke())
    with pytest.raises(DmhError, match="pass --resume"):
        train_run(smoke())


def test_a_corrupt_checkpoint_is_a_clear_error(workdir):
    (workdir / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DmhError, match="not a readable dmh checkpoint"):
        load_checkpoint(workdir / "bad.pt")


def test_set_values_are_typed_like_the_field_they_override():
    cfg = make_config("dmh", "darkroom", "smoke", sets=["lr=2e-3", "steps=7", "valuable_subgoals=false",
                                                         "dataset_path=null", "model.d_model=24"])
    assert (cfg.lr, cfg.steps, cfg.valuable_subgoals, cfg.dataset_path, cfg.model.d_model) == (
        0.002, 7, False, None, 24)


def test_a_checkpoint_of_format_1_with_the_old_block_size_name_still_loads_and_evaluates(workdir):
    from dmh.training.checkpoint import model_from_checkpoint

    run = Trainer(smoke("dmh", steps=2, checkpoint_every=2, c=3))
    run.fit()
    payload = load_checkpoint(run.checkpoint_path)
    old_model = dict(payload["config"]["model"])
    old_model["block_size"] = old_model.pop("c")
    old_config = {**payload["config"], "model": {"d_model": old_model["d_model"]},
                  "history_window": "auto", "context_sampling": "auto", "dt_context_len": 0}  # then: overrides
    torch.save({**payload, "format": 1, "config": old_config, "model_config": old_model}, run.checkpoint_path)
    loaded = load_checkpoint(run.checkpoint_path)
    assert config_from_dict(loaded["config"]) == run.cfg  # the settings it left to the task, filled in as today
    model = model_from_checkpoint(loaded)
    assert model.cfg.c == 3
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in model.state_dict().items())


def test_evaluating_a_run_at_other_seeds_prints_each_and_their_spread_and_leaves_its_record_alone(workdir, capsys):
    assert main(["train", "--algo", "dmh", "--task", "darkroom", "--preset", "smoke"]) == 0
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    recorded = client.get_metric_history(run.info.run_id, "eval/last_return")
    cfg = make_config("dmh", "darkroom", "smoke")
    checkpoint = next(workdir.glob("runs/*/checkpoint.pt"))
    capsys.readouterr()

    assert main(["evaluate", str(checkpoint), "--seeds", str(cfg.eval_seed), "3", "4"]) == 0
    out = capsys.readouterr().out
    lasts = [float(line.split("return ")[1].split()[0]) for line in out.splitlines() if "last-episode return" in line
             and line.startswith("seed ")]
    assert len(lasts) == 3
    assert lasts[0] == pytest.approx(recorded[-1].value, abs=5e-4)  # the run's own seed replays its final evaluation
    spread = np.std(lasts, ddof=1)
    assert (f"3 evaluation seeds: last-episode return {np.mean(lasts):.3f} ± {spread / np.sqrt(3):.3f} (s.e.; s.d. of "
            f"one evaluation {spread:.3f})") in out
    assert len(client.get_metric_history(run.info.run_id, "eval/last_return")) == len(recorded)  # nothing logged


def test_evaluate_refuses_a_negative_seed_in_one_line_before_any_work(workdir, capsys):
    assert main(["evaluate", str(workdir / "none.pt"), "--seeds", "1", "-2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds must be non-negative integers, got 1 -2" in err
    assert not (workdir / "mlflow.db").exists()


def test_a_trial_restored_elsewhere_at_its_last_update_still_keeps_and_logs_its_checkpoint(workdir, tmp_path):
    """A sweep's driver killed after a trial's final checkpoint reached Tune: the restored trial has nothing left to
    train, and must still write its checkpoint where the run keeps it (its artifact) before the final evaluation."""
    finished = train_run(smoke(steps=2))
    kept = tmp_path / "restored.pt"
    shutil.copy(finished.checkpoint, kept)
    shutil.rmtree(finished.checkpoint.parent)  # another worker: the run's own folder is not there
    again = train_run(smoke(steps=2), resume_from=kept)
    assert again.checkpoint.exists() and again.steps == 2
    assert again.run_id == finished.run_id  # the same MLflow run, finished
