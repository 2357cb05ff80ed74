"""Chunked vector envs on the real MuJoCo simulator, and the built-in dataset maker."""

import numpy as np
import pytest

from envs.tasks import get_task
from envs.vector import Normalizer, TaskVectorEnv


def identity_norm(task):
    return Normalizer(np.full(task.obs_dim, -1, np.float32), np.full(task.obs_dim, 1, np.float32),
                      np.full(task.act_dim, -1, np.float32), np.full(task.act_dim, 1, np.float32))


@pytest.mark.parametrize("name,obs_dim,act_dim", [("hopper", 11, 3), ("walker2d", 17, 6), ("halfcheetah", 17, 6)])
def test_gym_task_dims_and_reproducible_initial_states(name, obs_dim, act_dim):
    task = get_task(name)
    assert (task.obs_dim, task.act_dim, task.max_episode_steps) == (obs_dim, act_dim, 1000)
    env = TaskVectorEnv(task, 3, 4, identity_norm(task))
    a, b = env.reset(seed=7), env.reset(seed=7)
    assert a.shape == (3, obs_dim)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # envs get different seeds
    assert not np.array_equal(a, env.reset(seed=8))


def test_chunk_sums_rewards_and_truncation_keeps_true_final_obs():
    """A chunk executes Ta actions and sums rewards; a chunk cut by the time limit stops there, returns
    the true last observation separately and the next episode's first observation as `obs`."""
    import gymnasium as gym

    task = get_task("halfcheetah")  # never terminates: only truncations
    norm = identity_norm(task)
    env = TaskVectorEnv(task, 2, 4, norm, max_episode_steps=10)
    ref = gym.make("HalfCheetah-v5", max_episode_steps=10)
    env.reset(seed=3)
    ref_obs, _ = ref.reset(seed=3)
    rng = np.random.default_rng(0)
    for chunk_i in range(3):
        chunk = rng.uniform(-1, 1, (2, 4, 6)).astype(np.float32)
        step = env.step(chunk)
        total, n = 0.0, 0
        for a in chunk[0]:
            ref_obs, r, term, trunc, _ = ref.step(norm.unnormalize_act(a).astype(np.float32))
            total, n = total + r, n + 1
            if term or trunc:
                break
        assert step.reward[0] == pytest.approx(total)
        assert step.env_steps[0] == n
        if chunk_i < 2:
            assert not step.truncated.any()
            np.testing.assert_allclose(step.obs[0], norm.normalize_obs(ref_obs), rtol=1e-5, atol=1e-6)
        else:  # steps 9-10: the episode is cut after 2 of the 4 actions
            assert step.truncated.all() and not step.terminated.any() and n == 2
            np.testing.assert_allclose(step.final_obs[0], norm.normalize_obs(ref_obs), rtol=1e-5, atol=1e-6)
            assert not np.allclose(step.obs[0], step.final_obs[0])


def test_termination_is_not_truncation():
    task = get_task("hopper")
    env = TaskVectorEnv(task, 2, 4, identity_norm(task))
    env.reset(seed=0)
    ended = None
    for _ in range(100):  # falling over with extreme actions terminates the episode
        step = env.step(np.ones((2, 4, 3), np.float32))
        if step.terminated.any():
            ended = step
            break
    assert ended is not None and not ended.truncated[ended.terminated].any()


def test_builtin_dataset_is_deterministic(tmp_path, monkeypatch):
    from envs.datasets import load_dataset, make_builtin_dataset

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    p = make_builtin_dataset("hopper", 600, seed=5, n_envs=4, log=lambda m: None)
    a = load_dataset("hopper", "builtin", 600, 5, make_missing=False)
    p.unlink()
    make_builtin_dataset("hopper", 600, seed=5, n_envs=4, log=lambda m: None)
    b = load_dataset("hopper", "builtin", 600, 5, make_missing=False)
    assert a.checksum == b.checksum and len(a.observations) == 600
    starts, ends = a.episode_bounds()
    # transitions chain inside episodes: next step's observation continues the episode
    assert (a.terminals | a.timeouts).sum() == len(starts)
