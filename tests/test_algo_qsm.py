"""QSM (algorithms/qsm.py): the Q-score target and the score-matching loss on hand-computed numbers, the
sign (training on a fixed Q moves the policy's actions uphill), the update schedule, resume equality, a
CLI smoke run on hopper and learning on point_reach."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from algorithms.base import AlgoContext, Rollout
from algorithms.qsm import QSM, QSMConfig, denoised_estimate, q_score_matching_loss, q_score_target
from bench.config import PretrainConfig, build_run_config
from bench.pretrain import build_diffusion_policy

T, N, OBS, ACT, TP = 6, 4, 3, 2, 2


class QuadraticTwinQ(torch.nn.Module):
    """Q_i(s, a) = -sum (a - c_i)^2 with learnable centres (so we can check they get no gradient)."""

    def __init__(self, c1, c2):
        super().__init__()
        self.c1 = torch.nn.Parameter(torch.as_tensor(c1, dtype=torch.float32))
        self.c2 = torch.nn.Parameter(torch.as_tensor(c2, dtype=torch.float32))

    def forward(self, obs, a):
        return -((a - self.c1) ** 2).sum((1, 2)), -((a - self.c2) ** 2).sum((1, 2))


class ScaledIdentityEps(torch.nn.Module):
    """eps_theta(x, t, s) = w * x + 0.1 * t (one learnable weight)."""

    def __init__(self, w=1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, x, t, obs):
        return self.w * x + 0.1 * t.view(-1, 1, 1).float()


def test_q_score_target_is_alpha_times_the_mean_critic_gradient():
    # x = (0.5, -0.5); grad Q1 = -2 (x - (1, 0)) = (1, 1); grad Q2 = -2 (x - (0, 1)) = (-1, 3)
    # mean = (0, 2); alpha = 10 -> (0, 20)
    q = QuadraticTwinQ([[1.0, 0.0]], [[0.0, 1.0]])
    x = torch.tensor([[[0.5, -0.5]]])
    target = q_score_target(q, torch.zeros(1, OBS), x, alpha=10.0)
    assert torch.allclose(target, torch.tensor([[[0.0, 20.0]]]))
    assert not target.requires_grad and q.c1.grad is None and q.c2.grad is None


def test_q_score_matching_loss_by_hand():
    # two samples (Tp = 1, Da = 2), t = (0, 2); eps = w x + 0.1 t with w = 1
    # sample 1: x = (0.5, -0.5), target (0, 20) as above, -eps = (-0.5, 0.5)   -> sq. errors 0.25, 380.25
    # sample 2: x = (0, 0), grad Q1 = (2, 0), grad Q2 = (0, 2), target 10 * (1, 1) = (10, 10);
    #           -eps = (-0.2, -0.2)                                             -> sq. errors 104.04, 104.04
    # mean over the 4 entries = (0.25 + 380.25 + 104.04 + 104.04) / 4 = 147.145
    q = QuadraticTwinQ([[1.0, 0.0]], [[0.0, 1.0]])
    net = ScaledIdentityEps()
    x = torch.tensor([[[0.5, -0.5]], [[0.0, 0.0]]])
    t, obs = torch.tensor([0, 2]), torch.zeros(2, OBS)
    loss = q_score_matching_loss(net(x, t, obs), q, x, obs, alpha=10.0)
    assert loss.item() == pytest.approx(147.145, rel=1e-6)
    loss.backward()
    # d loss / d w = mean 2 r (-x), r = -w x - 0.1 t - target: entries (2 * -0.5 * -0.5) + (2 * -19.5 * 0.5)
    # + 0 + 0, over 4 -> (0.5 - 19.5) / 4 = -4.75
    assert net.w.grad.item() == pytest.approx(-4.75, rel=1e-6)
    assert q.c1.grad is None and q.c2.grad is None  # the critic is not trained by the actor loss
    # with Ta = 1 of Tp = 2 executed, only the first action of a chunk is scored: sample 1's first action
    # followed by an arbitrary unexecuted one gives sample 1's loss, (0.25 + 380.25) / 2 = 190.25
    x = torch.tensor([[[0.5, -0.5], [7.0, -3.0]]])
    t, obs = torch.tensor([0]), torch.zeros(1, OBS)
    loss = q_score_matching_loss(net(x, t, obs), q, x, obs, alpha=10.0, act_steps=1)
    assert loss.item() == pytest.approx(190.25, rel=1e-6)


def test_denoised_estimate_by_hand():
    # x0_hat = (x_t - sqrt(1 - a) eps) / sqrt(a), clipped: sample 1 with sqrt(a) = 0.8, sqrt(1 - a) = 0.6,
    # x_t = (0.5, -0.5), eps = (0.5, -0.5): ((0.5 - 0.3) / 0.8, (-0.5 + 0.3) / 0.8) = (0.25, -0.25);
    # sample 2 with 0.5 and 0.5, x_t = (0.9, -0.2), eps = (-1, 0.2): (1.4 / 0.5, -0.3 / 0.5) = (2.8, -0.6),
    # clipped to (1, -0.6) (unclipped with clip None)
    x = torch.tensor([[[0.5, -0.5]], [[0.9, -0.2]]])
    eps = torch.tensor([[[0.5, -0.5]], [[-1.0, 0.2]]])
    sa, s1a = torch.tensor([0.8, 0.5]).view(2, 1, 1), torch.tensor([0.6, 0.5]).view(2, 1, 1)
    assert torch.allclose(denoised_estimate(x, eps, sa, s1a, 1.0), torch.tensor([[[0.25, -0.25]], [[1.0, -0.6]]]))
    assert torch.allclose(denoised_estimate(x, eps, sa, s1a, None), torch.tensor([[[0.25, -0.25]], [[2.8, -0.6]]]))


def test_q_score_matching_loss_at_the_denoised_action_by_hand():
    # q_grad_at="denoised": the target is alpha * grad Q at x0_hat, not at x_t. eps = w x + 0.1 t with w = 1,
    # t = 0, x_t = (0.5, -0.5): eps = (0.5, -0.5); with sqrt(a) = 0.8, sqrt(1 - a) = 0.6 x0_hat = (0.25, -0.25)
    # grad Q1 = -2 (x0_hat - (1, 0)) = (1.5, 0.5), grad Q2 = -2 (x0_hat - (0, 1)) = (-0.5, 2.5), mean (0.5, 1.5),
    # target (5, 15); -eps = (-0.5, 0.5): residuals (-5.5, -14.5), loss (30.25 + 210.25) / 2 = 120.25
    q = QuadraticTwinQ([[1.0, 0.0]], [[0.0, 1.0]])
    net = ScaledIdentityEps()
    x, t, obs = torch.tensor([[[0.5, -0.5]]]), torch.tensor([0]), torch.zeros(1, OBS)
    eps = net(x, t, obs)
    x0_hat = denoised_estimate(x, eps.detach(), torch.tensor(0.8), torch.tensor(0.6), 1.0)
    loss = q_score_matching_loss(eps, q, x0_hat, obs, alpha=10.0)
    assert loss.item() == pytest.approx(120.25, rel=1e-6)
    loss.backward()
    # x0_hat is detached, so only -eps carries gradient: d loss / d w = mean 2 r (-x) over the 2 entries
    # = (2 * -5.5 * -0.5 + 2 * -14.5 * 0.5) / 2 = (5.5 - 14.5) / 2 = -4.5
    assert net.w.grad.item() == pytest.approx(-4.5, rel=1e-6)
    assert q.c1.grad is None and q.c2.grad is None


def test_score_matching_on_a_fixed_q_moves_sampled_actions_uphill():
    # The sign check: fitting -eps to +alpha * grad Q must move the policy's samples towards argmax Q, here
    # the corner (1, -1) of the action box (the opposite sign sends them to the opposite corner).
    torch.manual_seed(0)
    pre = build_diffusion_policy(OBS, ACT, TP, PretrainConfig(hidden_dims=(32, 32, 32), denoising_steps=5))
    centre = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    q = QuadraticTwinQ(centre, centre)
    obs = torch.zeros(128, OBS)
    opt = torch.optim.Adam(pre.network.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    before = pre.sample(obs[:64], deterministic=True, generator=torch.Generator().manual_seed(1))
    for _ in range(60):
        x0 = torch.rand((128, TP, ACT), generator=g) * 2 - 1
        t = torch.randint(0, pre.n_steps, (128,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = pre.sqrt_ac[t].view(-1, 1, 1) * x0 + pre.sqrt_one_minus_ac[t].view(-1, 1, 1) * noise
        loss = q_score_matching_loss(pre.network(x_t, t, obs), q, x_t, obs, alpha=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = pre.sample(obs[:64], deterministic=True, generator=torch.Generator().manual_seed(1))
    dist_before, dist_after = ((a - centre).norm(dim=-1).mean().item() for a in (before, after))
    assert dist_after < 0.2 * dist_before, (dist_before, dist_after)


# ---------------------------------------------------------------------------------------------------
# The algorithm on a small synthetic rollout


def make(**overrides) -> QSM:
    torch.manual_seed(0)
    pre = build_diffusion_policy(OBS, ACT, TP, PretrainConfig(hidden_dims=(16, 16, 16), denoising_steps=5))
    ctx = AlgoContext(OBS, ACT, TP, TP, N, T, 10, "gym", torch.device("cpu"))
    cfg = QSMConfig(**{"batch_size": 8, "replay_ratio": 1, "critic_hidden": (16, 16), "lr_warmup_itr": 0,
                       "n_critic_warmup_itr": 0, "buffer_size": 10, **overrides})
    return QSM(cfg, ctx, pre)


def rollout(algo: QSM, seed: int = 1) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand((T, N, OBS), generator=g) * 2 - 1
    outs = [algo.act(obs[t]) for t in range(T)]
    term, trunc = torch.zeros(T, N, dtype=torch.bool), torch.zeros(T, N, dtype=torch.bool)
    term[2, 0], trunc[4, 1] = True, True
    return Rollout(obs, {"actions": torch.stack([o.extras["actions"] for o in outs])},
                   torch.rand((T, N), generator=g), term, trunc, torch.rand((T, N, OBS), generator=g),
                   torch.rand((N, OBS), generator=g))


def test_update_schedule_buffer_and_targets():
    algo = make(n_critic_warmup_itr=1, buffer_size=5)
    assert algo.buffer.capacity == 5 * N  # buffer_size counts vector-env steps, as the original
    actor = [p.clone() for p in algo.actor.parameters()]
    target = [p.clone() for p in algo.critic_target.parameters()]
    m = algo.update(rollout(algo), iteration=0)
    assert m["gradient_steps"] == T * N // 8 and len(algo.buffer) == 5 * N and "actor_loss" not in m
    assert all(torch.equal(a, b) for a, b in zip(actor, algo.actor.parameters()))  # critic warm-up
    assert any(not torch.equal(a, b) for a, b in zip(target, algo.critic_target.parameters()))
    m = algo.update(rollout(algo, seed=2), iteration=1)
    assert m["actor_updated"] == 1.0 and m["actor_loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(actor, algo.actor.parameters()))


def test_denoised_target_option_updates_the_actor():
    assert QSMConfig().q_grad_at == "noisy"  # the original is the default
    algo = make(q_grad_at="denoised")
    actor = [p.clone() for p in algo.actor.parameters()]
    m = algo.update(rollout(algo), iteration=0)
    assert m["actor_loss"] > 0 and torch.isfinite(torch.tensor(m["actor_loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(actor, algo.actor.parameters()))


def test_resumes_exactly():
    algo = make()
    algo.update(rollout(algo), iteration=0)
    other = make()
    other.load_state_dict(copy.deepcopy(algo.state_dict()))
    ro = rollout(algo, seed=2)
    for a in (algo, other):
        torch.manual_seed(7)
        a.update(ro, iteration=1)
    for k in ("actor", "critic", "critic_target"):
        for a, b in zip(algo.state_dict()[k].values(), other.state_dict()[k].values()):
            assert torch.equal(a, b)


def test_paper_presets_are_the_original_configs():
    # cfg/gym/finetune/hopper-v2/ft_qsm_diffusion_mlp.yaml and cfg/robomimic/finetune/*/ft_qsm_diffusion_mlp.yaml
    c = build_run_config("hopper", "qsm", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (40, 500, 1000)
    assert (a.gamma, a.reward_scale, a.buffer_size, a.batch_size, a.replay_ratio, a.target_tau) == (
        0.99, 0.01, 25_000, 1000, 16, 0.005)
    assert (a.q_grad_coeff, a.n_critic_warmup_itr, a.actor_lr, a.actor_lr_min, a.critic_lr, a.critic_lr_min) == (
        10.0, 5, 1e-4, 1e-4, 1e-3, 1e-3)
    assert (a.lr_warmup_itr, a.min_sampling_std, a.randn_clip, a.critic_hidden, a.critic_activation) == (
        10, 0.1, 3.0, (256, 256, 256), "Mish")
    assert not a.critic_residual and a.max_grad_norm is None
    c = build_run_config("can", "qsm", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (50, 300, 300)
    assert (a.gamma, a.reward_scale, a.buffer_size, a.replay_ratio, a.actor_lr, a.n_critic_warmup_itr) == (
        0.999, 1.0, 5000, 16, 1e-5, 5)
    c = build_run_config("transport", "qsm", 0, "paper")
    a = c.algo
    assert (c.train.n_steps, c.train.n_iterations, a.min_sampling_std, a.actor_lr_min) == (400, 1000, 0.08, 1e-6)


# ---------------------------------------------------------------------------------------------------
# Through the CLI


def test_smoke_run_on_hopper(cli, tmp_path):
    code, _, err = cli("run", "--algo", "qsm", "--task", "hopper", "--preset", "smoke", "--seed", "0",
                       "--set", "torch_threads=1", "--out", tmp_path, "--quiet")
    assert code == 0, err
    d = tmp_path / "runs" / "hopper" / "qsm" / "seed0"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["complete"] and summary["iterations"] == 2
    header = (d / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"critic_loss", "actor_loss"} <= set(header)
    assert "buffer" in torch.load(d / "checkpoints" / "last.pt", weights_only=False)["algo"]


@pytest.mark.slow
def test_improves_on_point_reach(cli, tmp_path):
    code, _, err = cli("run", "--algo", "qsm", "--task", "point_reach", "--preset", "small", "--seed", "0",
                       "--set", "torch_threads=1", "--out", tmp_path, "--quiet")
    assert code == 0, err
    s = json.loads((tmp_path / "runs" / "point_reach" / "qsm" / "seed0" / "summary.json").read_text())
    assert s["final_score"] > s["pretrained_score"] + 10, (s["pretrained_score"], s["final_score"])
