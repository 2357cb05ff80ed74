"""IDQL (algorithms/idql.py): the expectile loss and the candidate selection against hand computations,
one update on a hand-made rollout, exact resume, a CLI smoke run on hopper, and learning on point_reach."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from algorithms.base import AlgoContext, Rollout
from algorithms.diffusion import sample_chain
from algorithms.idql import IDQL, IDQLConfig, candidate_probs, expectile_loss
from bench.config import PretrainConfig, build_run_config
from bench.pretrain import build_diffusion_policy

torch.set_num_threads(1)

T, N, OBS, ACT, TP, TA, S = 4, 3, 4, 2, 4, 2, 5


def make(**overrides) -> IDQL:
    torch.manual_seed(0)
    pre = build_diffusion_policy(OBS, ACT, TP, PretrainConfig(hidden_dims=(32, 32, 32), denoising_steps=5))
    ctx = AlgoContext(OBS, ACT, TP, TA, N, T, 10, "gym", torch.device("cpu"))
    cfg = IDQLConfig(**{"n_candidates": S, "batch_size": 8, "replay_ratio": 4.0, "n_critic_warmup_itr": 1,
                        "lr_warmup_itr": 0, "critic_hidden": (16, 16, 16), **overrides})
    return IDQL(cfg, ctx, pre)


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0, 0.0])
    # weights 0.8, 0.2, 0.8, 0.2, (0.2 * 0): 0.8*4 + 0.2*1 + 0.8*0.25 + 0.2*9 + 0 = 5.4, over 5 entries
    assert expectile_loss(diff, 0.8).item() == pytest.approx(5.4 / 5)
    # as a function of V with targets {0, 1}: gradient -mean(2 w (t - v)); zero at the 0.8-expectile v = 0.8
    for v0, grad in ((0.5, (2 * 0.2 * 0.5 - 2 * 0.8 * 0.5) / 2), (0.8, 0.0)):
        v = torch.tensor(v0, requires_grad=True)
        expectile_loss(torch.tensor([0.0, 1.0]) - v, 0.8).backward()
        assert v.grad.item() == pytest.approx(grad, abs=1e-6)


def test_candidate_probs_by_hand():
    q = torch.tensor([[1.0, 5.0], [3.0, 2.0], [0.0, 7.0]])  # (S = 3 candidates, B = 2 envs)
    v = torch.tensor([[2.0, 4.0]])
    # env 0: only candidate 1 beats V -> (0.3, 0.7, 0.3) / 1.3; env 1: candidates 0, 2 -> (0.7, 0.3, 0.7) / 1.7
    expected = [[0.3 / 1.3, 0.7 / 1.3, 0.3 / 1.3], [0.7 / 1.7, 0.3 / 1.7, 0.7 / 1.7]]
    assert torch.allclose(candidate_probs(q, v, 0.7), torch.tensor(expected))


class HandQ(nn.Module):
    """Q1 = sum of the first action coordinate over the executed steps, Q2 = 0.3 - sum of the second."""

    def forward(self, obs, a):
        return a[:, :, 0].sum(1), 0.3 - a[:, :, 1].sum(1)


class HandV(nn.Module):
    def forward(self, obs):
        return torch.full((obs.shape[0],), -0.2)


def _hand_q(chunk) -> float:
    return min(float(chunk[:TA, 0].sum()), 0.3 - float(chunk[:TA, 1].sum()))


def _candidates(algo, obs, seed, deterministic):
    """The S candidates `act` draws with this generator seed, reproduced with the shared sampler."""
    g = torch.Generator().manual_seed(seed)
    x = sample_chain(algo.policy.network, algo.chain, obs.repeat(S, 1), 0.1, 3.0, g, deterministic=deterministic)
    return x.view(S, obs.shape[0], TP, ACT), g


def test_evaluation_picks_the_argmax_of_min_target_q():
    algo = make()
    algo.target_q = HandQ()
    obs = torch.rand(N, OBS, generator=torch.Generator().manual_seed(1))
    out = algo.act(obs, deterministic=True, generator=torch.Generator().manual_seed(7))
    cands, _ = _candidates(algo, obs, 7, deterministic=True)
    for n in range(N):
        scores = [_hand_q(cands[s, n]) for s in range(S)]
        assert len(set(scores)) == S
        assert torch.equal(out.actions[n], cands[scores.index(max(scores)), n])
    assert torch.equal(out.extras["actions"], out.actions)


def test_training_draws_candidates_with_expectile_weights():
    algo = make(exploration_expectile=0.9)
    algo.target_q, algo.critic_v = HandQ(), HandV()
    obs = torch.rand(N, OBS, generator=torch.Generator().manual_seed(1))
    n_above = 0
    for seed in range(20):
        out = algo.act(obs, generator=torch.Generator().manual_seed(seed))
        cands, g = _candidates(algo, obs, seed, deterministic=False)
        probs = []
        for n in range(N):
            w = [0.9 if _hand_q(cands[s, n]) > -0.2 else 0.1 for s in range(S)]
            probs.append([x / sum(w) for x in w])
            n_above += 0 < sum(x == 0.9 for x in w) < S
        pick = torch.multinomial(torch.tensor(probs), 1, generator=g).squeeze(1)
        for n in range(N):
            assert torch.equal(out.actions[n], cands[pick[n], n])
    assert n_above > 10  # the hand V splits the candidates, so the weights matter
    algo.cfg.expectile_exploration = False  # then training picks the argmax too
    out = algo.act(obs, generator=torch.Generator().manual_seed(3))
    cands, _ = _candidates(algo, obs, 3, deterministic=False)
    for n in range(N):
        scores = [_hand_q(cands[s, n]) for s in range(S)]
        assert torch.equal(out.actions[n], cands[scores.index(max(scores)), n])


def _rollout(algo, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand((T, N, OBS), generator=g) * 2 - 1
    outs = [algo.act(obs[t]) for t in range(T)]
    term = torch.zeros(T, N, dtype=torch.bool)
    trunc = torch.zeros(T, N, dtype=torch.bool)
    term[1, 0], trunc[2, 1] = True, True
    return Rollout(obs, {"actions": torch.stack([o.extras["actions"] for o in outs])},
                   torch.rand((T, N), generator=g), term, trunc, torch.rand((T, N, OBS), generator=g),
                   torch.rand((N, OBS), generator=g))


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def _constant(layer: nn.Linear, value: float) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.constant_(layer.bias, value)


@pytest.mark.parametrize("terminated, v", [(False, 1.0), (True, 4.0)])
def test_critic_losses_by_hand(terminated, v):
    # constant critics (last layers zero, bias set), learning rates 0, one step on the whole buffer:
    # V loss = w (min(Q1', Q2') - V)^2 with w = 0.8 if positive else 0.2; Q loss = 2 (c - y)^2 with
    # y = scale r + gamma (1 - d) V(s')
    algo = make(batch_size=T * N, replay_ratio=1.0, reward_scale=0.5, gamma=0.9, critic_lr=0.0,
                critic_lr_min=0.0, n_critic_warmup_itr=5)
    _constant(algo.critic_q.q1[-1], 2.0)
    _constant(algo.critic_q.q2[-1], 2.0)
    _constant(algo.target_q.q1[-1], 5.0)
    _constant(algo.target_q.q2[-1], 3.0)
    _constant(algo.critic_v.net[-1], v)
    ro = _rollout(algo)
    ro.rewards.fill_(4.0)
    ro.terminated.fill_(terminated)
    m = algo.update(ro, iteration=0)
    diff = 3.0 - v
    y = 0.5 * 4.0 + (0.0 if terminated else 0.9 * v)
    assert m["gradient_steps"] == 1
    assert m["v_loss"] == pytest.approx((0.8 if diff > 0 else 0.2) * diff**2, rel=1e-6)
    assert m["q_loss"] == pytest.approx(2 * (2.0 - y) ** 2, rel=1e-6)


def test_update_fills_buffer_and_trains_critics_before_actor():
    algo = make(reward_scale=0.5, target_tau=0.25)
    ro = _rollout(algo)
    actor, q, v, tq = _params(algo.policy), _params(algo.critic_q), _params(algo.critic_v), _params(algo.target_q)
    m = algo.update(ro, iteration=0)  # critic warm-up: the actor stays
    assert len(algo.buffer) == T * N and m["gradient_steps"] == int(T * N / 8 * 4)
    assert torch.equal(algo.buffer.data["rewards"][: T * N], ro.rewards.reshape(-1))  # raw; scaled in the target
    assert algo.buffer.data["next_obs"][1 * N + 0].equal(ro.final_obs[1, 0])  # the ended episode's last obs
    assert all(torch.equal(a, b) for a, b in zip(actor, _params(algo.policy)))
    assert any(not torch.equal(a, b) for a, b in zip(q, _params(algo.critic_q)))
    assert any(not torch.equal(a, b) for a, b in zip(v, _params(algo.critic_v)))
    assert any(not torch.equal(a, b) for a, b in zip(tq, _params(algo.target_q)))
    assert "actor_loss" not in m
    m = algo.update(_rollout(algo, 2), iteration=1)
    assert any(not torch.equal(a, b) for a, b in zip(actor, _params(algo.policy)))
    assert m["actor_loss"] > 0 and len(algo.buffer) == 2 * T * N


def test_state_dict_round_trip_resumes_exactly():
    algo = make()
    algo.update(_rollout(algo), iteration=0)
    state = copy.deepcopy(algo.state_dict())
    ro = _rollout(algo, 2)
    rng = torch.get_rng_state()
    algo.update(ro, iteration=1)
    other = make(n_candidates=S)
    other.load_state_dict(state)
    torch.set_rng_state(rng)
    other.update(ro, iteration=1)
    for a, b in ((algo.policy, other.policy), (algo.critic_q, other.critic_q), (algo.critic_v, other.critic_v),
                 (algo.target_q, other.target_q)):
        assert all(torch.equal(x, y) for x, y in zip(_params(a), _params(b)))


def test_paper_presets_are_the_original_configs():
    c = build_run_config("hopper", "idql", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (40, 500, 1000)
    assert (a.n_candidates, a.expectile, a.exploration_expectile, a.expectile_exploration) == (20, 0.8, 0.7, True)
    assert (a.gamma, a.reward_scale, a.buffer_size, a.batch_size, a.replay_ratio) == (0.99, 0.01, 1_000_000, 1000, 128)
    assert (a.target_tau, a.n_critic_warmup_itr, a.min_sampling_std, a.randn_clip) == (0.001, 5, 0.1, 3.0)
    assert (a.actor_lr, a.actor_lr_min, a.critic_lr, a.critic_lr_min, a.lr_warmup_itr) == (1e-4, 1e-4, 1e-3, 1e-3, 10)
    assert a.critic_hidden == (256, 256, 256) and a.critic_activation == "Mish"
    c = build_run_config("can", "idql", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (50, 300, 300)
    assert (a.n_candidates, a.gamma, a.reward_scale, a.buffer_size, a.actor_lr) == (10, 0.999, 1.0, 250_000, 1e-5)
    c = build_run_config("transport", "idql", 0, "paper")
    a = c.algo
    assert (c.train.n_steps, c.train.n_iterations, a.min_sampling_std, a.actor_lr_min) == (400, 1000, 0.08, 1e-6)


def test_bad_exploration_expectile_is_a_one_line_error(cli, tmp_path):
    code, _, err = cli("run", "--algo", "idql", "--task", "point_reach", "--preset", "smoke", "--out", tmp_path,
                       "--quiet", "--set", "algo.exploration_expectile=1.0")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: algo.exploration_expectile"), err
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (tmp_path / "runs").exists()


def test_smoke_run_on_hopper(cli, tmp_path):
    code, _, err = cli("run", "--algo", "idql", "--task", "hopper", "--preset", "smoke", "--out", tmp_path,
                       "--quiet", "--set", "torch_threads=1")
    assert code == 0, err
    run = tmp_path / "runs" / "hopper" / "idql" / "seed0"
    assert json.loads((run / "summary.json").read_text())["iterations"] == 2
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "v_loss" in header and "q_loss" in header


@pytest.mark.slow
def test_idql_learns_point_reach(cli, tmp_path):
    code, _, err = cli("run", "--algo", "idql", "--task", "point_reach", "--out", tmp_path, "--quiet",
                       "--set", "torch_threads=1")
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "point_reach" / "idql" / "seed0" / "summary.json").read_text())
    assert summary["final_score"] > summary["pretrained_score"] + 15, summary

