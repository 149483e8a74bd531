"""T-maze rules (Ni et al. 2023), pinned with hand-computed returns, and the batched core against the gym class."""

import gymnasium as gym
import numpy as np
import pytest

import dmh  # noqa: F401  (registers the environments)
from dmh.envs import TMazeCore
from dmh.errors import DmhError

RIGHT, UP, LEFT, DOWN = range(4)


def run(actions, goal, memory_length=10, env_id="dmh/TMaze-v0"):
    env = gym.make(env_id, memory_length=memory_length, task=goal)
    obs, _ = env.reset(seed=0)
    observations, rewards, flags = [obs.tolist()], [], []
    for a in actions:
        obs, r, terminated, truncated, _ = env.step(a)
        observations.append(obs.tolist())
        rewards.append(r)
        flags.append((terminated, truncated))
        if terminated or truncated:
            break
    return observations, rewards, flags


def turn(goal):
    return UP if goal > 0 else DOWN


@pytest.mark.parametrize("goal", [-1, 1])
def test_remembering_the_clue_and_turning_correctly_returns_exactly_1(goal):
    _, rewards, flags = run([RIGHT] * 10 + [turn(goal)], goal)
    assert sum(rewards) == pytest.approx(1.0) and rewards[-1] == 1.0
    assert len(rewards) == 11 and flags[-1] == (False, True)


@pytest.mark.parametrize("goal", [-1, 1])
def test_the_wrong_turn_returns_0(goal):
    _, rewards, _ = run([RIGHT] * 10 + [turn(-goal)], goal)
    assert sum(rewards) == 0.0


def test_a_dawdling_agent_pays_one_over_l_per_step_behind_pace_and_misses_the_goal():
    # L = 10: wait once at step 3, then run right. x < t for steps 3..10 (8 steps) -> -0.8; it ends at the junction
    # (y = 0) at step 11, so no goal reward.
    _, rewards, _ = run([RIGHT, RIGHT, DOWN] + [RIGHT] * 20, goal=1)
    assert len(rewards) == 11
    assert sum(rewards) == pytest.approx(-0.8)


def test_the_clue_is_shown_only_on_the_first_visit_of_the_start_cell():
    obs, _, _ = run([LEFT, RIGHT, LEFT], goal=-1)
    assert obs[0] == [0, -1]  # the clue at reset
    assert obs[1] == [0, 0]  # still on the start cell (LEFT into the wall): no clue the second time
    assert obs[3] == [0, 0]  # back on it later: still none


def test_the_corridor_is_ambiguous_and_the_junction_shows_only_the_agents_y():
    obs, _, _ = run([RIGHT] * 10 + [UP], goal=-1)
    assert all(o == [0, 0] for o in obs[1:10])
    assert obs[10] == [1, 0]  # at the junction
    assert obs[11] == [1, 1]  # in the upper goal cell


def test_active_tmaze_starts_one_cell_past_the_clue_and_lasts_l_plus_3_steps():
    obs, rewards, flags = run([LEFT] + [RIGHT] * 11 + [UP], goal=1, env_id="dmh/TMazeActive-v0")
    assert obs[0] == [0, 0] and obs[1] == [0, 1]
    assert len(rewards) == 13 and flags[-1] == (False, True)
    assert sum(rewards) == pytest.approx(1.0)


def test_goal_side_is_drawn_at_reset_from_the_seeded_rng():
    env = gym.make("dmh/TMaze-v0", memory_length=5)
    goals = [env.reset(seed=s)[1]["task"][0] for s in range(40)]
    assert set(goals) == {-1.0, 1.0}
    assert goals == [env.reset(seed=s)[1]["task"][0] for s in range(40)]


def test_batched_core_agrees_with_the_gymnasium_class_step_for_step():
    L, B = 6, 16
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 4, size=(B, L + 1))
    actions[: B // 2] = RIGHT  # half the rows run to the junction so the goal cells are visited too
    actions[: B // 2, -1] = rng.integers(0, 4, size=B // 2)
    core = TMazeCore(L, B)
    goals = np.where(np.arange(B) % 2 == 0, 1.0, -1.0)
    core.reset(np.random.default_rng(0), goals[:, None])
    batched = [core.step(actions[:, t]) for t in range(L + 1)]
    for b in range(B):
        env = gym.make("dmh/TMaze-v0", memory_length=L, task=goals[b]).unwrapped
        env.reset(seed=0)
        for t in range(L + 1):
            o, r, term, trunc, _ = env.step(int(actions[b, t]))
            bo, br, bterm, btrunc = (x[b] for x in batched[t])
            assert (o.tolist(), r, term, trunc) == (bo.tolist(), pytest.approx(float(br)), bool(bterm), bool(btrunc))


@pytest.mark.parametrize("bad", [0, -5, 2.5, "10"])
def test_memory_length_must_be_a_positive_integer(bad):
    with pytest.raises(DmhError, match="memory_length must be a positive integer"):
        gym.make("dmh/TMaze-v0", memory_length=bad)


def test_a_goal_side_other_than_plus_or_minus_one_is_rejected():
    with pytest.raises(DmhError, match="goal side"):
        gym.make("dmh/TMaze-v0", memory_length=5, task=0.5).reset(seed=0)
