"""DIPO (algorithms/dipo.py): the action-gradient step against a hand-written numpy Adam on a quadratic
twin Q, its write-back into the replay buffer, resume equality, a CLI smoke run on hopper and learning
on point_reach."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from algorithms.base import AlgoContext, Rollout
from algorithms.dipo import DIPO, DIPOConfig, improve_actions
from bench.config import PretrainConfig, build_run_config
from bench.pretrain import build_diffusion_policy

T, N, OBS, ACT, TP = 6, 4, 3, 2, 2


class QuadraticTwinQ(torch.nn.Module):
    """Q_i(s, a) = -sum (a - c_i)^2 + b_i, with a constant per critic; the observation is ignored."""

    def __init__(self, c1, c2, b1=0.0, b2=0.0):
        super().__init__()
        self.c1, self.c2 = torch.as_tensor(c1, dtype=torch.float32), torch.as_tensor(c2, dtype=torch.float32)
        self.b1, self.b2 = b1, b2

    def forward(self, obs, a):
        return (-((a - self.c1) ** 2).sum((1, 2)) + self.b1, -((a - self.c2) ** 2).sum((1, 2)) + self.b2)


def numpy_reference(a0, c1, c2, b1, b2, steps, lr, max_norm, eps=1e-5, beta1=0.9, beta2=0.999):
    """Adam on the loss -sum_b min(Q1, Q2), written out by hand: grad, batch-norm clip, Adam step, clip."""
    a = a0.astype(np.float64).copy()
    m, v = np.zeros_like(a), np.zeros_like(a)
    for k in range(1, steps + 1):
        q1 = -((a - c1) ** 2).sum((1, 2)) + b1
        q2 = -((a - c2) ** 2).sum((1, 2)) + b2
        c = np.where((q1 <= q2)[:, None, None], c1, c2)  # the critic that is the min gets the gradient
        g = 2 * (a - c)  # d(-Q)/da
        norm = np.sqrt((g**2).sum())
        g = g * min(1.0, max_norm / (norm + 1e-6))
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        a = a - lr * (m / (1 - beta1**k)) / (np.sqrt(v / (1 - beta2**k)) + eps)
        a = np.clip(a, -1.0, 1.0)
    return a


def test_first_action_step_moves_each_entry_by_lr_towards_the_min_critic():
    # Adam's first step is lr * g / (|g| + eps) per entry: lr towards the maximiser of the smaller Q.
    a0 = torch.tensor([[[0.5, -0.2]], [[0.0, 0.9]]])
    c1, c2 = torch.tensor([[1.0, -1.0]]), torch.tensor([[-1.0, 1.0]])
    q = QuadraticTwinQ(c1, c2, b1=0.0, b2=100.0)  # Q2 is always larger: min = Q1, target c1
    a1 = improve_actions(q, torch.zeros(2, OBS), a0, steps=1, lr=0.01, max_grad_norm=1e9)
    assert torch.allclose(a1, torch.tensor([[[0.51, -0.21]], [[0.01, 0.89]]]), atol=1e-6)
    q = QuadraticTwinQ(c1, c2, b1=100.0, b2=0.0)  # now min = Q2, target c2
    a1 = improve_actions(q, torch.zeros(2, OBS), a0, steps=1, lr=0.01, max_grad_norm=1e9)
    assert torch.allclose(a1, torch.tensor([[[0.49, -0.19]], [[-0.01, 0.91]]]), atol=1e-6)


@pytest.mark.parametrize("lr,max_norm", [(0.05, 1e9), (0.05, 0.3), (0.4, 1e9)])
def test_ten_action_gradient_steps_match_a_hand_written_adam(lr, max_norm):
    # (0.05, 1e9): plain Adam; (0.05, 0.3): the whole batch's gradient norm is clipped every step;
    # (0.4, 1e9): the targets lie outside [-1, 1], so actions end clipped exactly at the bound.
    rng = np.random.default_rng(0)
    a0 = rng.uniform(-1, 1, (5, TP, ACT)).astype(np.float32)
    c1 = np.array([[0.3, 1.8], [-0.4, 0.2]])
    c2 = np.array([[-1.5, 0.5], [0.6, -0.1]])
    b1, b2 = 0.0, 0.4  # min(Q1, Q2) switches between the critics across samples and steps
    ref = numpy_reference(a0, c1, c2, b1, b2, 10, lr, max_norm)
    out = improve_actions(QuadraticTwinQ(c1, c2, b1, b2), torch.zeros(5, OBS), torch.from_numpy(a0), steps=10,
                          lr=lr, max_grad_norm=max_norm)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
    assert out.abs().max() <= 1.0
    if lr == 0.4:
        assert (out[:, 0, 1] == 1.0).all()  # pulled towards c1 = 1.8, stopped exactly at the bound
    # the input is not modified in place
    assert np.array_equal(torch.from_numpy(a0).numpy(), a0)


# ---------------------------------------------------------------------------------------------------
# The algorithm on a small synthetic rollout


def make(act_steps: int = TP, **overrides) -> DIPO:
    torch.manual_seed(0)
    pre = build_diffusion_policy(OBS, ACT, TP, PretrainConfig(hidden_dims=(16, 16, 16), denoising_steps=5))
    ctx = AlgoContext(OBS, ACT, TP, act_steps, N, T, 10, "gym", torch.device("cpu"))
    cfg = DIPOConfig(**{"batch_size": T * N, "replay_ratio": 1, "critic_hidden": (16, 16), "lr_warmup_itr": 0,
                        "n_critic_warmup_itr": 0, "buffer_size": 100, **overrides})
    return DIPO(cfg, ctx, pre)


def rollout(algo: DIPO, seed: int = 1) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand((T, N, OBS), generator=g) * 2 - 1
    outs = [algo.act(obs[t]) for t in range(T)]
    term, trunc = torch.zeros(T, N, dtype=torch.bool), torch.zeros(T, N, dtype=torch.bool)
    term[2, 0], trunc[4, 1] = True, True
    return Rollout(obs, {"actions": torch.stack([o.extras["actions"] for o in outs])},
                   torch.rand((T, N), generator=g), term, trunc, torch.rand((T, N, OBS), generator=g),
                   torch.rand((N, OBS), generator=g))


@pytest.mark.parametrize("act_steps", [TP, 1])
def test_improved_actions_are_written_back_into_the_buffer(act_steps):
    # one gradient step (batch = T*N new transitions, replay ratio 1); critic lr 0 keeps Q fixed, and no
    # gradient-norm clipping makes each row's improvement independent of the rest of the batch. Q sees
    # the executed actions only (act_steps of the TP in a chunk); the others stay as sampled.
    algo = make(act_steps, critic_lr=0.0, critic_lr_min=0.0, action_grad_norm_coef=1e9, action_lr=0.05)
    critic = copy.deepcopy(algo.critic)
    ro = rollout(algo)
    stored = ro.extras["actions"].reshape(T * N, TP, ACT)
    m = algo.update(ro, iteration=0)
    assert m["gradient_steps"] == 1 and m["actor_updated"] == 1.0
    data = algo.buffer.data
    changed = (data["actions"][: T * N] != stored).flatten(1).any(1)
    assert 0 < changed.sum() < T * N  # a with-replacement batch of T*N rows misses some rows
    expected = improve_actions(critic, data["obs"][:T * N][changed], stored[changed][:, :act_steps], steps=10,
                               lr=0.05, max_grad_norm=1e9)
    assert torch.allclose(data["actions"][: T * N][changed][:, :act_steps], expected, atol=1e-6)
    assert torch.equal(data["actions"][: T * N][:, act_steps:], stored[:, act_steps:])
    assert expected.abs().max() <= 1.0
    assert torch.equal(data["obs"][: T * N], ro.obs.reshape(T * N, OBS))  # only actions are rewritten


def test_separate_write_back_keeps_executed_actions_and_compounds_improvements():
    # write_back="separate": the executed actions stay for the critic; the improved ones go to their own
    # column, and the next update improves them again from where they were left (not from the executed)
    algo = make(critic_lr=0.0, critic_lr_min=0.0, action_grad_norm_coef=1e9, action_lr=0.05,
                write_back="separate")
    critic = copy.deepcopy(algo.critic)
    ro = rollout(algo)
    stored = ro.extras["actions"].reshape(T * N, TP, ACT)
    algo.update(ro, iteration=0)
    data = algo.buffer.data
    assert torch.equal(data["actions"][: T * N], stored)
    changed = (data["improved_actions"][: T * N] != stored).flatten(1).any(1)
    assert 0 < changed.sum() < T * N
    once = data["improved_actions"][: T * N].clone()
    expected = improve_actions(critic, data["obs"][:T * N][changed], stored[changed], steps=10, lr=0.05,
                               max_grad_norm=1e9)
    assert torch.allclose(once[changed], expected, atol=1e-6)
    # a second update (no new rows: the same rollout would add them, so call the pieces directly)
    algo.buffer.add = lambda batch: None
    algo.update(ro, iteration=1)
    again = (data["improved_actions"][: T * N] != once).flatten(1).any(1) & changed
    assert again.any()
    twice = improve_actions(critic, data["obs"][:T * N][again], once[again], steps=10, lr=0.05, max_grad_norm=1e9)
    assert torch.allclose(data["improved_actions"][: T * N][again], twice, atol=1e-6)


def test_no_write_back_leaves_the_buffer_unchanged():
    algo = make(write_back="none")
    ro = rollout(algo)
    algo.update(ro, iteration=0)
    assert torch.equal(algo.buffer.data["actions"][: T * N], ro.extras["actions"].reshape(T * N, TP, ACT))
    assert "improved_actions" not in algo.buffer.data


def test_critic_warmup_neither_improves_actions_nor_steps_the_actor():
    algo = make(n_critic_warmup_itr=1)
    actor = [p.clone() for p in algo.actor.parameters()]
    critic = [p.clone() for p in algo.critic.parameters()]
    ro = rollout(algo)
    m = algo.update(ro, iteration=0)
    assert m["actor_updated"] == 0.0 and "actor_loss" not in m
    assert torch.equal(algo.buffer.data["actions"][: T * N], ro.extras["actions"].reshape(T * N, TP, ACT))
    assert all(torch.equal(a, b) for a, b in zip(actor, algo.actor.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic, algo.critic.parameters()))


def test_acts_with_the_target_actor_and_resumes_exactly():
    algo = make(actor_lr=1e-2, actor_lr_min=1e-2)
    algo.update(rollout(algo), iteration=0)
    obs = torch.rand(5, OBS)
    act = algo.act(obs, deterministic=True, generator=torch.Generator().manual_seed(3)).actions
    target = algo.actor_target.sample(obs, deterministic=True, generator=torch.Generator().manual_seed(3))
    trained = algo.actor.sample(obs, deterministic=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(act, target) and not torch.equal(act, trained)
    # a fresh instance loaded from the state dict continues identically
    other = make(actor_lr=1e-2, actor_lr_min=1e-2)
    other.load_state_dict(copy.deepcopy(algo.state_dict()))
    ro = rollout(algo, seed=2)
    torch.manual_seed(7)
    algo.update(ro, iteration=1)
    torch.manual_seed(7)
    other.update(ro, iteration=1)
    for a, b in zip(algo.state_dict()["actor"].values(), other.state_dict()["actor"].values()):
        assert torch.equal(a, b)
    assert torch.equal(algo.buffer.data["actions"], other.buffer.data["actions"])


def test_paper_presets_are_the_original_configs():
    # cfg/gym/finetune/hopper-v2/ft_dipo_diffusion_mlp.yaml and cfg/robomimic/finetune/*/ft_dipo_diffusion_mlp.yaml
    c = build_run_config("hopper", "dipo", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (40, 500, 1000)
    assert (a.gamma, a.reward_scale, a.buffer_size, a.batch_size, a.replay_ratio, a.target_tau) == (
        0.99, 0.01, 1_000_000, 1000, 64, 0.005)
    assert (a.action_lr, a.action_gradient_steps, a.action_grad_norm_coef, a.action_adam_eps) == (1e-4, 10, 0.1, 1e-5)
    assert (a.n_critic_warmup_itr, a.actor_lr, a.actor_lr_min, a.critic_lr, a.critic_lr_min, a.lr_warmup_itr) == (
        5, 1e-4, 1e-4, 1e-3, 1e-3, 10)
    assert (a.min_sampling_std, a.randn_clip, a.critic_hidden, a.critic_activation, a.critic_residual) == (
        0.1, 3.0, (256, 256, 256), "Mish", False)
    assert a.act_with_target_actor and a.max_grad_norm is None
    c = build_run_config("can", "dipo", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (50, 300, 300)
    assert (a.gamma, a.reward_scale, a.replay_ratio, a.actor_lr, a.actor_lr_min, a.n_critic_warmup_itr) == (
        0.999, 1.0, 16, 1e-5, 1e-5, 2)
    assert build_run_config("lift", "dipo", 0, "paper").algo.n_critic_warmup_itr == 5
    c = build_run_config("transport", "dipo", 0, "paper")
    a = c.algo
    assert (c.train.n_steps, c.train.n_iterations, a.min_sampling_std, a.actor_lr_min) == (400, 1000, 0.08, 1e-6)


# ---------------------------------------------------------------------------------------------------
# Through the CLI


def test_smoke_run_on_hopper(cli, tmp_path):
    code, _, err = cli("run", "--algo", "dipo", "--task", "hopper", "--preset", "smoke", "--seed", "0",
                       "--set", "torch_threads=1", "--out", tmp_path, "--quiet")
    assert code == 0, err
    d = tmp_path / "runs" / "hopper" / "dipo" / "seed0"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["complete"] and summary["iterations"] == 2
    header = (d / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"critic_loss", "actor_loss", "action_shift"} <= set(header)
    assert "buffer" in torch.load(d / "checkpoints" / "last.pt", weights_only=False)["algo"]


@pytest.mark.slow
def test_improves_on_point_reach(cli, tmp_path):
    code, _, err = cli("run", "--algo", "dipo", "--task", "point_reach", "--preset", "small", "--seed", "0",
                       "--set", "torch_threads=1", "--out", tmp_path, "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "runs" / "point_reach" / "dipo" / "seed0" / "summary.json").read_text())
    assert s["final_score"] > s["pretrained_score"] + 10, (s["pretrained_score"], s["final_score"])
