"""DRWR (algorithms/drwr.py): Monte-Carlo returns with episode ends, held-back running episodes, the
normalised exponential weights, the per-sample diffusion loss, resume, and a CLI run on hopper."""

import io
import json

import numpy as np
import torch

from algorithms.base import AlgoContext, Rollout
from algorithms.drwr import DRWR, DRWRConfig, normalized_exp_weights
from bench.config import PretrainConfig
from bench.pretrain import build_diffusion_policy

OBS, ACT, TP = 3, 2, 4


def make(n_envs=2, n_steps=4, **overrides):
    torch.manual_seed(0)
    pre = build_diffusion_policy(OBS, ACT, TP, PretrainConfig(hidden_dims=(32, 32, 32), denoising_steps=5))
    ctx = AlgoContext(OBS, ACT, TP, TP, n_envs, n_steps, 10, "gym", torch.device("cpu"))
    return DRWR(DRWRConfig(**{"lr_warmup_itr": 0, **overrides}), ctx, pre)


def hand_rollout(rewards, terminated, truncated, t0=0, next_obs=None):
    """obs[t, n] = [t0 + t, n, 0] identifies the step; the stored chunk is filled with the same t0 + t."""
    rewards = torch.tensor(rewards, dtype=torch.float32)
    T, N = rewards.shape
    t = torch.arange(t0, t0 + T, dtype=torch.float32).view(T, 1).expand(T, N)
    n = torch.arange(N, dtype=torch.float32).view(1, N).expand(T, N)
    obs = torch.stack([t, n, torch.zeros(T, N)], -1)
    chunks = t.reshape(T, N, 1, 1).expand(T, N, TP, ACT).clone() / 10
    nxt = torch.stack([torch.full((N,), t0 + T, dtype=torch.float32), torch.arange(N, dtype=torch.float32),
                       torch.zeros(N)], -1) if next_obs is None else next_obs
    return Rollout(obs, {"actions": chunks}, rewards, torch.tensor(terminated), torch.tensor(truncated),
                   torch.zeros(T, N, OBS), nxt)


def steps(obs):
    return [(int(o[0]), int(o[1])) for o in obs]


F, T_ = False, True


def through_checkpoint(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_returns_episode_ends_and_held_back_steps_by_hand():
    algo = make(gamma=0.5)
    # env 0: rewards 1, 2 | 3, 4 ...  terminates after t = 1, its next episode is still running at t = 3
    # env 1: rewards 1, 0, 2, 1 truncated after t = 3 (the return just ends, there is no critic)
    ro = hand_rollout([[1, 1], [2, 0], [3, 2], [4, 1]],
                      [[F, F], [T_, F], [F, F], [F, F]], [[F, F], [F, F], [F, F], [F, T_]])
    obs, chunks, returns = algo._samples(ro)
    # G = r + 0.5 G' within an episode: env 0: t1 = 2, t0 = 1 + 1 = 2; env 1: t3 = 1, t2 = 2.5, t1 = 1.25, t0 = 1.625
    assert steps(obs) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (3, 1)]
    assert returns.tolist() == [2.0, 1.625, 2.0, 1.25, 2.5, 1.0]
    assert torch.equal(chunks[:, 0, 0], obs[:, 0] / 10)
    assert algo.held["waiting"].sum() == 2  # env 0's steps t = 2, 3 wait for their episode's end

    # next rollout: env 0's episode ends after its t = 5; env 1's new episode does not end
    ro2 = hand_rollout([[5, 1], [6, 1]], [[F, F], [T_, F]], [[F, F], [F, F]], t0=4)
    obs, _, returns = algo._samples(ro2)
    # env 0: t5 = 6, t4 = 5 + 3 = 8, t3 = 4 + 4 = 8, t2 = 3 + 4 = 7
    assert steps(obs) == [(2, 0), (3, 0), (4, 0), (5, 0)]
    assert returns.tolist() == [7.0, 8.0, 8.0, 6.0]
    assert algo.held["waiting"].sum() == 2  # now env 1's t = 4, 5

    # the envs were reset (a resume without env state): env 1's held episode never ends, so it is dropped
    ro3 = hand_rollout([[1, 1], [1, 1]], [[F, T_], [F, F]], [[F, F], [F, F]], t0=100)
    obs, _, returns = algo._samples(ro3)
    assert steps(obs) == [(100, 1)] and returns.tolist() == [1.0]


def test_drop_discards_running_episodes_but_keeps_those_begun_earlier():
    algo = make(gamma=0.5, incomplete_episodes="drop")
    ro = hand_rollout([[1, 1], [2, 0], [3, 2], [4, 1]],
                      [[F, F], [T_, F], [F, F], [F, F]], [[F, F], [F, F], [F, F], [F, T_]])
    obs, _, _ = algo._samples(ro)
    assert steps(obs) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (3, 1)]
    ro2 = hand_rollout([[5, 1], [6, 1]], [[F, F], [T_, F]], [[F, F], [F, F]], t0=4)
    obs, _, returns = algo._samples(ro2)  # env 0's episode began in the previous rollout: t4, t5 still count
    assert steps(obs) == [(4, 0), (5, 0)] and returns.tolist() == [8.0, 6.0]
    assert algo.held["obs"].shape[0] == 0


def test_weights_normalised_exponential_capped_by_hand():
    g = np.array([2.0, 1.625, 2.0, 1.25, 2.5, 1.0])
    mean = g.sum() / 6
    std = np.sqrt(((g - mean) ** 2).sum() / 6)  # population std, as the original (numpy)
    expected = np.minimum(np.exp(10 * (g - mean) / (std + 1e-3)), 100.0)
    got = normalized_exp_weights(torch.tensor(g, dtype=torch.float64), 10.0, 100.0, eps=1e-3, unbiased=False)
    assert np.allclose(got.numpy(), expected, rtol=1e-12)
    assert expected.max() == 100.0 and expected.min() < 1e-3  # the cap and the exponential both act here


def test_per_sample_diffusion_loss_and_weighted_loss_by_hand():
    algo = make()
    x0, obs = torch.rand(5, TP, ACT) * 2 - 1, torch.rand(5, OBS)
    per = algo.policy.loss(x0, obs, torch.Generator().manual_seed(3), reduction="none")
    mean = algo.policy.loss(x0, obs, torch.Generator().manual_seed(3))
    assert per.shape == (5,) and torch.allclose(per.mean(), mean)
    # recompute one sample's MSE by hand from the same draws
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 5, (5,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ac = algo.policy.sqrt_ac[t].view(5, 1, 1)
    xt = ac * x0 + algo.policy.sqrt_one_minus_ac[t].view(5, 1, 1) * eps
    with torch.no_grad():
        hand = ((algo.policy.network(xt, t, obs) - eps) ** 2).sum(dim=(1, 2)) / (TP * ACT)
    assert torch.allclose(per.detach(), hand, atol=1e-6)


def test_regression_moves_the_policy_towards_high_return_chunks():
    """One state, two executed chunks: +0.5 earned reward 1, -0.5 earned 0; every episode lasts one step."""
    n = 64
    algo = make(n_envs=n, n_steps=1, lr=3e-3, lr_min=3e-3, batch_size=n, update_epochs=1)
    obs = torch.zeros(1, n, OBS)
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    chunks = (0.5 * sign).view(1, n, 1, 1).expand(1, n, TP, ACT).clone()
    ro = Rollout(obs, {"actions": chunks}, (sign > 0).float().view(1, n), torch.ones(1, n, dtype=torch.bool),
                 torch.zeros(1, n, dtype=torch.bool), torch.zeros(1, n, OBS), torch.zeros(n, OBS))
    g = torch.Generator().manual_seed(0)
    before = algo.act(torch.zeros(256, OBS), generator=g).actions.mean()
    for i in range(40):
        algo.update(ro, i)
    after = algo.act(torch.zeros(256, OBS), generator=g).actions.mean()
    assert after > 0.3 and after > before + 0.2


def test_state_dict_round_trip_continues_identically():
    ros = [hand_rollout([[1, 1], [2, 0], [3, 2], [4, 1]], [[F, F], [T_, F], [F, F], [F, F]],
                        [[F, F], [F, F], [F, F], [F, T_]]),
           hand_rollout([[5, 1], [6, 1], [0, 0], [1, 2]], [[F, F], [T_, F], [F, F], [F, T_]],
                        [[F, F], [F, F], [F, F], [F, F]], t0=4)]
    a = make(batch_size=4, update_epochs=2)
    a.update(ros[0], 0)
    b = make(batch_size=4, update_epochs=2)
    b.load_state_dict(through_checkpoint(a.state_dict()))
    torch.manual_seed(7)
    ma = a.update(ros[1], 1)
    torch.manual_seed(7)
    mb = b.update(ros[1], 1)
    assert ma == mb and ma["samples"] == 8  # env 0's held steps t = 2, 3 are trained on after the resume
    for p, q in zip(a.policy.network.parameters(), b.policy.network.parameters()):
        assert torch.equal(p, q)
    for k in a.held:
        assert torch.equal(a.held[k], b.held[k])


def test_smoke_run_through_the_cli_on_hopper(cli, tmp_path):
    code, _, err = cli("run", "--algo", "drwr", "--task", "hopper", "--preset", "smoke", "--out", tmp_path,
                       "--quiet", "--set", "torch_threads=1")
    assert code == 0, err
    d = tmp_path / "runs" / "hopper" / "drwr" / "seed0"
    s = json.loads((d / "summary.json").read_text())
    assert s["complete"] and s["iterations"] == 2
    import pandas as pd

    m = pd.read_csv(d / "metrics.csv")
    assert m["samples"].sum() > 0 and np.isfinite(m["loss"].dropna()).all() and m["loss"].notna().any()
    code, _, err = cli("eval", d, "--episodes", "2")
    assert code == 0, err
