"""The tiny learning-check task: dynamics by hand, references, data, and DPPO learning on it."""

import json

import numpy as np
import pytest

from envs import toy_tasks as T
from envs.tasks import get_task


def test_dynamics_by_hand():
    env = T.PointReachEnv()
    obs, _ = env.reset(seed=3)
    env.pos, env.goal = np.array([0.95, 0.0]), np.array([0.5, 0.5])
    obs, reward, term, trunc, info = env.step(np.array([1.0, 2.0]))  # x clipped to the wall, y action clipped to 1
    assert np.allclose(obs, [1.0, 0.1, 0.5, 0.5])
    assert reward == pytest.approx(-np.hypot(0.5, 0.4))
    assert not term and not trunc and not info["success"]
    env.pos = np.array([0.5, 0.45])
    _, reward, _, _, info = env.step(np.array([0.0, 0.2]))  # lands at (0.5, 0.47): within 0.1
    assert info["success"] and reward == pytest.approx(-0.03)


def test_episode_is_truncated_after_20_steps():
    env = T.PointReachEnv()
    env.reset(seed=0)
    flags = [env.step(np.zeros(2))[3] for _ in range(20)]
    assert flags == [False] * 19 + [True]


def test_expert_action_by_hand():
    # far away: full speed along the direction; close: exactly onto the goal
    a = T.expert_action(np.array([[0.0, 0.0]]), np.array([[0.6, 0.8]]), 1.0)
    assert np.allclose(a, [[0.6, 0.8]])
    a = T.expert_action(np.array([[0.0, 0.0]]), np.array([[0.03, 0.04]]), 1.0)
    assert np.allclose(a, [[0.3, 0.4]])
    a = T.expert_action(np.array([[0.0, 0.0]]), np.array([[0.6, 0.8]]), 0.5)
    assert np.allclose(a, [[0.3, 0.4]])


def test_reference_returns_match_the_constants():
    rand, expert = T.reference_returns()
    assert rand == pytest.approx(T.REF_RANDOM_RETURN, abs=1e-4)
    assert expert == pytest.approx(T.REF_EXPERT_RETURN, abs=1e-4)
    spec = get_task("point_reach")
    assert spec.normalized_score(T.REF_EXPERT_RETURN) == pytest.approx(100.0)


def test_demonstrations_are_seeded_and_imperfect():
    a = T.make_demonstrations(2000, seed=1)
    b = T.make_demonstrations(2000, seed=1)
    c = T.make_demonstrations(2000, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    obs, act, rew, timeouts = a
    assert obs.shape == (2000, 4) and act.shape == (2000, 2) and timeouts.sum() == 100
    mean_return = rew.reshape(-1, 20).sum(1).mean()
    score = get_task("point_reach").normalized_score(mean_return)
    assert 30 < score < 75  # clearly below the expert: there is something to learn


@pytest.mark.slow
def test_dppo_learns_point_reach(cli, tmp_path):
    code, out, err = cli("run", "--algo", "dppo", "--task", "point_reach", "--out", tmp_path, "--set", "torch_threads=1")
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "point_reach" / "dppo" / "seed0" / "summary.json").read_text())
    assert summary["final_score"] > summary["pretrained_score"] + 15, summary
