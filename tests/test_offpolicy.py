"""Shared off-policy pieces (algorithms/offpolicy.py): transitions from a hand-made rollout, the FIFO
replay buffer, Polyak updates, and the differentiable full-chain sampler."""

from __future__ import annotations

import copy

import pytest
import torch

from algorithms.base import Rollout
from algorithms.diffusion import DiffusionPolicy, sample_chain
from algorithms.networks import DenoisingMLP
from algorithms.offpolicy import (
    ReplayBuffer,
    TwinQ,
    soft_update,
    transitions_from_rollout,
)

torch.set_num_threads(1)


def _batch(values: list[float]) -> dict[str, torch.Tensor]:
    """Transitions whose every field encodes one number v (obs = [v, -v], action chunk filled with v)."""
    v = torch.tensor(values)
    return {"obs": torch.stack([v, -v], 1), "actions": v.view(-1, 1, 1).expand(-1, 2, 3).clone(),
            "rewards": v * 10, "next_obs": torch.stack([v + 1, -v - 1], 1), "terminated": (v > 4).float()}


def test_transitions_from_rollout_termination_and_truncation():
    # T = 3 steps, N = 2 envs, obs_dim 1; obs value = 10 * t + n (+100 marks a final observation)
    T, N = 3, 2
    obs = torch.tensor([[[0.0], [1.0]], [[10.0], [11.0]], [[20.0], [21.0]]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])  # env 0 dies after t = 1
    truncated = torch.tensor([[False, True], [False, False], [False, False]])  # env 1 times out after t = 0
    final_obs = torch.zeros(T, N, 1)
    final_obs[1, 0] = 111.0
    final_obs[0, 1] = 101.0
    ro = Rollout(obs=obs, extras={}, rewards=torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                 terminated=terminated, truncated=truncated, final_obs=final_obs,
                 next_obs=torch.tensor([[30.0], [31.0]]))
    actions = torch.arange(T * N * 2 * 1, dtype=torch.float32).view(T, N, 2, 1)
    tr = transitions_from_rollout(ro, actions)
    # rows in (t, n) order: (0,0) (0,1) (1,0) (1,1) (2,0) (2,1)
    assert tr["obs"].squeeze(-1).tolist() == [0, 1, 10, 11, 20, 21]
    assert tr["next_obs"].squeeze(-1).tolist() == [10, 101, 111, 21, 30, 31]
    assert tr["rewards"].tolist() == [1, 2, 3, 4, 5, 6]
    assert tr["terminated"].tolist() == [0, 0, 1, 0, 0, 0]  # the truncation is not a termination
    assert tr["actions"].shape == (6, 2, 1)
    assert torch.equal(tr["actions"][3], actions[1, 1])


def test_replay_buffer_fifo_wraparound_and_sample():
    buf = ReplayBuffer(capacity=5, obs_dim=2, action_shape=(2, 3), device="cpu")
    buf.add(_batch([1, 2, 3]))
    assert len(buf) == 3
    buf.add(_batch([4, 5, 6, 7]))  # overwrites the two oldest (1, 2)
    assert len(buf) == 5
    assert sorted(buf.data["obs"][:, 0].tolist()) == [3, 4, 5, 6, 7]
    assert buf.data["obs"][:, 0].tolist() == [6, 7, 3, 4, 5]  # ring order
    buf.add(_batch([11, 12, 13, 14, 15, 16, 17]))  # more than capacity at once: newest five stay
    assert sorted(buf.data["obs"][:, 0].tolist()) == [13, 14, 15, 16, 17]
    g = torch.Generator().manual_seed(0)
    s = buf.sample(64, generator=g)
    v = s["obs"][:, 0]
    # every field of a sampled row comes from the same transition, and "index" points at it
    assert torch.equal(s["obs"][:, 1], -v) and torch.equal(s["rewards"], v * 10)
    assert torch.equal(s["next_obs"][:, 0], v + 1) and torch.equal(s["actions"][:, 1, 2], v)
    assert torch.equal(s["terminated"], (v > 4).float())
    assert torch.equal(buf.data["obs"][s["index"], 0], v)
    assert set(v.tolist()) == {13, 14, 15, 16, 17}  # 64 uniform draws hit all five rows
    s2 = buf.sample(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s["index"], s2["index"])


def test_replay_buffer_set_actions_and_state_dict_round_trip():
    buf = ReplayBuffer(capacity=4, obs_dim=2, action_shape=(2, 3), device="cpu")
    buf.add(_batch([1, 2, 3, 4, 5, 6]))  # rows now hold 3, 4, 5, 6
    buf.set_actions(torch.tensor([0, 2]), torch.full((2, 2, 3), -7.0))
    assert buf.data["actions"][0].eq(-7).all() and buf.data["actions"][2].eq(-7).all()
    assert buf.data["actions"][1].eq(4).all() and buf.data["actions"][3].eq(6).all()
    state = copy.deepcopy(buf.state_dict())
    other = ReplayBuffer(capacity=4, obs_dim=2, action_shape=(2, 3), device="cpu")
    other.load_state_dict(state)
    assert (other.ptr, other.size) == (buf.ptr, buf.size)
    for k in buf.data:
        assert torch.equal(other.data[k], buf.data[k])
    buf.add(_batch([9]))
    other.add(_batch([9]))  # continues writing at the same ring position
    assert torch.equal(other.data["obs"], buf.data["obs"])
    # a partly filled buffer only stores its filled rows
    part = ReplayBuffer(capacity=10, obs_dim=2, action_shape=(2, 3), device="cpu")
    part.add(_batch([1, 2]))
    assert part.state_dict()["data"]["obs"].shape == (2, 2)
    with pytest.raises(ValueError):
        ReplayBuffer(capacity=3, obs_dim=2, action_shape=(2, 3), device="cpu").load_state_dict(state)


def test_soft_update_and_twin_q():
    torch.manual_seed(0)
    q = TwinQ(obs_dim=3, act_shape=(2, 2), hidden=(8, 8))
    target = copy.deepcopy(q)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target.parameters()]
    soft_update(target, q, 0.25)
    for t, b, s in zip(target.parameters(), before, q.parameters()):
        assert torch.allclose(t, 0.75 * b + 0.25 * s)
    q1, q2 = q(torch.randn(5, 3), torch.randn(5, 2, 2))
    assert q1.shape == q2.shape == (5,) and not torch.equal(q1, q2)


def test_sample_chain_matches_policy_sampler_and_keeps_grad():
    torch.manual_seed(0)
    net = DenoisingMLP(obs_dim=3, horizon_steps=2, act_dim=2, hidden=(16, 16), time_dim=8, act="ReLU",
                       residual=False)
    policy = DiffusionPolicy(net, n_steps=5)
    obs = torch.randn(4, 3)
    ref = policy.sample(obs, min_std=0.1, generator=torch.Generator().manual_seed(1))
    x = sample_chain(net, policy.ddpm, obs, min_std=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, ref) and not x.requires_grad
    x = sample_chain(net, policy.ddpm, obs, min_std=0.1, generator=torch.Generator().manual_seed(1),
                     keep_grad=True)
    assert torch.allclose(x, ref)
    x.sum().backward()
    # the gradient reaches the network through the first (noisiest) step as well as the last
    assert net.net[0].weight.grad is not None and net.net[0].weight.grad.abs().sum() > 0
