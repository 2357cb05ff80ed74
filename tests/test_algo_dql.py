"""DQL (algorithms/dql.py): the normalised Q term and the critic target against hand computations, the
actor's gradient through the whole chain towards higher Q, exact resume, a CLI smoke run on hopper, and
learning on point_reach."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from algorithms.base import AlgoContext, Rollout
from algorithms.diffusion import sample_chain
from algorithms.dql import DQL, DQLConfig, normalised_q_loss
from bench.config import PretrainConfig, build_run_config
from bench.pretrain import build_diffusion_policy

torch.set_num_threads(1)

T, N, OBS, ACT, TP, TA = 4, 3, 4, 2, 4, 2


def make(**overrides) -> DQL:
    torch.manual_seed(0)
    pre = build_diffusion_policy(OBS, ACT, TP, PretrainConfig(hidden_dims=(32, 32, 32), denoising_steps=5))
    ctx = AlgoContext(OBS, ACT, TP, TA, N, T, 10, "gym", torch.device("cpu"))
    cfg = DQLConfig(**{"batch_size": 8, "replay_ratio": 4.0, "n_critic_warmup_itr": 1, "lr_warmup_itr": 0,
                       "critic_hidden": (16, 16, 16), **overrides})
    return DQL(cfg, ctx, pre)


def _rollout(algo, seed=1, terminated=None):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand((T, N, OBS), generator=g) * 2 - 1
    outs = [algo.act(obs[t]) for t in range(T)]
    term = torch.zeros(T, N, dtype=torch.bool) if terminated is None else torch.full((T, N), terminated)
    trunc = torch.zeros(T, N, dtype=torch.bool)
    if terminated is None:
        term[1, 0], trunc[2, 1] = True, True
    return Rollout(obs, {"actions": torch.stack([o.extras["actions"] for o in outs])},
                   torch.rand((T, N), generator=g), term, trunc, torch.rand((T, N, OBS), generator=g),
                   torch.rand((N, OBS), generator=g))


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_normalised_q_loss_by_hand():
    q1 = torch.tensor([1.0, -2.0, 4.0], requires_grad=True)
    q2 = torch.tensor([-2.0, 4.0, 0.5], requires_grad=True)
    # -mean(q1) / mean|q2| = -1 / (6.5 / 3); d/dq1 = -(1/3) / (6.5/3) = -1/6.5 each; q2 only normalises
    loss = normalised_q_loss(q1, q2, first=True)
    assert loss.item() == pytest.approx(-3 / 6.5)
    loss.backward()
    assert torch.allclose(q1.grad, torch.full((3,), -1 / 6.5)) and q2.grad is None
    q1.grad = None
    # the other way round: -mean(q2) / mean|q1| = -(2.5/3) / (7/3)
    loss = normalised_q_loss(q1, q2, first=False)
    assert loss.item() == pytest.approx(-2.5 / 7)
    loss.backward()
    assert torch.allclose(q2.grad, torch.full((3,), -1 / 7)) and q1.grad is None


def _constant_critic(net: nn.Module, value: float) -> None:
    """Make both Q heads output `value` whatever the input (last layer zero weights, bias = value)."""
    for head in (net.q1, net.q2):
        nn.init.zeros_(head[-1].weight)
        nn.init.constant_(head[-1].bias, value)


@pytest.mark.parametrize("terminated", [False, True])
def test_critic_target_by_hand(terminated):
    # a batch of the whole buffer, one gradient step: loss = 2 (c - y)^2 with y = s r + gamma (1 - d) c'
    algo = make(batch_size=T * N, replay_ratio=1.0, reward_scale=0.5, gamma=0.9, n_critic_warmup_itr=5)
    _constant_critic(algo.critic, 2.0)
    _constant_critic(algo.target_critic, 3.0)
    ro = _rollout(algo, terminated=terminated)
    ro.rewards.fill_(4.0)
    m = algo.update(ro, iteration=0)
    y = 0.5 * 4.0 + (0.0 if terminated else 0.9 * 3.0)
    assert m["gradient_steps"] == 1
    assert m["critic_loss"] == pytest.approx(2 * (2.0 - y) ** 2, rel=1e-6)


class HandQ(nn.Module):
    """Q1 = Q2 = w * (sum of the first action coordinate over the executed steps), w = 1."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, obs, a):
        q = self.w * a[:, :, 0].sum(1)
        return q, q


def test_actor_climbs_q_through_the_whole_chain():
    algo = make(batch_size=24, replay_ratio=8.0, n_critic_warmup_itr=0, actor_lr=3e-3, actor_lr_min=3e-3,
                bc_actions="buffer")
    algo.critic, algo.target_critic = HandQ(), HandQ()
    obs = torch.rand(16, OBS, generator=torch.Generator().manual_seed(3))

    def mean_first_coordinate():
        x = sample_chain(algo.policy.network, algo.chain, obs, 0.1, 3.0, torch.Generator().manual_seed(4))
        return x[:, :TA, 0].mean().item()

    before = mean_first_coordinate()
    first_layer = algo.policy.network.net[0].weight.detach().clone()
    m = algo.update(_rollout(algo), iteration=0)
    assert m["q_loss"] < 0 and m["bc_loss"] > 0
    assert m["actor_loss"] == pytest.approx(m["bc_loss"] + m["q_loss"], rel=1e-5)
    assert mean_first_coordinate() > before + 0.1
    assert not torch.equal(first_layer, algo.policy.network.net[0].weight)


def test_both_normalisations_are_drawn():
    # the coin decides which head is the numerator: with Q2 = 2 Q1 > 0 the two choices give -1/2 and -2
    algo = make(batch_size=8, replay_ratio=20.0, n_critic_warmup_itr=0, actor_lr=0.0, actor_lr_min=0.0)

    class Scaled(HandQ):
        def forward(self, obs, a):
            q = self.w * (a[:, :, 0].sum(1) + 100.0)
            return q, 2 * q

    algo.critic, algo.target_critic = Scaled(), Scaled()
    m = algo.update(_rollout(algo), iteration=0)
    # the mean over 30 steps lies strictly between the two values only if both were drawn
    assert m["gradient_steps"] == 30 and -2.0 < m["q_loss"] < -0.5


def test_state_dict_round_trip_resumes_exactly():
    algo = make()
    algo.update(_rollout(algo), iteration=0)
    state = copy.deepcopy(algo.state_dict())
    ro = _rollout(algo, 2)
    rng = torch.get_rng_state()
    algo.update(ro, iteration=1)
    other = make()
    other.load_state_dict(state)
    torch.set_rng_state(rng)
    other.update(ro, iteration=1)
    for a, b in ((algo.policy, other.policy), (algo.critic, other.critic), (algo.target_critic, other.target_critic)):
        assert all(torch.equal(x, y) for x, y in zip(_params(a), _params(b)))


def test_paper_presets_are_the_original_configs():
    c = build_run_config("hopper", "dql", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (40, 500, 1000)
    assert (a.eta, a.bc_actions, a.gamma, a.reward_scale, a.buffer_size) == (1.0, "policy", 0.99, 0.01, 1_000_000)
    assert (a.batch_size, a.replay_ratio, a.target_tau, a.n_critic_warmup_itr) == (1000, 16, 0.005, 5)
    assert (a.actor_lr, a.actor_lr_min, a.critic_lr, a.critic_lr_min, a.lr_warmup_itr) == (1e-4, 1e-4, 1e-3, 1e-3, 10)
    assert (a.min_sampling_std, a.randn_clip, a.critic_hidden, a.critic_activation) == (0.1, 3.0, (256,) * 3, "Mish")
    c = build_run_config("can", "dql", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (50, 300, 300)
    assert (a.gamma, a.reward_scale, a.actor_lr, a.n_critic_warmup_itr) == (0.999, 1.0, 1e-5, 5)
    c = build_run_config("transport", "dql", 0, "paper")
    a = c.algo
    assert (c.train.n_iterations, a.min_sampling_std, a.actor_lr_min, a.n_critic_warmup_itr) == (1000, 0.08, 1e-6, 2)


def test_smoke_run_on_hopper(cli, tmp_path):
    code, _, err = cli("run", "--algo", "dql", "--task", "hopper", "--preset", "smoke", "--out", tmp_path,
                       "--quiet", "--set", "torch_threads=1")
    assert code == 0, err
    run = tmp_path / "runs" / "hopper" / "dql" / "seed0"
    assert json.loads((run / "summary.json").read_text())["iterations"] == 2
    assert "critic_loss" in (run / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_dql_learns_point_reach(cli, tmp_path):
    code, _, err = cli("run", "--algo", "dql", "--task", "point_reach", "--out", tmp_path, "--quiet",
                       "--set", "torch_threads=1")
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "point_reach" / "dql" / "seed0" / "summary.json").read_text())
    assert summary["final_score"] > summary["pretrained_score"] + 15, summary
