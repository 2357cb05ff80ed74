"""Gaussian PPO (algorithms/gaussian_ppo.py) and its policy (algorithms/gaussian.py): log-likelihoods
against torch.distributions, the clamp and averaging of the PPO log-probability, std bounds, evaluation
with the mean, a state_dict round trip, a CLI smoke run on hopper whose `bench eval` uses the fine-tuned
weights, and learning on point_reach."""

import copy
import json
import math

import pytest
import torch
import torch.distributions as D

from algorithms.base import AlgoContext, Rollout
from algorithms.gaussian import GaussianPolicy
from algorithms.gaussian_ppo import GaussianPPO, GaussianPPOConfig

torch.set_num_threads(1)

OBS, TP, TA, DA, N, T = 5, 4, 3, 2, 6, 5


def policy(std="fixed", **kw):
    torch.manual_seed(0)
    return GaussianPolicy(OBS, TP, DA, (32, 32, 32), "Mish", True, std, **kw)


def make_algo(pre=None, **overrides):
    pre = pre or policy()
    ctx = AlgoContext(OBS, DA, TP, TA, N, T, 10, "gym", torch.device("cpu"))
    cfg = GaussianPPOConfig(**{"batch_size": 10, "update_epochs": 2, "lr_warmup_itr": 0, "n_critic_warmup_itr": 0,
                               "actor_lr": 1e-3, "actor_lr_min": 1e-3, **overrides})
    return GaussianPPO(cfg, ctx, pre)


def rollout(algo, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand((T, N, OBS), generator=g) * 2 - 1
    outs = [algo.act(obs[t]) for t in range(T)]
    term, trunc = torch.zeros(T, N, dtype=torch.bool), torch.zeros(T, N, dtype=torch.bool)
    term[1, 0], trunc[3, 2] = True, True
    return Rollout(obs, {k: torch.stack([o.extras[k] for o in outs]) for k in outs[0].extras},
                   torch.rand((T, N), generator=g), term, trunc, torch.rand((T, N, OBS), generator=g),
                   torch.rand((N, OBS), generator=g))


def reference_mean_std(p: GaussianPolicy, obs, std_value):
    """The distribution's parameters, from the raw network output and the configured std (not forward())."""
    return torch.tanh(p.net(obs)).view(-1, TP, DA), torch.full((obs.shape[0], TP, DA), std_value)


def test_log_prob_matches_torch_distributions():
    p = policy(fixed_std=0.3)
    obs, actions = torch.rand(7, OBS) * 2 - 1, torch.rand(7, TP, DA) * 2 - 1
    mean, std = reference_mean_std(p, obs, 0.3)
    for n in (TP, TA, 1):
        expected = D.Normal(mean[:, :n], std[:, :n]).log_prob(actions[:, :n]).sum(dim=(1, 2))
        torch.testing.assert_close(p.log_prob(obs, actions, n), expected, rtol=1e-5, atol=1e-5)
    expected_nll = -D.Normal(mean, std).log_prob(actions).mean()
    torch.testing.assert_close(p.loss(actions, obs), expected_nll, rtol=1e-5, atol=1e-5)
    expected_entropy = D.Normal(mean[:, :TA], std[:, :TA]).entropy().sum(dim=(1, 2))
    torch.testing.assert_close(p.entropy(obs, TA), expected_entropy, rtol=1e-5, atol=1e-5)


def test_ppo_logprob_is_averaged_over_executed_entries_then_clamped():
    """std 0.02: the average density at the mean is log(1/(0.02 sqrt(2 pi))) = 2.99 > 2 (clamped to 2); far
    actions fall below -5 (clamped to -5); moderate ones pass unchanged."""
    algo = make_algo(std_init=0.02)
    obs = torch.rand(3, OBS) * 2 - 1
    mean, std = reference_mean_std(algo.actor_ft, obs, 0.02)
    actions = torch.stack([mean[0], mean[1] + 0.5, mean[2] + 0.04])  # at the mean, far, two stds away
    avg = D.Normal(mean[:, :TA], std[:, :TA]).log_prob(actions[:, :TA]).mean(dim=(1, 2))
    assert avg[0] > 2 and avg[1] < -5 and -5 < avg[2] < 2
    got = algo._logprob(obs, actions)
    torch.testing.assert_close(got, avg.clamp(-5, 2), rtol=1e-5, atol=1e-5)
    assert got[0].item() == 2.0 and got[1].item() == -5.0
    # "sum" without a clamp is the exact log-likelihood of the executed actions
    exact = make_algo(std_init=0.02, logprob_reduction="sum", logprob_min=None, logprob_max=None)
    expected = D.Normal(mean[:, :TA], std[:, :TA]).log_prob(actions[:, :TA]).sum(dim=(1, 2))
    torch.testing.assert_close(exact._logprob(obs, actions), expected, rtol=1e-5, atol=1e-4)


def test_fixed_std_is_clamped_to_its_bounds_and_learnable_only_when_fine_tuning():
    pre = policy(fixed_std=0.1)
    assert not pre.log_var.requires_grad  # pre-training holds the std fixed, as the original
    obs = torch.zeros(2, OBS)
    algo = make_algo(pre, std_init=0.5, std_min=0.01, std_max=0.2)  # 0.5 is above the bound
    assert algo.actor_ft.log_var.requires_grad and not pre.log_var.requires_grad
    torch.testing.assert_close(algo.actor_ft(obs)[1].exp().sqrt(), torch.full((2, TP, DA), 0.2))
    with torch.no_grad():
        algo.actor_ft.log_var.fill_(2 * math.log(1e-4))
    torch.testing.assert_close(algo.actor_ft(obs)[1].exp().sqrt(), torch.full((2, TP, DA), 0.01))
    # outside the bounds the std gets no gradient
    algo.actor_ft.log_prob(obs, torch.zeros(2, TP, DA)).sum().backward()
    assert torch.equal(algo.actor_ft.log_var.grad, torch.zeros(DA))
    frozen = make_algo(policy(), learn_std=False)
    assert not frozen.actor_ft.log_var.requires_grad


def test_state_dependent_std_stays_in_its_bounds():
    p = policy(std="state", std_min=0.01, std_max=1.0)
    assert p.log_var is None
    with torch.no_grad():
        for m in p.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(50)
    std = p(torch.rand(64, OBS) * 20 - 10)[1].mul(0.5).exp()
    assert std.min() >= 0.01 - 1e-6 and std.max() <= 1.0 + 1e-6
    assert std.min() < 0.02 and std.max() > 0.9  # the extremes are reached, so the bounds are what binds
    algo = make_algo(policy(std="state"))  # fine-tuning keeps the state-dependent head
    assert algo.actor_ft.log_var is None


def test_sampling_clips_z_and_evaluation_is_the_mean():
    algo = make_algo(std_init=0.1, randn_clip=0.5)
    obs = torch.rand(200, OBS) * 2 - 1
    mean = torch.tanh(algo.actor_ft.net(obs)).view(-1, TP, DA)
    a = algo.act(obs).actions
    assert ((a - mean).abs() <= 0.05 + 1e-6).all() and (a - mean).abs().max() > 0.049
    torch.testing.assert_close(algo.act(obs, deterministic=True).actions, mean)


def test_update_changes_the_actor_and_state_dict_round_trips():
    algo = make_algo()
    before = [p.detach().clone() for p in algo.actor_ft.parameters()]
    m = algo.update(rollout(algo), 0)
    assert all(math.isfinite(m[k]) for k in ("pg_loss", "v_loss", "approx_kl", "std"))
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.actor_ft.parameters()))
    assert algo.actor_ft.log_var.grad is not None  # the std is learned
    twin = make_algo()
    twin.load_state_dict(copy.deepcopy(algo.state_dict()))  # as through a checkpoint file: no shared tensors
    ro = rollout(algo, seed=2)
    torch.manual_seed(3)
    m1 = algo.update(ro, 1)
    torch.manual_seed(3)
    m2 = twin.update(ro, 1)
    assert m1 == m2
    assert all(torch.equal(a, b) for a, b in zip(algo.actor_ft.parameters(), twin.actor_ft.parameters()))


def test_critic_warmup_freezes_the_actor():
    algo = make_algo(n_critic_warmup_itr=1)
    before = [p.detach().clone() for p in algo.actor_ft.parameters()]
    m = algo.update(rollout(algo), 0)
    assert m["actor_updated"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, algo.actor_ft.parameters()))


def test_smoke_run_and_eval_uses_the_fine_tuned_weights(cli, tmp_path):
    from bench.pretrain import build_policy
    from bench.runner import load_for_eval

    code, _, err = cli("run", "--algo", "gaussian_ppo", "--task", "hopper", "--preset", "smoke", "--out", tmp_path,
                       "--quiet", "--set", "torch_threads=1")
    assert code == 0, err
    d = tmp_path / "runs" / "hopper" / "gaussian_ppo" / "seed0"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["complete"] and summary["iterations"] == 2
    ver = json.loads((d / "versions.json").read_text())
    assert ver["pretrained"]["policy_kind"] == "gaussian" and "/gaussian-" in ver["pretrained"]["path"]
    ctx, algo, _, state = load_for_eval(d)
    cfg = ctx.cfg
    assert all(torch.equal(v, state["algo"]["actor_ft"][k]) for k, v in algo.actor_ft.state_dict().items())
    base = build_policy("gaussian", algo.ctx.obs_dim, algo.ctx.act_dim, algo.ctx.horizon_steps, cfg.pretrain)
    base.load_state_dict(state["pretrained"])
    obs = torch.rand(8, algo.ctx.obs_dim) * 2 - 1
    a_ft = algo.act(obs, deterministic=True).actions
    assert not torch.allclose(a_ft, base.sample(obs, deterministic=True)), "fine-tuning changed nothing"
    code, out, err = cli("eval", d)
    assert code == 0, err
    final = [json.loads(x) for x in [out]][0]
    import pandas as pd

    assert final["return_mean"] == pytest.approx(pd.read_csv(d / "eval.csv")["return_mean"].iloc[-1], rel=1e-9)


@pytest.mark.slow
def test_gaussian_ppo_learns_point_reach(cli, tmp_path):
    code, _, err = cli("run", "--algo", "gaussian_ppo", "--task", "point_reach", "--out", tmp_path, "--quiet",
                       "--set", "torch_threads=1")
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "point_reach" / "gaussian_ppo" / "seed0" / "summary.json").read_text())
    assert summary["final_score"] > summary["pretrained_score"] + 8, summary


def test_bad_std_settings_are_a_one_line_error_and_write_no_run(cli, tmp_path):
    code, _, err = cli("run", "--algo", "gaussian_ppo", "--task", "point_reach", "--preset", "smoke", "--out", tmp_path,
                       "--quiet", "--set", "torch_threads=1", "--set", "algo.std_min=0.5")
    last = err.strip().splitlines()[-1]  # (after the log line of the dataset it made)
    assert code == 2 and last.startswith("error:") and "algo.std_min" in last and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
