"""GMM PPO (algorithms/gmm_ppo.py) and the mixture policy (algorithms/gaussian.py): the joint mixture
log-likelihood against torch.distributions (whole chunk and executed part), the clamp, the std bounds,
evaluation modes, the original's saturating clamp, a CLI smoke run on hopper, and learning on point_reach."""

import json
import math

import pytest
import torch
import torch.distributions as D

from algorithms.base import AlgoContext, Rollout
from algorithms.gaussian import GMMPolicy
from algorithms.gmm_ppo import GMMPPO, GMMPPOConfig

torch.set_num_threads(1)

OBS, TP, TA, DA, M, N, T = 5, 4, 2, 3, 5, 6, 5


def policy(**kw):
    torch.manual_seed(0)
    return GMMPolicy(OBS, TP, DA, (32, 32, 32), "Mish", True, M, **kw)


def make_algo(pre=None, **overrides):
    ctx = AlgoContext(OBS, DA, TP, TA, N, T, 10, "gym", torch.device("cpu"))
    cfg = GMMPPOConfig(**{"batch_size": 10, "update_epochs": 2, "lr_warmup_itr": 0, "n_critic_warmup_itr": 0,
                          "actor_lr": 1e-3, "actor_lr_min": 1e-3, **overrides})
    return GMMPPO(cfg, ctx, pre or policy())


def reference_mixture(p: GMMPolicy, obs, stds: torch.Tensor, n: int) -> D.MixtureSameFamily:
    """The mixture over the first n actions, from the raw network outputs and per-(mode, dim) stds (M, Da)."""
    b = obs.shape[0]
    means = torch.tanh(p.mean_net(obs)).view(b, M, TP, DA)[:, :, :n].reshape(b, M, n * DA)
    scales = stds[None, :, None, :].expand(b, M, n, DA).reshape(b, M, n * DA)
    return D.MixtureSameFamily(D.Categorical(logits=p.logits_net(obs)), D.Independent(D.Normal(means, scales), 1))


def test_mixture_log_prob_matches_torch_distributions():
    p = policy(fixed_std=0.3)
    p.set_std(None, 0.01, 1.0, learnable=True)
    with torch.no_grad():  # a different std per mode and action dimension
        p.log_var.copy_(2 * torch.log(torch.linspace(0.2, 0.4, M * DA).view(M, DA)))
    stds = torch.linspace(0.2, 0.4, M * DA).view(M, DA)
    obs, actions = torch.rand(7, OBS) * 2 - 1, torch.rand(7, TP, DA) * 2 - 1
    for n in (TP, TA):
        expected = reference_mixture(p, obs, stds, n).log_prob(actions[:, :n].reshape(7, -1))
        torch.testing.assert_close(p.log_prob(obs, actions, n), expected, rtol=1e-5, atol=1e-4)
    nll = -reference_mixture(p, obs, stds, TP).log_prob(actions.reshape(7, -1)).mean()
    torch.testing.assert_close(p.loss(actions, obs), nll, rtol=1e-5, atol=1e-4)


def test_ppo_logprob_is_the_clamped_joint_log_density():
    algo = make_algo(std_init=0.1)
    obs = torch.rand(4, OBS) * 2 - 1
    mix = reference_mixture(algo.actor_ft, obs, torch.full((M, DA), 0.1), TA)
    actions = torch.rand(4, TP, DA) * 2 - 1
    actions[0] = torch.tanh(algo.actor_ft.mean_net(obs[:1])).view(M, TP, DA)[0]  # on a mode's mean: high density
    joint = mix.log_prob(actions[:, :TA].reshape(4, -1))
    assert joint.max() > 2 and joint.min() < 2
    torch.testing.assert_close(algo._logprob(obs, actions), joint.clamp(-5, 2), rtol=1e-5, atol=1e-4)
    mean_algo = make_algo(std_init=0.1, logprob_reduction="mean", logprob_max=None, logprob_min=None)
    torch.testing.assert_close(mean_algo._logprob(obs, actions), joint / (TA * DA), rtol=1e-5, atol=1e-4)


def test_std_per_mode_is_learnable_and_bounded():
    pre = policy()
    assert pre.log_var.shape == (M, DA) and not pre.log_var.requires_grad
    algo = make_algo(pre, std_init=0.5, std_max=0.2)
    assert algo.actor_ft.log_var.requires_grad
    assert torch.allclose(algo.actor_ft(torch.zeros(1, OBS))[1].mul(0.5).exp(), torch.tensor(0.2))
    assert algo.actor_ft.mean_std(torch.zeros(1, OBS)) == pytest.approx(0.2, rel=1e-6)


def test_evaluation_modes():
    algo = make_algo(eval_mode="argmax")
    obs = torch.rand(50, OBS) * 2 - 1
    means = torch.tanh(algo.actor_ft.mean_net(obs)).view(50, M, TP, DA)
    best = algo.actor_ft.logits_net(obs).argmax(-1)
    torch.testing.assert_close(algo.act(obs, deterministic=True).actions, means[torch.arange(50), best])
    sampled = make_algo(eval_mode="sample")
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    a = sampled.act(obs, deterministic=True, generator=g()).actions
    assert torch.equal(a, sampled.act(obs, deterministic=True, generator=g()).actions)  # reproducible
    # each evaluated chunk is exactly one mode's mean, and not always the most likely one
    dist = (a[:, None] - means).abs().amax(dim=(2, 3))
    assert (dist.min(1).values == 0).all() and (dist.argmin(1) != best).any()


def rollout(algo, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand((T, N, OBS), generator=g) * 2 - 1
    outs = [algo.act(obs[t]) for t in range(T)]
    return Rollout(obs, {k: torch.stack([o.extras[k] for o in outs]) for k in outs[0].extras},
                   torch.rand((T, N), generator=g), torch.zeros(T, N, dtype=torch.bool),
                   torch.zeros(T, N, dtype=torch.bool), torch.zeros((T, N, OBS)), torch.rand((N, OBS), generator=g))


def test_the_original_clamp_saturates_for_likely_chunks():
    """std 0.05 over Ta * Da = 6 entries: sampled chunks have joint log-density ~ 6 * 2.07 - 3 >> 2, so every
    clamped log-prob is 2, the ratio 1 and the policy gradient 0 (the original's behaviour, documented);
    without the clamp the same update moves the actor."""
    params = lambda a: [p.detach().clone() for p in a.actor_ft.parameters()]  # noqa: E731
    clamped = make_algo(std_init=0.05, std_min=0.01)
    before = params(clamped)
    ro = rollout(clamped)
    assert (ro.extras["logprobs"] == 2.0).all()
    m = clamped.update(ro, 0)
    assert m["ratio"] == 1.0 and m["approx_kl"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, params(clamped)))
    free = make_algo(std_init=0.05, std_min=0.01, logprob_max=None)
    free.update(rollout(free), 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, params(free)))


def test_smoke_run_on_hopper(cli, tmp_path):
    code, _, err = cli("run", "--algo", "gmm_ppo", "--task", "hopper", "--preset", "smoke", "--out", tmp_path,
                       "--quiet", "--set", "torch_threads=1")
    assert code == 0, err
    d = tmp_path / "runs" / "hopper" / "gmm_ppo" / "seed0"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["complete"] and summary["iterations"] == 2 and math.isfinite(summary["final_return"])
    assert json.loads((d / "versions.json").read_text())["pretrained"]["policy_kind"] == "gmm"
    code, out, err = cli("eval", d, "--episodes", "2")
    assert code == 0, err and json.loads(out)["n_episodes"] == 2


@pytest.mark.slow
def test_gmm_ppo_learns_point_reach(cli, tmp_path):
    # over 3 seeds: one seed's gain is noisy (measured +11, +21, +25 at seeds 0-2 with the original's
    # count - 1 reward variance; +36, +22, +19 with count)
    gains = []
    for seed in (0, 1, 2):
        code, _, err = cli("run", "--algo", "gmm_ppo", "--task", "point_reach", "--out", tmp_path, "--quiet",
                           "--seed", seed, "--set", "torch_threads=1")
        assert code == 0, err
        summary = json.loads((tmp_path / "runs" / "point_reach" / "gmm_ppo" / f"seed{seed}" / "summary.json").read_text())
        gains.append(summary["final_score"] - summary["pretrained_score"])
    assert min(gains) > 0 and sum(gains) / 3 > 15, gains
