"""D4RL: names, normalised scores, the raw-file and Minari loaders, the stand-in sample, and every bad input."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest

from dmh.data import d4rl
from dmh.data.d4rl import (
    D4RL_DATASETS,
    REF_MAX_SCORE,
    REF_MIN_SCORE,
    d4rl_cache_path,
    episodes_from_minari,
    load_d4rl,
    normalized_score,
    parse_d4rl_name,
    rollout_random_policy,
    write_d4rl_sample,
)
from dmh.data.format import load_dataset, save_dataset
from dmh.envs.mujoco import MUJOCO_SPECS, gym_env_id, make_mujoco_env
from dmh.errors import DmhError


@pytest.fixture
def mujoco():
    """Skip a test that rolls out MuJoCo when the optional extra dmh[mujoco] is not installed."""
    return pytest.importorskip("mujoco")


# --------------------------------------------------------------------------------------------------------- helpers
def synthetic_arrays(env: str = "hopper", lengths: tuple[int, ...] = (3, 4), trailing: int = 0) -> dict[str, Any]:
    """D4RL-layout arrays: the first episode terminates, the others time out, then ``trailing`` unflagged steps."""
    spec = MUJOCO_SPECS[env]
    n = sum(lengths) + trailing
    rng = np.random.default_rng(0)
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[ends[0]] = True
    timeouts[ends[1:]] = True
    return {
        "observations": rng.normal(size=(n, spec.obs_dim)).astype(np.float32),
        "next_observations": rng.normal(size=(n, spec.obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, spec.act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(n, 6)),
    }


def write_raw(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def split_returns(rewards: np.ndarray, ends: np.ndarray) -> list[float]:
    """Episode returns by walking the steps one by one (independent of the loader's vectorised split)."""
    returns, total = [], 0.0
    for reward, end in zip(rewards, ends, strict=True):
        total += float(reward)
        if end:
            returns.append(total)
            total = 0.0
    return returns


@pytest.fixture
def empty_sources(tmp_path, monkeypatch):
    """Point the d4rl cache and Minari's dataset folder at empty temporary folders."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path


# ---------------------------------------------------------------------------------------------------------- names
def test_the_nine_paper_datasets_are_named_as_in_d4rl():
    assert len(D4RL_DATASETS) == 9
    assert "hopper-medium-replay-v2" in D4RL_DATASETS
    assert parse_d4rl_name("walker2d-medium-expert-v2") == ("walker2d", "medium-expert")
    assert parse_d4rl_name("halfcheetah-medium-v2") == ("halfcheetah", "medium")


@pytest.mark.parametrize("bad", ["hopper-random-v2", "ant-medium-v2", "hopper-medium-v0", "hopper_medium-v2", ""])
def test_unknown_dataset_names_raise_listing_the_valid_ones(bad):
    for call in (parse_d4rl_name, d4rl_cache_path, load_d4rl, gym_env_id, lambda n: normalized_score(n, 0.0)):
        with pytest.raises(DmhError, match="unknown D4RL") as info:
            call(bad)
        assert "hopper-medium-v2" in str(info.value)


def test_a_near_miss_name_gets_a_suggestion():
    with pytest.raises(DmhError, match="did you mean 'hopper-medium-v2'"):
        parse_d4rl_name("hopper-medium-v3")


def test_evaluation_uses_gymnasium_v5_environments():
    assert gym_env_id("hopper-medium-v2") == "Hopper-v5"
    assert gym_env_id("halfcheetah-medium-expert-v2") == "HalfCheetah-v5"
    assert gym_env_id("walker2d") == "Walker2d-v5"


# --------------------------------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("env", ["halfcheetah", "hopper", "walker2d"])
def test_reference_returns_score_exactly_0_and_100(env):
    assert normalized_score(env, REF_MIN_SCORE[env]) == 0.0
    assert normalized_score(env, REF_MAX_SCORE[env]) == 100.0
    scores = normalized_score(f"{env}-medium-v2", np.array([REF_MIN_SCORE[env], REF_MAX_SCORE[env]]))
    assert scores.tolist() == [0.0, 100.0]


def test_reference_returns_are_d4rls_published_values():
    assert REF_MIN_SCORE == {"halfcheetah": -280.178953, "hopper": -20.272305, "walker2d": 1.629008}
    assert REF_MAX_SCORE == {"halfcheetah": 12135.0, "hopper": 3234.3, "walker2d": 4592.3}


def test_normalized_score_is_linear_in_the_return():
    midpoint = (REF_MIN_SCORE["hopper"] + REF_MAX_SCORE["hopper"]) / 2
    assert normalized_score("hopper-medium-replay-v2", midpoint) == pytest.approx(50.0)
    assert isinstance(normalized_score("hopper", 1000), float)


# ----------------------------------------------------------------------------------------------- locating the data
def test_cache_path_uses_d4rls_file_names(monkeypatch, tmp_path):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    assert d4rl_cache_path("hopper-medium-v2") == tmp_path / "hopper_medium-v2.hdf5"
    assert d4rl_cache_path("hopper-medium-replay-v2") == tmp_path / "hopper_medium_replay-v2.hdf5"
    assert d4rl_cache_path("walker2d-medium-expert-v2") == tmp_path / "walker2d_medium_expert-v2.hdf5"


def test_cache_path_defaults_to_home_d4rl_datasets(monkeypatch, tmp_path):
    monkeypatch.delenv("D4RL_DATASET_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert d4rl_cache_path("halfcheetah-medium-v2") == tmp_path / ".d4rl" / "datasets" / "halfcheetah_medium-v2.hdf5"


def test_load_reads_the_d4rl_cache_dir(empty_sources):
    arrays = synthetic_arrays("hopper", lengths=(3, 4))
    cache = d4rl_cache_path("hopper-medium-v2")
    cache.parent.mkdir()
    write_raw(cache, arrays)
    dataset = load_d4rl("hopper-medium-v2")
    assert dataset.episode_lengths.tolist() == [3, 4]
    np.testing.assert_array_equal(dataset.observations, arrays["observations"])
    assert dataset.metadata["generator"] == {"name": "d4rl", "source": str(cache), "dataset": "medium"}


def test_missing_data_error_says_where_it_looked_and_how_to_get_it(empty_sources):
    with pytest.raises(DmhError) as info:
        load_d4rl("walker2d-medium-replay-v2")
    message = str(info.value)
    assert str(d4rl_cache_path("walker2d-medium-replay-v2")) in message
    assert "D4RL/walker2d/medium-replay-v2" in message
    assert "dmh data d4rl-sample" in message


# ---------------------------------------------------------------------------------------------------- conversion
def test_loaded_dataset_has_the_project_format(tmp_path):
    path = write_raw(tmp_path / "raw.hdf5", synthetic_arrays("walker2d", lengths=(2, 5, 3)))
    dataset = load_d4rl("walker2d-medium-v2", path)
    assert dataset.actions.dtype == np.float32 and dataset.actions.shape == (10, 6)
    assert dataset.episode_task.tolist() == [0, 0, 0]
    assert dataset.episode_history.tolist() == [0, 0, 0]
    assert dataset.tasks.shape == (1, 1)
    meta = dataset.metadata
    assert (meta["env_id"], meta["gym_env_id"], meta["discrete"], meta["seed"]) == ("walker2d-medium-v2",
                                                                                     "Walker2d-v5", False, None)
    assert (meta["obs_dim"], meta["act_dim"]) == (17, 6)


def test_loaded_dataset_saves_and_reloads_in_the_project_format(tmp_path):
    dataset = load_d4rl("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", synthetic_arrays(trailing=2)))
    reloaded = load_dataset(save_dataset(dataset, tmp_path / "dmh.h5"))
    np.testing.assert_array_equal(reloaded.episode_returns, dataset.episode_returns)
    assert reloaded.metadata["env_id"] == "hopper-medium-v2"


def test_episodes_split_on_terminals_or_timeouts(tmp_path):
    arrays = synthetic_arrays("hopper", lengths=(3, 4, 2))
    dataset = load_d4rl("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays))
    assert dataset.episode_lengths.tolist() == [3, 4, 2]
    assert dataset.terminals.tolist() == arrays["terminals"].tolist()
    expected = split_returns(arrays["rewards"], arrays["terminals"] | arrays["timeouts"])
    np.testing.assert_allclose(dataset.episode_returns, expected, rtol=1e-6)


def test_trailing_steps_without_a_flag_are_dropped(tmp_path):
    arrays = synthetic_arrays("hopper", lengths=(3, 4), trailing=5)
    dataset = load_d4rl("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays))
    assert dataset.num_steps == 7
    assert dataset.metadata["dropped_trailing_steps"] == 5


def test_column_shaped_rewards_and_flags_are_accepted(tmp_path):
    arrays = synthetic_arrays("hopper")
    for key in ("rewards", "terminals", "timeouts"):
        arrays[key] = arrays[key][:, None]  # some D4RL files store [N, 1]
    dataset = load_d4rl("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays))
    assert dataset.rewards.shape == (7,)


def test_minari_episodes_convert_dropping_each_final_observation():
    rng = np.random.default_rng(1)
    episodes = [
        SimpleNamespace(observations=rng.normal(size=(t + 1, 11)), actions=rng.uniform(-1, 1, (t, 3)),
                        rewards=rng.normal(size=t), terminations=np.arange(t) == t - 1 if t == 3 else np.zeros(t, bool),
                        truncations=np.zeros(t, bool))
        for t in (3, 4)
    ]
    dataset = episodes_from_minari("hopper-medium-v2", episodes, "in-memory")
    assert dataset.episode_lengths.tolist() == [3, 4]
    np.testing.assert_array_equal(dataset.observations[3:], episodes[1].observations[:4].astype(np.float32))
    # The second episode has no flag at its end: Minari's episode boundary is kept as a timeout.
    assert dataset.terminals.tolist() == [False, False, True, False, False, False, False]
    assert dataset.timeouts.tolist() == [False] * 6 + [True]


def test_minari_episode_of_mismatched_lengths_is_rejected():
    episode = SimpleNamespace(observations=np.zeros((3, 11)), actions=np.zeros((3, 3)), rewards=np.zeros(3),
                              terminations=np.zeros(3, bool), truncations=np.zeros(3, bool))
    with pytest.raises(DmhError, match="episode 0 has mismatched lengths"):
        episodes_from_minari("hopper-medium-v2", [episode], "in-memory")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_load_reads_a_minari_dataset_on_disk(empty_sources):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(2)
    buffers = [
        EpisodeBuffer(id=i, observations=rng.normal(size=(t + 1, 11)).astype(np.float32),
                      actions=rng.uniform(-1, 1, (t, 3)).astype(np.float32), rewards=rng.normal(size=t),
                      terminations=np.arange(t) == t - 1, truncations=np.zeros(t, bool))
        for i, t in enumerate((3, 5))
    ]
    minari.create_dataset_from_buffers(
        "D4RL/hopper/medium-expert-v2", buffers,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (11,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
    )
    dataset = load_d4rl("hopper-medium-expert-v2")
    assert dataset.episode_lengths.tolist() == [3, 5]
    np.testing.assert_allclose(dataset.episode_returns, [b.rewards.sum() for b in buffers], rtol=1e-6)
    assert dataset.metadata["generator"]["source"] == "minari:D4RL/hopper/medium-expert-v2"


# --------------------------------------------------------------------------------------------------- bad raw files
def assert_rejected_unchanged(name: str, path: Path, match: str) -> None:
    """Loading ``path`` raises a DmhError matching ``match`` and leaves the file byte-identical."""
    before = path.read_bytes()
    with pytest.raises(DmhError, match=match):
        load_d4rl(name, path)
    assert path.read_bytes() == before


def test_truncated_file_is_rejected(tmp_path):
    path = write_raw(tmp_path / "raw.hdf5", synthetic_arrays())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_rejected_unchanged("hopper-medium-v2", path, "truncated or corrupt")


def test_non_hdf5_file_is_rejected(tmp_path):
    path = tmp_path / "raw.hdf5"
    path.write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 8)
    assert_rejected_unchanged("hopper-medium-v2", path, "truncated or corrupt")


def test_corrupt_data_inside_a_valid_header_is_rejected(tmp_path):
    path = tmp_path / "raw.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in synthetic_arrays().items():
            f.create_dataset(key, data=value, compression="gzip")
        chunk = f["observations"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\xff" * chunk.size  # scramble the gzip stream
    path.write_bytes(bytes(raw))
    assert_rejected_unchanged("hopper-medium-v2", path, "corrupt")


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "terminals", "timeouts"])
def test_file_missing_a_required_key_is_rejected(tmp_path, key):
    arrays = synthetic_arrays()
    del arrays[key]
    assert_rejected_unchanged("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays), f"lacks .*{key}")


@pytest.mark.parametrize("key", ["observations", "actions", "rewards"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_values_are_rejected(tmp_path, key, value):
    arrays = synthetic_arrays()
    arrays[key][4] = value
    path = write_raw(tmp_path / "raw.hdf5", arrays)
    assert_rejected_unchanged("hopper-medium-v2", path, f"'{key}' contains NaN or inf \\(first at step 4\\)")


def test_arrays_of_mismatched_length_are_rejected(tmp_path):
    arrays = synthetic_arrays()
    arrays["rewards"] = arrays["rewards"][:-2]
    path = write_raw(tmp_path / "raw.hdf5", arrays)
    assert_rejected_unchanged("hopper-medium-v2", path, "mismatched lengths: observations 7, actions 7, rewards 5")


def test_file_of_another_environment_is_rejected(tmp_path):
    path = write_raw(tmp_path / "raw.hdf5", synthetic_arrays("hopper"))
    match = "'observations' has shape \\(7, 11\\) but halfcheetah has 17"
    assert_rejected_unchanged("halfcheetah-medium-v2", path, match)


def test_file_without_any_episode_end_is_rejected(tmp_path):
    arrays = synthetic_arrays()
    arrays["terminals"][:] = False
    arrays["timeouts"][:] = False
    assert_rejected_unchanged("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays), "no complete episode")


def test_missing_file_and_directory_are_rejected(tmp_path):
    with pytest.raises(DmhError, match="does not exist"):
        load_d4rl("hopper-medium-v2", tmp_path / "nope.hdf5")
    with pytest.raises(DmhError, match="is a directory"):
        load_d4rl("hopper-medium-v2", tmp_path)


# -------------------------------------------------------------------------------------- writing the sample (no run)
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"episodes": 0}, "episodes must be a positive integer"),
        ({"episodes": 2.5}, "episodes must be a positive integer"),
        ({"max_episode_steps": 0}, "max_episode_steps must be a positive integer"),
        ({"max_episode_steps": 1001}, "at most 1000"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_sample_arguments_are_rejected_before_any_work(tmp_path, monkeypatch, kwargs, match):
    monkeypatch.setattr(d4rl, "rollout_random_policy", lambda *a, **k: pytest.fail("rolled out despite bad input"))
    with pytest.raises(DmhError, match=match):
        write_d4rl_sample("hopper-medium-v2", tmp_path / "out.hdf5", **kwargs)
    assert not (tmp_path / "out.hdf5").exists()


def test_sample_of_unknown_dataset_is_rejected(tmp_path):
    with pytest.raises(DmhError, match="unknown D4RL dataset 'hopper-expert-v2'"):
        write_d4rl_sample("hopper-expert-v2", tmp_path / "out.hdf5")
    assert not (tmp_path / "out.hdf5").exists()


def test_existing_output_is_kept_without_overwrite(tmp_path, monkeypatch):
    monkeypatch.setattr(d4rl, "rollout_random_policy", lambda *a, **k: pytest.fail("rolled out despite bad input"))
    path = tmp_path / "out.hdf5"
    path.write_bytes(b"precious")
    with pytest.raises(DmhError, match="already exists; pass --overwrite"):
        write_d4rl_sample("hopper-medium-v2", path)
    assert path.read_bytes() == b"precious"


def test_missing_mujoco_is_reported_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # makes `import mujoco` raise ImportError
    with pytest.raises(DmhError, match=r"pip install 'dmh\[mujoco\]'"):
        make_mujoco_env("hopper-medium-v2")


# ----------------------------------------------------------------------------------- MuJoCo rollouts (need mujoco)
@pytest.mark.parametrize("name", ["hopper-medium-v2", "walker2d-medium-replay-v2", "halfcheetah-medium-expert-v2"])
def test_sample_round_trips_through_the_loader(tmp_path, name, mujoco):
    settings = {"episodes": 3, "max_episode_steps": 50, "seed": 7}
    rollout = rollout_random_policy(name, **settings)
    path = write_d4rl_sample(name, tmp_path / "sample.hdf5", **settings)
    dataset = load_d4rl(name, path)
    ends = rollout["terminals"] | rollout["timeouts"]
    assert dataset.num_episodes == 3
    assert dataset.episode_lengths.tolist() == np.diff(np.r_[0, np.flatnonzero(ends) + 1]).tolist()
    np.testing.assert_allclose(dataset.episode_returns, split_returns(rollout["rewards"], ends), rtol=1e-6)
    np.testing.assert_array_equal(dataset.observations, rollout["observations"])
    np.testing.assert_array_equal(dataset.actions, rollout["actions"])
    assert dataset.metadata["generator"]["algorithm"] == "uniform-random"
    assert dataset.metadata["dropped_trailing_steps"] == 0


def test_sample_file_has_d4rls_layout(tmp_path, mujoco):
    path = write_d4rl_sample("hopper-medium-v2", tmp_path / "sample.hdf5", episodes=2, max_episode_steps=40)
    with h5py.File(path, "r") as f:
        n = f["rewards"].shape[0]
        shapes = {k: (f[k].shape, f[k].dtype) for k in ("observations", "next_observations", "actions", "rewards",
                                                          "terminals", "timeouts", "infos/action_log_probs")}
        assert shapes == {
            "observations": ((n, 11), np.float32), "next_observations": ((n, 11), np.float32),
            "actions": ((n, 3), np.float32), "rewards": ((n,), np.float32), "terminals": ((n,), np.bool_),
            "timeouts": ((n,), np.bool_), "infos/action_log_probs": ((n,), np.float32),
        }
        assert f["infos/qpos"].shape == (n, 6) and f["infos/qvel"].shape == (n, 6)
        assert f["metadata/algorithm"][()] == b"uniform-random"
        terminals, timeouts = f["terminals"][()], f["timeouts"][()]
        obs, next_obs = f["observations"][()], f["next_observations"][()]
    assert not (terminals & timeouts).any()  # one reason per episode end, as in D4RL
    within = ~(terminals | timeouts)[:-1]
    np.testing.assert_array_equal(next_obs[:-1][within], obs[1:][within])


def test_time_limit_ends_episodes_as_timeouts(tmp_path, mujoco):
    path = write_d4rl_sample("halfcheetah-medium-v2", tmp_path / "s.hdf5", episodes=2, max_episode_steps=20)
    dataset = load_d4rl("halfcheetah-medium-v2", path)
    assert dataset.episode_lengths.tolist() == [20, 20]  # HalfCheetah never terminates
    assert dataset.timeouts.sum() == 2 and not dataset.terminals.any()


def test_sample_is_reproducible_from_its_seed(tmp_path, mujoco):
    first = rollout_random_policy("walker2d-medium-v2", episodes=2, max_episode_steps=30, seed=3)
    second = rollout_random_policy("walker2d-medium-v2", episodes=2, max_episode_steps=30, seed=3)
    other = rollout_random_policy("walker2d-medium-v2", episodes=2, max_episode_steps=30, seed=4)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["actions"][:5], other["actions"][:5])


def test_five_episode_sample_is_written_in_well_under_ten_seconds(tmp_path, mujoco):
    start = time.perf_counter()
    write_d4rl_sample("halfcheetah-medium-v2", tmp_path / "s.hdf5")  # 5 x 1000 steps: the longest episodes
    assert time.perf_counter() - start < 5.0


def test_overwrite_replaces_an_existing_sample(tmp_path, mujoco):
    path = tmp_path / "out.hdf5"
    path.write_bytes(b"old")
    write_d4rl_sample("hopper-medium-v2", path, episodes=1, max_episode_steps=10, overwrite=True)
    assert load_d4rl("hopper-medium-v2", path).num_episodes == 1


def test_sample_written_for_one_environment_is_rejected_for_another(tmp_path, mujoco):
    path = write_d4rl_sample("walker2d-medium-v2", tmp_path / "s.hdf5", episodes=1, max_episode_steps=10)
    assert_rejected_unchanged("halfcheetah-medium-v2", path, "written for Walker2d-v5")


@pytest.mark.parametrize("env", ["halfcheetah", "hopper", "walker2d"])
def test_evaluation_env_matches_the_d4rl_dimensions(env, mujoco):
    spec = MUJOCO_SPECS[env]
    gym_env = make_mujoco_env(env)
    try:
        assert gym_env.observation_space.shape == (spec.obs_dim,)
        assert gym_env.action_space.shape == (spec.act_dim,)
        assert gym_env.spec.max_episode_steps == 1000
    finally:
        gym_env.close()


def test_walker2d_keeps_the_foot_friction_the_data_were_collected_with(mujoco):
    gym_env = make_mujoco_env("walker2d-medium-v2")
    try:
        model = gym_env.unwrapped.model
        friction = {mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, i): model.geom_friction[i, 0]
                    for i in range(model.ngeom)}
    finally:
        gym_env.close()
    assert friction["foot_geom"] == pytest.approx(0.9)  # v5's own model raises it to 1.9
    assert friction["foot_left_geom"] == pytest.approx(1.9)


def test_building_halfcheetah_leaves_no_mujoco_log_in_the_working_directory(tmp_path, monkeypatch, mujoco):
    monkeypatch.chdir(tmp_path)
    make_mujoco_env("halfcheetah-medium-v2").close()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


# ------------------------------------------------------------------------------- checks against the environment
def test_replay_files_float_flags_and_float64_arrays_are_accepted(tmp_path):
    arrays = synthetic_arrays("hopper", lengths=(3, 4))
    for key in ("observations", "actions"):
        arrays[key] = arrays[key].astype(np.float64)  # rlkit replay buffers store float64
    arrays["rewards"] = arrays["rewards"].astype(np.float64)[:, None]
    arrays["terminals"] = arrays["terminals"].astype(np.float64)  # rlkit's env_infos: float 0.0 / 1.0
    arrays["timeouts"] = arrays["timeouts"].astype(np.float64)
    dataset = load_d4rl("hopper-medium-replay-v2", write_raw(tmp_path / "raw.hdf5", arrays))
    assert dataset.terminals.dtype == np.bool_ and dataset.episode_lengths.tolist() == [3, 4]
    assert dataset.terminals.tolist() == (arrays["terminals"] == 1).tolist()


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0])
def test_numeric_flags_other_than_zero_or_one_are_refused(tmp_path, value):
    arrays = synthetic_arrays()
    arrays["timeouts"] = arrays["timeouts"].astype(np.float32)
    arrays["timeouts"][2] = value
    match = r"'timeouts' has 1 step\(s\) that are neither 0 nor 1 .*first at step 2"
    assert_rejected_unchanged("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays), match)


def test_actions_outside_minus_one_one_are_refused_counting_them(tmp_path):
    arrays = synthetic_arrays()
    arrays["actions"][1, 0] = 1.5
    arrays["actions"][4, 2] = -1.01
    match = r"'actions' has 2 step\(s\) outside hopper's action bounds \[-1, 1\] .*\(first at step 1: \[1.5,"
    assert_rejected_unchanged("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays), match)


def test_actions_at_the_bounds_and_within_the_tolerance_are_accepted(tmp_path):
    from dmh.data.checks import ACTION_TOLERANCE

    arrays = synthetic_arrays()
    arrays["actions"][0] = 1.0  # tanh saturates to exactly ±1 in float32
    arrays["actions"][1] = -1.0
    arrays["actions"][2, 0] = 1.0 + ACTION_TOLERANCE / 2
    dataset = load_d4rl("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays))
    assert dataset.actions.max() > 1.0


def test_integer_actions_of_a_continuous_environment_are_refused(tmp_path):
    arrays = synthetic_arrays()
    arrays["actions"] = np.zeros_like(arrays["actions"], dtype=np.int64)
    match = "'actions' has dtype int64; hopper's actions are continuous"
    assert_rejected_unchanged("hopper-medium-v2", write_raw(tmp_path / "raw.hdf5", arrays), match)


def test_minari_terminations_that_are_not_flags_are_refused():
    episode = SimpleNamespace(observations=np.zeros((4, 11)), actions=np.zeros((3, 3)), rewards=np.zeros(3),
                              terminations=np.array([0.0, 0.5, 1.0]), truncations=np.zeros(3, bool))
    with pytest.raises(DmhError, match=r"episode 0: 'terminations' has 1 step\(s\) that are neither 0 nor 1"):
        episodes_from_minari("hopper-medium-v2", [episode], "in-memory")


def test_d4rl_spaces_are_built_without_mujoco(monkeypatch):
    from dmh.envs import spaces

    monkeypatch.setitem(sys.modules, "mujoco", None)
    observation_space, action_space = spaces("walker2d-medium-replay-v2")
    assert observation_space.shape == (17,)
    assert (action_space.shape, action_space.low.min(), action_space.high.max()) == ((6,), -1.0, 1.0)


@pytest.mark.parametrize("env", ["halfcheetah", "hopper", "walker2d"])
def test_the_gymnasium_environment_has_the_spaces_its_data_are_checked_against(env, mujoco):
    from dmh.envs import spaces

    observation_space, action_space = spaces(f"{env}-medium-v2")
    gym_env = make_mujoco_env(env)
    try:
        assert gym_env.observation_space.shape == observation_space.shape
        assert gym_env.action_space == action_space
    finally:
        gym_env.close()


# ------------------------------------------------------------------------------------------ dmh data show of D4RL
def test_show_reads_a_raw_d4rl_file_under_d4rls_own_file_name(tmp_path, capsys):
    from dmh.cli import main

    path = write_raw(tmp_path / "hopper_medium_replay-v2.hdf5", synthetic_arrays("hopper", lengths=(3, 4)))
    assert main(["data", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert '"env_id": "hopper-medium-replay-v2"' in out and "returns: min" in out


def test_show_of_a_raw_file_that_names_no_dataset_asks_for_one_and_then_reads_it(tmp_path, capsys):
    from dmh.cli import main

    path = write_raw(tmp_path / "mine.hdf5", synthetic_arrays("hopper"))
    assert main(["data", "show", str(path)]) == 2
    assert "pass --name" in capsys.readouterr().err
    assert main(["data", "show", str(path), "--name", "hopper-medium-expert-v2"]) == 0
    assert '"env_id": "hopper-medium-expert-v2"' in capsys.readouterr().out


def test_show_checks_a_raw_file_against_the_named_environment(tmp_path, capsys):
    from dmh.cli import main

    path = write_raw(tmp_path / "mine.hdf5", synthetic_arrays("hopper"))
    assert main(["data", "show", str(path), "--name", "halfcheetah-medium-v2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmh: error:") and "'observations' has shape (7, 11) but halfcheetah has 17" in err


def test_show_reads_a_d4rl_dataset_saved_in_the_project_format(tmp_path, capsys):
    from dmh.cli import main

    dataset = load_d4rl("walker2d-medium-v2", write_raw(tmp_path / "raw.hdf5", synthetic_arrays("walker2d")))
    path = save_dataset(dataset, tmp_path / "dmh.h5")
    assert main(["data", "show", str(path)]) == 0
    assert '"env_id": "walker2d-medium-v2"' in capsys.readouterr().out
