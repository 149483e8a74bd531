"""The dataset format, learning histories, T-maze data and the ``dmh data`` command, including every bad input."""

import hashlib
import json
import math

import h5py
import numpy as np
import pytest

from dmh.cli import main
from dmh.data.format import EpisodeDataset, load_dataset, save_dataset
from dmh.data.histories import (
    GRID_NAMES,
    QLearningConfig,
    check_learning,
    generate_histories,
    history_config,
    policy_entropy_floor,
    summarize_learning,
)
from dmh.data.tmaze import TMazeDataConfig, generate_tmaze
from dmh.envs import grid_family, tasks
from dmh.errors import DmhError


@pytest.fixture(scope="module")
def darkroom():
    return generate_histories(history_config("darkroom", steps=60_000, num_tasks=10), show_progress=False)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- learning histories
@pytest.mark.parametrize("name", GRID_NAMES)
def test_learning_histories_improve_at_least_threefold_at_the_paper_budget_per_learner(name):
    # 10 of the 60 tasks with the per-learner budget of `dmh data grid` (1M steps per family)
    cfg = history_config(name, steps=1_000_000 // 6, num_tasks=10)
    summary = summarize_learning(generate_histories(cfg, show_progress=False))
    assert summary.last_return >= 3 * summary.first_return
    assert summary.last_return > summary.first_return + 0.3 * grid_family(name).target_return


def test_histories_keep_every_episode_of_every_learner_in_order(darkroom):
    assert darkroom.num_episodes == 10 * darkroom.metadata["episodes_per_history"]
    assert (np.diff(darkroom.episode_history) >= 0).all()  # history by history
    assert (darkroom.episode_lengths == 20).all()  # Darkroom episodes always last H steps
    assert np.array_equal(darkroom.tasks, tasks("darkroom", "train")[:10])


def test_history_returns_equal_replaying_the_actions_in_the_environment(darkroom):
    import gymnasium as gym

    for e in (0, darkroom.num_episodes - 1):
        start, length = darkroom.episode_starts[e], darkroom.episode_lengths[e]
        env = gym.make("dmh/Darkroom-v0", task=darkroom.tasks[darkroom.episode_task[e]])
        obs, _ = env.reset(seed=0)
        for t in range(start, start + length):
            assert obs.tolist() == darkroom.observations[t].tolist()
            obs, r, *_ = env.step(int(darkroom.actions[t]))
            assert r == darkroom.rewards[t]


def test_same_seed_gives_identical_histories_and_another_seed_differs():
    cfg = history_config("darkroom-hard", steps=20_000, num_tasks=5)
    a, b = (generate_histories(cfg, show_progress=False) for _ in range(2))
    c = generate_histories(history_config("darkroom-hard", steps=20_000, num_tasks=5, seed=1), show_progress=False)
    assert np.array_equal(a.actions, b.actions)
    assert not np.array_equal(a.actions[: c.num_steps], c.actions[: a.num_steps])


def test_a_family_that_does_not_improve_fails_loudly():
    cfg = history_config("large-darkroom-hard", steps=4 * 200 * 5, num_tasks=5)  # 4 episodes: too few to learn
    summary = summarize_learning(generate_histories(cfg, show_progress=False))
    with pytest.raises(DmhError, match="do not improve"):
        check_learning(summary, cfg.min_improvement)


# ---------------------------------------------------------------------------------------------------- T-maze data
def test_tmaze_data_spans_dawdling_wrong_turn_and_optimal_returns():
    data = generate_tmaze(TMazeDataConfig(memory_length=200, histories=4, episodes_per_history=25))
    returns = data.episode_returns
    assert returns.min() < -0.5 and returns.max() == pytest.approx(1.0)
    assert np.isclose(returns, 0.0).any()  # a remembered path with a forgotten (wrong) turn
    assert (data.episode_lengths == 201).all()
    assert data.metadata["memory_length"] == 200


def test_tmaze_noise_falls_along_each_history_so_late_episodes_score_higher():
    data = generate_tmaze(TMazeDataConfig(memory_length=50, histories=20, episodes_per_history=10))
    returns = data.episode_returns.reshape(20, 10)
    assert returns[:, -3:].mean() > returns[:, :3].mean() + 0.5


def test_tmaze_data_replays_exactly_in_the_environment():
    import gymnasium as gym

    data = generate_tmaze(TMazeDataConfig(memory_length=20, histories=2, episodes_per_history=5))
    for e in range(data.num_episodes):
        env = gym.make("dmh/TMaze-v0", memory_length=20, task=data.tasks[data.episode_task[e]][0])
        env.reset(seed=0)
        start = data.episode_starts[e]
        total = sum(env.step(int(a))[1] for a in data.actions[start: start + data.episode_lengths[e]])
        assert total == pytest.approx(data.episode_returns[e], abs=1e-5)


# ------------------------------------------------------------------------------------------------- dataset format
def test_dataset_round_trips_with_metadata_and_counts(tmp_path, darkroom):
    path = save_dataset(darkroom, tmp_path / "d.h5")
    loaded = load_dataset(path)
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "episode_task", "episode_history"):
        assert np.array_equal(getattr(loaded, key), getattr(darkroom, key))
    assert loaded.metadata["env_id"] == "dmh/Darkroom-v0" and loaded.metadata["format_version"] == 1
    assert loaded.metadata["generator"]["name"] == "tabular_q_learning"
    assert loaded.metadata["counts"] == {"steps": darkroom.num_steps, "episodes": darkroom.num_episodes,
                                         "histories": 10, "tasks": 10}


def test_saving_leaves_no_temporary_file_and_a_failed_save_keeps_the_old_file(tmp_path, darkroom):
    path = save_dataset(darkroom, tmp_path / "d.h5")
    before = digest(path)
    broken = EpisodeDataset(**{**vars(darkroom), "rewards": darkroom.rewards[:-1]})
    with pytest.raises(DmhError):
        save_dataset(broken, path)
    assert digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]


def corrupt(path, mutate):
    with h5py.File(path, "a") as f:
        mutate(f)


def replace_key(key, value):
    def mutate(f):
        del f[key]
        f[key] = value
    return mutate


BAD_FILES = {
    "missing key": (lambda f: f.__delitem__("rewards"), "lacks required key\\(s\\): rewards"),
    "nan observation": (lambda f: f["observations"].__setitem__((5, 0), np.nan), "'observations' contains NaN"),
    "inf reward": (lambda f: f["rewards"].__setitem__(7, np.inf), "'rewards' contains NaN or inf"),
    "mismatched length": (replace_key("actions", np.zeros(10, dtype=np.int64)), "'actions' has 10 steps"),
    "no metadata": (lambda f: f.attrs.__delitem__("metadata"), "no 'metadata' attribute"),
    "wrong version": (lambda f: f.attrs.__setitem__("metadata", json.dumps({"format_version": 99})), "version 99"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_dataset_files_are_rejected_with_a_message_naming_the_problem(tmp_path, darkroom, case):
    mutate, message = BAD_FILES[case]
    path = save_dataset(darkroom, tmp_path / "d.h5")
    corrupt(path, mutate)
    with pytest.raises(DmhError, match=message):
        load_dataset(path)


def test_nan_actions_in_continuous_data_are_rejected(tmp_path, darkroom):
    data = EpisodeDataset(**{**vars(darkroom), "actions": np.zeros((darkroom.num_steps, 2), np.float32),
                             "metadata": {**darkroom.metadata, "discrete": False}})
    data.actions[3, 1] = np.nan
    with pytest.raises(DmhError, match="'actions' contains NaN or inf"):
        data.validate()


def test_a_truncated_file_is_reported_as_corrupt(tmp_path, darkroom):
    path = save_dataset(darkroom, tmp_path / "d.h5")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DmhError, match="truncated or corrupt"):
        load_dataset(path)


def test_a_file_that_is_not_hdf5_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_text("not an hdf5 file")
    with pytest.raises(DmhError, match="truncated or corrupt"):
        load_dataset(path)


def test_data_whose_last_episode_has_no_end_flag_is_rejected(darkroom):
    data = EpisodeDataset(**{**vars(darkroom), "timeouts": darkroom.timeouts.copy()})
    data.timeouts[-1] = False
    with pytest.raises(DmhError, match="last episode has no terminal or timeout"):
        data.validate()


# ------------------------------------------------------------------------------------------------------ dmh data
def test_dmh_data_grid_writes_a_cached_dataset_and_reuses_it(tmp_path, capsys):
    args = ["data", "grid", "--env", "darkroom", "--steps", "30000", "--num-tasks", "5", "--quiet",
            "--data-dir", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "wrote" in first and "return first 10%" in first
    (path,) = tmp_path.glob("darkroom-*.h5")
    before = digest(path)
    assert main(args) == 0
    assert "cached" in capsys.readouterr().out and digest(path) == before


def test_dmh_data_refuses_to_replace_an_existing_output_without_overwrite(tmp_path, capsys):
    out = tmp_path / "mine.h5"
    out.write_bytes(b"precious")
    code = main(["data", "tmaze", "--memory-length", "10", "--out", str(out)])
    assert code == 2 and "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["data", "tmaze", "--memory-length", "10", "--out", str(out), "--overwrite"]) == 0
    assert load_dataset(out).metadata["memory_length"] == 10


@pytest.mark.parametrize("argv,message", [
    (["data", "tmaze", "--memory-length", "0"], "memory_length must be a positive integer"),
    (["data", "grid", "--env", "darkroom", "--steps", "10"], "steps=10 is too few"),
    (["data", "grid", "--env", "darkroom", "--num-tasks", "61"], "num_tasks must be in"),
    (["data", "show", "nowhere.h5"], "does not exist"),
    (["data", "d4rl-sample", "--name", "hopper-hard-v2", "--out", "x.h5"], "hopper-hard-v2"),
])
def test_dmh_data_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmh: error:") and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- checks against the environment
def with_arrays(dataset, **arrays):
    return EpisodeDataset(**{**vars(dataset), **arrays})


def test_actions_outside_the_action_space_are_refused_counting_them_and_naming_the_first(darkroom):
    actions = darkroom.actions.copy()
    actions[[3, 40]] = [7, -1]
    with pytest.raises(DmhError, match=r"'actions' has 2 step\(s\) outside dmh/Darkroom-v0's actions \[0, 5\) "
                                       r"\(first at step 3: 7\)"):
        with_arrays(darkroom, actions=actions).validate("d.h5")


def test_float_terminals_are_refused_naming_the_key_and_dtype_rather_than_cast(tmp_path, darkroom):
    path = save_dataset(darkroom, tmp_path / "d.h5")
    corrupt(path, replace_key("terminals", darkroom.terminals.astype(np.float32)))
    with pytest.raises(DmhError, match="'terminals' has dtype float32; episode flags must be bool"):
        load_dataset(path)


def test_float_actions_of_a_discrete_environment_are_refused(darkroom):
    with pytest.raises(DmhError, match=r"'actions' has dtype float32 .* 5 discrete actions"):
        with_arrays(darkroom, actions=darkroom.actions.astype(np.float32)).validate()


def test_observations_off_the_grid_or_between_cells_are_refused(darkroom):
    off_grid, between_cells = r"outside dmh/Darkroom-v0's observation space \[0, 8\]", "with non-integer values"
    for value, match in ((9.0, off_grid), (3.5, between_cells)):
        observations = darkroom.observations.copy()
        observations[11, 1] = value
        with pytest.raises(DmhError, match=rf"'observations' has 1 step\(s\) {match}.*first at step 11"):
            with_arrays(darkroom, observations=observations).validate()


def test_observations_of_another_size_than_the_environments_are_refused(darkroom):
    observations = np.zeros((darkroom.num_steps, 3), np.float32)
    with pytest.raises(DmhError, match=r"'observations' has shape .* but dmh/Darkroom-v0 has 2 per step"):
        with_arrays(darkroom, observations=observations).validate()


def test_a_dataset_of_an_unknown_environment_is_refused_listing_the_known_ones(darkroom):
    data = EpisodeDataset(**{**vars(darkroom), "metadata": {**darkroom.metadata, "env_id": "dmh/Nowhere-v0"}})
    with pytest.raises(DmhError, match=r"unknown environment 'dmh/Nowhere-v0'; known: dmh/Darkroom-v0, .*"
                                       r"dmh/TMaze-v0, .*hopper-medium-v2"):
        data.validate()


def test_metadata_that_calls_discrete_actions_continuous_is_refused(darkroom):
    data = EpisodeDataset(**{**vars(darkroom), "metadata": {**darkroom.metadata, "discrete": False}})
    with pytest.raises(DmhError, match="discrete=False, but dmh/Darkroom-v0's actions are discrete"):
        data.validate()


def test_an_empty_dataset_is_refused(darkroom):
    data = with_arrays(darkroom, **{k: getattr(darkroom, k)[:0] for k in ("observations", "actions", "rewards",
                                                                          "terminals", "timeouts", "episode_task",
                                                                          "episode_history")})
    with pytest.raises(DmhError, match="holds no steps"):
        data.validate()


def test_tmaze_observations_outside_minus_one_one_are_refused():
    data = generate_tmaze(TMazeDataConfig(memory_length=10, histories=1, episodes_per_history=2))
    data.validate()
    data.observations[5, 1] = 2.0
    with pytest.raises(DmhError, match=r"outside dmh/TMaze-v0's observation space \[-1, 1\].*first at step 5"):
        data.validate()


def test_the_gymnasium_classes_declare_the_spaces_datasets_are_checked_against():
    import gymnasium as gym

    from dmh.envs import FAMILIES, TMAZE_IDS, spaces

    for env_id in (*FAMILIES, *TMAZE_IDS):
        env = gym.make(env_id)
        assert (env.observation_space, env.action_space) == spaces(env_id), env_id
    assert spaces("dmh/LargeDarkroom-v0")[0].high.tolist() == [39, 39]


def test_dmh_data_show_refuses_out_of_range_actions_in_one_line(tmp_path, darkroom, capsys):
    path = save_dataset(darkroom, tmp_path / "d.h5")
    corrupt(path, lambda f: f["actions"].__setitem__(3, 7))
    assert main(["data", "show", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("dmh: error:") and len(err.splitlines()) == 1
    assert "'actions' has 1 step(s) outside dmh/Darkroom-v0's actions [0, 5) (first at step 3: 7)" in err


@pytest.mark.parametrize(("epsilon", "floor"), [(1.0, math.log(5)), (0.0, 0.0), (0.5, None)])
def test_the_policy_entropy_floor_is_the_learners_epsilon_greedy_entropy_per_step(epsilon, floor):
    learner = QLearningConfig(epsilon_start=epsilon, epsilon_end=epsilon)
    data = generate_histories(history_config("darkroom", steps=20_000, num_tasks=2, learner=learner),
                              show_progress=False)
    greedy, other = 1 - epsilon + epsilon / 5, epsilon / 5
    expected = floor if floor is not None else -greedy * math.log(greedy) - 4 * other * math.log(other)
    assert policy_entropy_floor(data) == pytest.approx(expected, abs=1e-9)


def test_the_policy_entropy_floor_falls_with_the_learners_epsilon_over_its_history():
    data = generate_histories(history_config("darkroom", steps=20_000, num_tasks=2), show_progress=False)
    assert 0.0 < policy_entropy_floor(data) < math.log(5)  # ε falls from 1 to 0 over the first half
