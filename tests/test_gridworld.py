"""Grid World rules, pinned with hand-computed returns, and the batched core against the gymnasium classes."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dmh  # noqa: F401  (registers the environments)
from dmh.envs import FAMILIES, GridWorldCore, grid_family, tasks
from dmh.errors import DmhError

LEFT, RIGHT, UP, DOWN, STAY = range(5)
GRID_IDS = list(FAMILIES)


def play(env_id, task, actions, **reset_kwargs):
    env = gym.make(env_id, task=task)
    obs, _ = env.reset(seed=0, **reset_kwargs)
    total, steps, terminated, truncated = 0.0, 0, False, False
    for a in actions:
        obs, r, terminated, truncated, _ = env.step(a)
        total += r
        steps += 1
        if terminated or truncated:
            break
    return total, steps, terminated, truncated, obs


def path(start, goal):
    """Shortest action sequence from start to goal."""
    dx, dy = goal[0] - start[0], goal[1] - start[1]
    return [RIGHT if dx > 0 else LEFT] * abs(dx) + [UP if dy > 0 else DOWN] * abs(dy)


@pytest.mark.parametrize("env_id", [*GRID_IDS, "dmh/TMaze-v0", "dmh/TMazeActive-v0"])
def test_every_environment_passes_gymnasium_check_env(env_id):
    check_env(gym.make(env_id).unwrapped, skip_render_check=True)


def test_darkroom_rewards_every_step_on_the_goal_and_ends_only_at_horizon():
    # start (4,4), goal (6,4): the 2nd move arrives (+1), then 18 more steps on the goal -> 19 over exactly 20 steps
    total, steps, terminated, truncated, obs = play("dmh/Darkroom-v0", (6, 4), path((4, 4), (6, 4)) + [STAY] * 30)
    assert (total, steps, terminated, truncated) == (19.0, 20, False, True)
    assert obs.tolist() == [6, 4]


def test_darkroom_goal_at_start_gives_the_maximum_return_of_20():
    assert play("dmh/Darkroom-v0", (4, 4), [STAY] * 20)[0] == 20.0


def test_darkroom_hard_rewards_the_goal_once_and_terminates_there():
    total, steps, terminated, truncated, _ = play("dmh/DarkroomHard-v0", (4, 7), path((4, 4), (4, 7)) + [STAY] * 20)
    assert (total, steps, terminated, truncated) == (1.0, 3, True, False)


def test_darkroom_hard_without_reaching_the_goal_truncates_at_20_with_zero_return():
    assert play("dmh/DarkroomHard-v0", (0, 0), [STAY] * 30)[:4] == (0.0, 20, False, True)


def test_moves_off_the_grid_leave_the_agent_in_place():
    _, _, _, _, obs = play("dmh/Darkroom-v0", (0, 0), [LEFT] * 10 + [DOWN] * 10)
    assert obs.tolist() == [0, 0]


def key_to_door_start(task, seed=0):
    env = gym.make("dmh/DarkKeyToDoor-v0", task=task)
    return env.reset(seed=seed)[0].tolist()


def test_key_to_door_key_then_door_returns_2_and_terminates_at_the_door():
    task = (1, 1, 7, 7)
    start = key_to_door_start(task)
    actions = path(start, (1, 1)) + path((1, 1), (7, 7)) + [STAY] * 50
    total, steps, terminated, truncated, _ = play("dmh/DarkKeyToDoor-v0", task, actions)
    assert (total, terminated, truncated) == (2.0, True, False)
    assert steps == len(path(start, (1, 1))) + 12


def test_key_to_door_door_before_key_gives_nothing_for_the_door():
    task = (1, 1, 7, 7)
    start = key_to_door_start(task)
    # visit the door first (no reward, no termination), then the key (+1), then stand still until the horizon
    actions = path(start, (7, 7)) + path((7, 7), (1, 1)) + [STAY] * 50
    total, steps, terminated, truncated, _ = play("dmh/DarkKeyToDoor-v0", task, actions)
    assert (total, steps, terminated, truncated) == (1.0, 50, False, True)


def test_key_to_door_start_is_drawn_from_the_seeded_rng():
    starts = {tuple(key_to_door_start((1, 1, 7, 7), seed)) for seed in range(20)}
    assert len(starts) > 5
    assert key_to_door_start((1, 1, 7, 7), 3) == key_to_door_start((1, 1, 7, 7), 3)


@pytest.mark.parametrize("env_id,size,horizon", [("dmh/LargeDarkroom-v0", 40, 200),
                                                  ("dmh/LargeDarkroomHard-v0", 40, 200),
                                                  ("dmh/LargeDarkKeyToDoor-v0", 40, 500)])
def test_large_versions_are_40_by_40_with_ten_times_the_horizon(env_id, size, horizon):
    family = grid_family(env_id)
    assert (family.size, family.horizon) == (size, horizon)
    _, steps, _, truncated, obs = play(env_id, (39, 39, 0, 0)[: family.task_dim], [RIGHT] * 1000)
    assert steps == horizon and truncated and obs[0] == 39


def test_large_darkroom_starts_at_the_centre():
    obs, _ = gym.make("dmh/LargeDarkroom-v0", task=(0, 0)).reset(seed=0)
    assert obs.tolist() == [20, 20]


@pytest.mark.parametrize("env_id", GRID_IDS)
def test_train_and_test_tasks_are_fixed_disjoint_and_sized(env_id):
    train, test = tasks(env_id, "train"), tasks(env_id, "test")
    assert len(train) == 60 and len(test) == grid_family(env_id).num_test_tasks
    assert np.array_equal(train, tasks(env_id, "train"))
    assert not {tuple(t) for t in train} & {tuple(t) for t in test}
    assert len({tuple(t) for t in train}) == 60


def test_darkroom_test_tasks_are_every_goal_cell_not_used_for_training():
    both = np.concatenate([tasks("dmh/Darkroom-v0", "train"), tasks("dmh/Darkroom-v0", "test")])
    assert len({tuple(t) for t in both}) == 81


def test_a_task_is_drawn_from_the_training_list_when_not_fixed():
    env = gym.make("dmh/Darkroom-v0")
    drawn = {tuple(env.reset(seed=s)[1]["task"]) for s in range(30)}
    assert drawn <= {tuple(t) for t in tasks("dmh/Darkroom-v0", "train")}
    assert len(drawn) > 10


@pytest.mark.parametrize("env_id", GRID_IDS)
def test_batched_core_agrees_with_the_gymnasium_class_step_for_step(env_id):
    family = grid_family(env_id)
    task_list = tasks(env_id, "test")[:6]
    rng = np.random.default_rng(1)
    actions = rng.integers(0, 5, size=(len(task_list), family.horizon))
    core = GridWorldCore(family, len(task_list))
    obs = core.reset(np.random.default_rng(7), task_list)
    starts = obs.copy()
    batched = [core.step(actions[:, t]) for t in range(family.horizon)]
    for b, task in enumerate(task_list):
        env = gym.make(env_id, task=task).unwrapped
        env.reset(seed=0)
        env.core.pos[:] = starts[b]  # same start cell as the batch row (random for Key-to-Door)
        for t in range(family.horizon):
            o, r, term, trunc, _ = env.step(int(actions[b, t]))
            bo, br, bterm, btrunc = (x[b] for x in batched[t])
            assert (o.tolist(), r, term, trunc) == (bo.tolist(), float(br), bool(bterm), bool(btrunc))
            if term or trunc:
                break


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(DmhError, match="unknown Grid World environment 'darkroomz'"):
        grid_family("darkroomz")


@pytest.mark.parametrize("task", [(9, 0), (-1, 2), (1.5, 2)])
def test_a_task_outside_the_grid_is_rejected(task):
    with pytest.raises(DmhError, match="task coordinates"):
        gym.make("dmh/Darkroom-v0", task=task)


def test_a_key_on_the_door_cell_is_rejected():
    with pytest.raises(DmhError, match="different cells"):
        gym.make("dmh/DarkKeyToDoor-v0", task=(2, 2, 2, 2))


def test_unknown_split_is_rejected():
    with pytest.raises(DmhError, match="unknown task split"):
        tasks("dmh/Darkroom-v0", "val")


def test_resetting_some_rows_leaves_the_other_rows_mid_episode():
    family = grid_family("dmh/DarkKeyToDoor-v0")
    core = GridWorldCore(family, 3)
    rng = np.random.default_rng(0)
    core.reset(rng, tasks("dmh/DarkKeyToDoor-v0", "test")[:3])
    for _ in range(4):
        core.step(np.array([RIGHT, RIGHT, RIGHT]))
    before_pos, before_t = core.pos.copy(), core.t.copy()
    core.reset(rng, rows=np.array([False, True, False]))
    assert core.t.tolist() == [before_t[0], 0, before_t[2]]
    assert core.pos[[0, 2]].tolist() == before_pos[[0, 2]].tolist()
