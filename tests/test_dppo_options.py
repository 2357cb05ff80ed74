"""DPPO's optional extras on a small real rollout: each option runs, and does what it says."""

import copy

import pytest
import torch

from algorithms.base import AlgoContext, Rollout
from algorithms.dppo import DPPO, DPPOConfig
from bench.config import PretrainConfig
from bench.pretrain import build_diffusion_policy

T, N, OBS, ACT, TP, TA = 6, 4, 5, 2, 4, 2


def make(**overrides):
    torch.manual_seed(0)
    pre = build_diffusion_policy(OBS, ACT, TP, PretrainConfig(hidden_dims=(32, 32, 32), denoising_steps=10))
    ctx = AlgoContext(OBS, ACT, TP, TA, N, T, 10, "gym", torch.device("cpu"))
    cfg = DPPOConfig(**{"ft_denoising_steps": 4, "batch_size": 16, "update_epochs": 2, "lr_warmup_itr": 0,
                        **overrides})
    return DPPO(cfg, ctx, pre)


def rollout(algo, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand((T, N, OBS), generator=g) * 2 - 1
    outs = [algo.act(obs[t]) for t in range(T)]
    term = torch.zeros(T, N, dtype=torch.bool)
    trunc = torch.zeros(T, N, dtype=torch.bool)
    term[2, 0], trunc[4, 1] = True, True
    return Rollout(obs, {k: torch.stack([o.extras[k] for o in outs]) for k in outs[0].extras},
                   torch.rand((T, N), generator=g), term, trunc, torch.rand((T, N, OBS), generator=g),
                   torch.rand((N, OBS), generator=g))


def params(m):
    return [p.detach().clone() for p in m.parameters()]


@pytest.mark.parametrize("opt", [
    {}, {"bc_coef": 0.1}, {"clip_vloss": 0.2}, {"max_grad_norm": 0.5}, {"logprob_reduction": "sum"},
    {"use_ddim": True, "ddim_steps": 5}, {"reward_scale_running": False}, {"norm_adv": False},
])
def test_update_runs_and_changes_the_fine_tuned_actor_only(opt):
    algo = make(**opt)
    frozen, ft = params(algo.actor), params(algo.actor_ft)
    m = algo.update(rollout(algo), iteration=0)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in m.items() if k.endswith("loss"))
    if opt.get("bc_coef"):  # -log-likelihood of the base chains; can be < 0 (densities with std 0.1 exceed 1)
        assert "bc_loss" in m and abs(m["bc_loss"]) < 10
    assert all(torch.equal(a, b) for a, b in zip(frozen, params(algo.actor)))
    assert any(not torch.equal(a, b) for a, b in zip(ft, params(algo.actor_ft)))


def test_ddim_chain_length_and_deterministic_eval():
    algo = make(use_ddim=True, ddim_steps=5)
    out = algo.act(torch.zeros(3, OBS))
    assert out.extras["chains"].shape == (3, 5, TP, ACT)  # K' + 1 = 5 states of the DDIM chain
    a = algo.act(torch.zeros(3, OBS), deterministic=True, generator=torch.Generator().manual_seed(0)).actions
    b = algo.act(torch.zeros(3, OBS), deterministic=True, generator=torch.Generator().manual_seed(0)).actions
    assert torch.equal(a, b)


def test_critic_warmup_freezes_the_actor():
    algo = make(n_critic_warmup_itr=2)
    ft, critic = params(algo.actor_ft), params(algo.critic)
    m = algo.update(rollout(algo), iteration=1)
    assert m["actor_updated"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(ft, params(algo.actor_ft)))
    assert any(not torch.equal(a, b) for a, b in zip(critic, params(algo.critic)))
    algo.update(rollout(algo, seed=2), iteration=2)
    assert any(not torch.equal(a, b) for a, b in zip(ft, params(algo.actor_ft)))


def test_target_kl_stops_the_epochs_early():
    ro_algo = make(update_epochs=8)
    ro = rollout(ro_algo)
    full = copy.deepcopy(ro_algo).update(ro, 0)
    stopped = make(update_epochs=8, target_kl=1e-12, actor_lr=1e-2, actor_lr_min=1e-2).update(ro, 0)
    assert full["kl_early_stop"] == 0.0 and stopped["kl_early_stop"] == 1.0


def test_state_dict_round_trip_restores_training_exactly():
    a = make()
    a.update(rollout(a), 0)
    b = make()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    ro = rollout(a, seed=3)
    torch.manual_seed(5)
    ma = a.update(ro, 1)
    torch.manual_seed(5)
    mb = b.update(ro, 1)
    assert ma == mb
    assert all(torch.equal(x, y) for x, y in zip(params(a.actor_ft), params(b.actor_ft)))
