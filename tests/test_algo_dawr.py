"""DAWR (algorithms/dawr.py): TD(lambda) targets over the time-ordered FIFO buffer (terminations,
truncations, the newest step, continuity, the config's gamma), the advantage weights, the replay-ratio
step counts and critic warm-up, resume, a CLI run on hopper and learning on point_reach."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from algorithms.base import AlgoContext, Rollout
from algorithms.dawr import DAWR, DAWRConfig
from algorithms.drwr import normalized_exp_weights
from bench.config import PretrainConfig
from bench.pretrain import build_diffusion_policy
from tests.test_algo_drwr import through_checkpoint

OBS, ACT, TP = 2, 2, 4
F, T_ = False, True


class KnownCritic(nn.Module):
    """V(s) = s[0] + 0.1 s[1]: a critic whose values the test knows."""

    def forward(self, obs):
        return obs[..., 0] + 0.1 * obs[..., 1]


def v(o):
    return o[0] + 0.1 * o[1]


def make(n_envs=2, n_steps=4, **overrides):
    torch.manual_seed(0)
    pre = build_diffusion_policy(OBS, ACT, TP, PretrainConfig(hidden_dims=(32, 32, 32), denoising_steps=5))
    ctx = AlgoContext(OBS, ACT, TP, TP, n_envs, n_steps, 10, "gym", torch.device("cpu"))
    cfg = DAWRConfig(**{"lr_warmup_itr": 0, "critic_hidden": (32, 32, 32), **overrides})
    return DAWR(cfg, ctx, pre)


def make_rollout(obs, rewards, terminated, truncated, final_obs, next_obs):
    obs = torch.tensor(obs, dtype=torch.float32)
    T, N = obs.shape[:2]
    return Rollout(obs, {"actions": torch.rand(T, N, TP, ACT) * 2 - 1}, torch.tensor(rewards, dtype=torch.float32),
                   torch.tensor(terminated), torch.tensor(truncated), torch.tensor(final_obs, dtype=torch.float32),
                   torch.tensor(next_obs, dtype=torch.float32))


# env 0: terminates after t = 1, then runs to the end; env 1: truncated after t = 2 (final obs [9, 9])
OBS1 = [[[1, 0], [2, 1]], [[3, 0], [4, 1]], [[5, 0], [6, 1]], [[7, 0], [8, 1]]]
REW1 = [[1, 2], [3, 4], [5, 6], [7, 8]]
TERM1 = [[F, F], [T_, F], [F, F], [F, F]]
TRUNC1 = [[F, F], [F, F], [F, T_], [F, F]]
FINAL1 = [[[0, 0], [0, 0]], [[20, 0], [0, 0]], [[0, 0], [9, 9]], [[0, 0], [0, 0]]]
NEXT1 = [[11, 0], [12, 1]]


def hand_lambda_return(obs, rew, term, trunc, final, nxt, gamma, lam, scale):
    """G_t = s r_t + gamma [(1 - lam) V(s') + lam G_{t+1}] inside a trajectory; at a termination G = s r;
    at a truncation or the buffer's end G = s r + gamma V(true next observation). Plain Python, per env."""
    T, N = len(rew), len(rew[0])
    G = np.zeros((T, N))
    for n in range(N):
        for t in range(T - 1, -1, -1):
            r = scale * rew[t][n]
            if term[t][n]:
                G[t, n] = r
            elif trunc[t][n]:
                G[t, n] = r + gamma * v(final[t][n])
            elif t == T - 1:
                G[t, n] = r + gamma * v(nxt[n])
            else:
                G[t, n] = r + gamma * ((1 - lam) * v(obs[t + 1][n]) + lam * G[t + 1, n])
    return G


@pytest.mark.parametrize("gamma", [0.9, 0.5])
def test_td_lambda_targets_by_hand_honour_the_configs_gamma(gamma):
    algo = make(gamma=gamma, td_lambda=0.5, td_alpha=1.0, reward_scale=2.0)
    algo.critic = KnownCritic()
    algo.buffer.add(make_rollout(OBS1, REW1, TERM1, TRUNC1, FINAL1, NEXT1), torch.zeros(4, 2, TP, ACT))
    targets, values = algo.td_lambda()
    V = np.array([[v(o) for o in row] for row in OBS1])
    G = hand_lambda_return(OBS1, REW1, TERM1, TRUNC1, FINAL1, NEXT1, gamma, 0.5, 2.0)
    assert np.allclose(values.numpy(), V)
    assert np.allclose(targets.numpy(), G, atol=1e-5)
    # a few by hand for gamma = 0.9: env 0, t = 1 terminates: 2 * 3 = 6; env 1, t = 2 truncates:
    # 2 * 6 + 0.9 * (9 + 0.9) = 20.91; env 0, t = 3 is the newest step: 2 * 7 + 0.9 * 11 = 23.9
    if gamma == 0.9:
        assert np.allclose([G[1, 0], G[2, 1], G[3, 0]], [6.0, 20.91, 23.9])
    # td_alpha moves the target only part of the way: V + alpha (G - V)
    algo.cfg.td_alpha = 0.95
    assert np.allclose(algo.td_lambda()[0].numpy(), V + 0.95 * (G - V), atol=1e-5)


def test_buffer_is_a_time_ordered_fifo_cut_where_the_envs_did_not_continue():
    algo = make(gamma=0.9, td_lambda=0.5, td_alpha=1.0, reward_scale=1.0, buffer_steps=5)
    algo.critic = KnownCritic()
    algo.buffer.add(make_rollout(OBS1, REW1, TERM1, TRUNC1, FINAL1, NEXT1), torch.zeros(4, 2, TP, ACT))
    # env 0 continues from [11, 0]; env 1 was reset (its obs is not the [12, 1] that followed its last step)
    obs2 = [[[11, 0], [30, 1]], [[13, 0], [31, 1]]]
    algo.buffer.add(make_rollout(obs2, [[1, 1], [2, 2]], [[F, F], [F, F]], [[F, F], [F, F]],
                                 [[[0, 0], [0, 0]], [[0, 0], [0, 0]]], [[15, 0], [32, 1]]),
                    torch.zeros(2, 2, TP, ACT))
    d = algo.buffer.data
    assert d["obs"].shape[:2] == (5, 2) and len(algo.buffer) == 10  # the oldest row was dropped
    assert d["obs"][:, 0, 0].tolist() == [3, 5, 7, 11, 13]
    assert d["ended"][:, 1].tolist() == [F, T_, T_, F, F]  # env 1: its truncation, then the cut
    assert d["ended"][:, 0].tolist() == [T_, F, F, F, F]  # env 0: its termination only
    # the same data laid out by hand as one trajectory per env; env 1's cut bootstraps from [12, 1]
    obs = [[[3, 0], [4, 1]], [[5, 0], [6, 1]], [[7, 0], [8, 1]], [[11, 0], [30, 1]], [[13, 0], [31, 1]]]
    rew = [[3, 4], [5, 6], [7, 8], [1, 1], [2, 2]]
    term = [[T_, F], [F, F], [F, F], [F, F], [F, F]]
    trunc = [[F, F], [F, T_], [F, T_], [F, F], [F, F]]
    final = [[[20, 0], [0, 0]], [[0, 0], [9, 9]], [[0, 0], [12, 1]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]
    G = hand_lambda_return(obs, rew, term, trunc, final, [[15, 0], [32, 1]], 0.9, 0.5, 1.0)
    assert np.allclose(algo.td_lambda()[0].numpy(), G, atol=1e-5)


def test_advantage_weights_by_hand():
    a = np.array([0.3, -1.2, 0.05, 2.0, -0.4])
    z = (a - a.mean()) / (a.std(ddof=1) + 1e-6)  # per-minibatch normalisation, torch's unbiased std
    expected = np.minimum(np.exp(10 * z), 100.0)
    got = normalized_exp_weights(torch.tensor(a, dtype=torch.float64), 10.0, 100.0, eps=1e-6, unbiased=True)
    assert np.allclose(got.numpy(), expected, rtol=1e-12)
    assert expected.max() == 100.0 and expected.min() < 1e-3


def adam_steps(opt):
    return [int(s["step"]) for s in opt.state.values()]


def test_replay_ratio_step_counts_and_critic_warmup():
    ro = make_rollout(OBS1, REW1, TERM1, TRUNC1, FINAL1, NEXT1)
    # 8 new transitions, batch 4, replay ratio 8 -> 16 actor steps and 16 / 4 = 4 critic steps
    algo = make(batch_size=4, replay_ratio=8, critic_update_ratio=4, n_critic_warmup_itr=1)
    m = algo.update(ro, 0)  # warm-up: the critic learns, the actor does not move
    assert m["actor_updated"] == 0.0 and not algo.actor_opt.state and set(adam_steps(algo.critic_opt)) == {4}
    m = algo.update(ro, 1)
    assert m["actor_updated"] == 1.0 and set(adam_steps(algo.actor_opt)) == {16}
    assert set(adam_steps(algo.critic_opt)) == {8} and np.isfinite(m["loss"]) and np.isfinite(m["v_loss"])


def test_state_dict_round_trip_continues_identically():
    ro = make_rollout(OBS1, REW1, TERM1, TRUNC1, FINAL1, NEXT1)
    a = make(batch_size=4, replay_ratio=4)
    a.update(ro, 0)
    b = make(batch_size=4, replay_ratio=4)
    b.load_state_dict(through_checkpoint(a.state_dict()))
    ro2 = make_rollout([[[11, 0], [12, 1]]], [[1, 2]], [[F, T_]], [[F, F]], [[[0, 0], [5, 5]]], [[12, 0], [0, 1]])
    torch.manual_seed(7)
    ma = a.update(ro2, 1)
    torch.manual_seed(7)
    mb = b.update(ro2, 1)
    assert ma == mb and ma["buffer_size"] == 10
    for m1, m2 in ((a.policy.network, b.policy.network), (a.critic, b.critic)):
        assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_smoke_run_through_the_cli_on_hopper(cli, tmp_path):
    code, _, err = cli("run", "--algo", "dawr", "--task", "hopper", "--preset", "smoke", "--out", tmp_path,
                       "--quiet", "--set", "torch_threads=1")
    assert code == 0, err
    d = tmp_path / "runs" / "hopper" / "dawr" / "seed0"
    s = json.loads((d / "summary.json").read_text())
    assert s["complete"] and s["iterations"] == 2
    import pandas as pd

    m = pd.read_csv(d / "metrics.csv")
    assert np.isfinite(m[["loss", "v_loss"]].to_numpy()).all()


@pytest.mark.slow
def test_learns_on_point_reach(cli, tmp_path):
    code, _, err = cli("run", "--algo", "dawr", "--task", "point_reach", "--preset", "small", "--seed", "0",
                       "--out", tmp_path, "--quiet", "--set", "torch_threads=1")
    assert code == 0, err
    s = json.loads((tmp_path / "runs" / "point_reach" / "dawr" / "seed0" / "summary.json").read_text())
    assert s["final_score"] > s["pretrained_score"] + 5, (s["pretrained_score"], s["final_score"])
