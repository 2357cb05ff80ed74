"""The temporal UNet denoiser (algorithms/unet.py) and its policy kind `diffusion_unet`: shapes, that the
FiLM conditioning and every block are live, its size against a hand count, that it learns by behaviour
cloning, bad values, and that DPPO and every diffusion baseline fine-tune it unchanged.

(Checked once by hand, not here: with the original DPPO `Unet1D`'s weights loaded, its outputs equal
these bit for bit for the Furniture, Transport, Lift and a no-GroupNorm/ReLU/small-encoder config.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from algorithms.base import AlgoContext, Rollout
from algorithms.diffusion import DiffusionPolicy
from algorithms.policies import get_policy_kind, run_policy_kind
from algorithms.registry import builtin_algorithms, get_algorithm
from algorithms.unet import DenoisingUNet1D, UNetConfig
from bench.config import build_run_config, pretrain_config
from core.errors import BenchError

OBS, DA, TP = 5, 3, 8
SMALL = UNetConfig(dim=8, dim_mults=(1, 2), time_dim=8, kernel_size=3, n_groups=4)
KIND = get_policy_kind("diffusion_unet")
DIFFUSION_ALGOS = [a for a in builtin_algorithms() if get_algorithm(a).policy_kind == "diffusion"]


def pretrain_with(unet: UNetConfig = SMALL, **top):
    return pretrain_config(diffusion_unet=unet, **{"denoising_steps": 10, **top})


def net(cfg: UNetConfig = SMALL, tp: int = TP, seed: int = 0) -> DenoisingUNet1D:
    torch.manual_seed(seed)
    return DenoisingUNet1D(OBS, tp, DA, cfg)


def inputs(b=6, tp=TP, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(b, tp, DA, generator=g), torch.randint(0, 10, (b,), generator=g)
    return x, t, torch.randn(b, OBS, generator=g)


@pytest.mark.parametrize("dim_mults, tp", [((1,), 5), ((1, 2), 4), ((1, 2), 16), ((1, 2, 4), 8)])
def test_output_has_the_chunk_shape(dim_mults, tp):
    m = net(dataclasses.replace(SMALL, dim_mults=dim_mults), tp)
    x, t, s = inputs(tp=tp)
    assert m(x, t, s).shape == x.shape and (m.horizon_steps, m.act_dim) == (tp, DA)


def test_output_depends_on_obs_time_and_every_block_is_live():
    m = net()
    x, t, s = inputs()
    y = m(x, t, s)
    assert not torch.allclose(m(x, t, s + 0.5), y)  # the observation reaches the output (FiLM)
    assert not torch.allclose(m(x, (t + 3) % 10, s), y)  # so does the diffusion step
    # per sample: changing one sample's obs changes only that sample's output (no batch mixing)
    s2 = s.clone()
    s2[0] += 1.0
    y2 = m(x, t, s2)
    assert not torch.allclose(y2[0], y[0]) and torch.equal(y2[1:], y[1:])
    # every parameter gets a gradient: each block, its FiLM encoder and the skip concatenation are in the path
    y.square().sum().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead


def test_the_up_path_uses_the_down_skip():
    """Replacing the skip that enters the up path (the second level's output) changes the result."""
    m = net()
    x, t, s = inputs()
    y = m(x, t, s)
    level = m.down[1]
    handle = level[1].register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    try:
        y0 = m(x, t, s)
    finally:
        handle.remove()
    assert not torch.allclose(y0, y)


def _hand_count(obs, da, c: UNetConfig) -> int:
    """Parameters by formula: conv(ci, co, k) = ci co k + co, linear(a, b) = a b + b, GroupNorm 2 co."""
    def conv(ci, co, k):
        return ci * co * k + co

    def lin(a, b):
        return a * b + b

    def norm(co):
        return 2 * co if c.n_groups else 0

    cond = c.time_dim + obs

    def res(ci, co):
        n = 2 * co if c.cond_predict_scale else co
        enc = lin(cond, n) if c.smaller_encoder else lin(cond, n) + 2 * lin(n, n)
        return (conv(ci, co, c.kernel_size) + norm(co) + conv(co, co, c.kernel_size) + norm(co) + enc
                + (conv(ci, co, 1) if ci != co else 0))

    w = [da] + [c.dim * m for m in c.dim_mults]
    total = lin(c.time_dim, 4 * c.time_dim) + lin(4 * c.time_dim, c.time_dim)
    for i in range(1, len(w)):  # down levels, a stride-2 conv (kernel 3) after all but the last
        total += res(w[i - 1], w[i]) + res(w[i], w[i]) + (conv(w[i], w[i], 3) if i < len(w) - 1 else 0)
    total += 2 * res(w[-1], w[-1])
    for i in range(len(w) - 1, 1, -1):  # up levels: skip-concatenated input, then a transposed conv (kernel 4)
        total += res(2 * w[i], w[i - 1]) + res(w[i - 1], w[i - 1]) + conv(w[i - 1], w[i - 1], 4)
    return total + conv(w[1], w[1], c.kernel_size) + norm(w[1]) + conv(w[1], da, 1)


@pytest.mark.parametrize("cfg", [
    SMALL,
    dataclasses.replace(SMALL, cond_predict_scale=False, smaller_encoder=True, n_groups=None),
    dataclasses.replace(SMALL, dim_mults=(1, 2, 4)),
])
def test_parameter_count_matches_a_hand_count(cfg):
    assert sum(p.numel() for p in net(cfg).parameters()) == _hand_count(OBS, DA, cfg)


def test_parameter_count_of_the_furniture_size():
    # obs 58, Da 10, dim 64, (1, 2): 1,678,362 parameters, the same as the original Unet1D of that config
    cfg = UNetConfig()
    n = sum(p.numel() for p in DenoisingUNet1D(58, 16, 10, cfg).parameters())
    assert n == _hand_count(58, 10, cfg) == 1_678_362


def test_behaviour_cloning_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    policy = KIND.build(OBS, DA, TP, pretrain_with())
    assert isinstance(policy, DiffusionPolicy) and isinstance(policy.network, DenoisingUNet1D)
    g = torch.Generator().manual_seed(3)
    obs = torch.rand(64, OBS, generator=g) * 2 - 1
    acts = torch.tanh(obs[:, :DA, None].expand(-1, -1, TP).transpose(1, 2) * torch.linspace(0.5, 1.5, TP)[:, None])

    def fixed_loss():  # the same noise and steps every time
        with torch.no_grad():
            return policy.loss(acts, obs, generator=torch.Generator().manual_seed(7)).item()

    before = fixed_loss()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for i in range(40):
        loss = policy.loss(acts, obs, generator=torch.Generator().manual_seed(100 + i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.7 * before


def test_dppo_samples_chains_and_log_probs_and_updates_the_fine_tuned_copy():
    T, N, TA, K_FT = 3, 4, 4, 3
    torch.manual_seed(0)
    policy = KIND.build(OBS, DA, TP, pretrain_with())
    cls = get_algorithm("dppo")
    ctx = AlgoContext(OBS, DA, TP, TA, N, T, 10, "gym", torch.device("cpu"))
    algo = cls(cls.Config(ft_denoising_steps=K_FT, batch_size=12, update_epochs=1, lr_warmup_itr=0,
                          critic_hidden=(16, 16, 16)), ctx, policy)
    assert isinstance(algo.actor_ft, DenoisingUNet1D) and algo.actor_ft is not algo.actor
    g = torch.Generator().manual_seed(1)
    obs = torch.rand(T, N, OBS, generator=g) * 2 - 1
    outs = [algo.act(obs[t], generator=g) for t in range(T)]
    assert outs[0].actions.shape == (N, TP, DA)
    assert outs[0].extras["chains"].shape == (N, K_FT + 1, TP, DA)
    lp = outs[0].extras["logprobs"]
    assert lp.shape == (N, K_FT) and torch.isfinite(lp).all()
    # the stored last chain state is the action, and the log-prob recomputed by the loss matches the stored
    assert torch.equal(outs[0].extras["chains"][:, -1], outs[0].actions)
    ro = Rollout(obs, {k: torch.stack([o.extras[k] for o in outs]) for k in outs[0].extras},
                 torch.rand(T, N, generator=g), torch.zeros(T, N, dtype=torch.bool),
                 torch.zeros(T, N, dtype=torch.bool), torch.zeros(T, N, OBS), torch.rand(N, OBS, generator=g))
    data = {"chains": ro.extras["chains"].reshape(T * N, K_FT + 1, TP, DA), "obs": obs.reshape(T * N, OBS),
            "logprobs": ro.extras["logprobs"].reshape(T * N, K_FT)}
    out = algo.policy_loss(data, torch.arange(T * N * K_FT), torch.randn(T * N), update_actor=True)
    assert torch.allclose(out.log_ratio, torch.zeros_like(out.log_ratio), atol=1e-5)  # same network: ratio 1
    frozen = [p.detach().clone() for p in algo.actor.parameters()]
    ft = [p.detach().clone() for p in algo.actor_ft.parameters()]
    metrics = algo.update(ro, iteration=0)
    assert all(np.isfinite(v) for k, v in metrics.items() if k.endswith("loss"))
    assert all(torch.equal(a, b) for a, b in zip(frozen, algo.actor.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(ft, algo.actor_ft.parameters()))


@pytest.mark.parametrize("algo", DIFFUSION_ALGOS)
def test_every_diffusion_algorithm_fine_tunes_it(algo):
    """A smoke iteration of each diffusion algorithm on point_reach, started from an (untrained) UNet policy."""
    from bench.runner import EpisodeTracker, RunContext, build_algorithm, collect_rollout, make_env, seed_everything
    from envs.vector import Normalizer

    cfg = build_run_config("point_reach", algo, 0, "smoke", {"torch_threads": "1", **{
        f"pretrain.diffusion_unet.{k}": v for k, v in {"dim": 8, "n_groups": 4, "time_dim": 8}.items()}})
    ctx = RunContext.of(cfg)
    task = ctx.task
    seed_everything(0)
    policy = KIND.build(task.obs_dim, task.act_dim, cfg.env.horizon_steps, cfg.pretrain)
    before = [p.detach().clone() for p in policy.parameters()]
    algorithm = build_algorithm(ctx, policy)
    one = np.ones(task.obs_dim, np.float32)
    env = make_env(ctx, Normalizer(-one, one, -np.ones(task.act_dim, np.float32), np.ones(task.act_dim, np.float32)),
                   cfg.env.n_envs)
    try:
        obs = env.reset(seed=0)
        for itr in range(cfg.train.n_iterations):
            ro, obs, _ = collect_rollout(algorithm, env, obs, cfg.train.n_steps, EpisodeTracker(env.n_envs), ctx.device)
            metrics = algorithm.update(ro, itr)
    finally:
        env.close()
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    trained = [m for m in algorithm.__dict__.values() if isinstance(m, (DenoisingUNet1D, DiffusionPolicy))]
    assert trained  # the algorithm holds the UNet (a copy or the policy itself)
    changed = any(not torch.equal(a, b) for m in trained for a, b in zip(before, m.parameters()))
    assert changed, "no UNet parameter was fine-tuned"


def test_config_section_key_and_pretraining_round_trip():
    from bench.pretrain import load_pretrained, pretrain_key, pretrain_policy
    from envs.datasets import TransitionDataset

    cfg = build_run_config("one_leg_low", "dppo", 0, "smoke", {"pretrain.diffusion_unet.dim_mults": "1,2,4",
                                                                "pretrain.diffusion_unet.n_groups": "none"})
    assert cfg.pretrain.diffusion_unet.dim_mults == (1, 2, 4) and cfg.pretrain.diffusion_unet.n_groups is None
    key = pretrain_key("t", "c", TP, pretrain_with(), "diffusion_unet")
    assert key != pretrain_key("t", "c", TP, pretrain_with(dataclasses.replace(SMALL, dim=16)), "diffusion_unet")
    assert key != pretrain_key("t", "c", TP, pretrain_with(denoising_steps=20), "diffusion_unet")  # the chain
    assert key == pretrain_key("t", "c", TP, pretrain_with(hidden_dims=(7,)), "diffusion_unet")  # not the MLP's
    rng = np.random.default_rng(0)
    n = 80
    timeouts = np.zeros(n, bool)
    timeouts[19::20] = True
    ds = TransitionDataset(rng.uniform(-1, 1, (n, OBS)).astype(np.float32),
                           rng.uniform(-1, 1, (n, DA)).astype(np.float32), np.zeros(n, np.float32), np.zeros(n, bool),
                           timeouts, source="synthetic")
    path = pretrain_policy("diffusion_unet", "unet_synthetic", OBS, DA, ds, TP,
                           pretrain_with(n_updates=3, batch_size=8, ema_start=1))
    assert path.name.startswith("diffusion_unet-")
    policy, _, meta = load_pretrained(path)
    assert meta["policy_kind"] == "diffusion_unet" and isinstance(policy.network, DenoisingUNet1D)
    x = policy.sample(torch.zeros(2, OBS), generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, TP, DA) and torch.isfinite(x).all()


@pytest.mark.parametrize("field, value, message", [
    ("dim_mults", (), "dim_mults needs at least one multiplier"),
    ("dim_mults", (1, 0), "dim_mults needs at least one multiplier"),
    ("dim", 0, "dim must be >= 1"),
    ("kernel_size", 4, "kernel_size must be odd"),
    ("time_dim", 7, "time_dim must be even and >= 4"),
    ("n_groups", 3, r"n_groups \(3\) must divide every level's width dim \* dim_mults = \[8, 16\]"),
    ("groupnorm_eps", 0.0, "groupnorm_eps must be positive"),
])
def test_bad_values_are_one_line_errors(field, value, message):
    with pytest.raises(BenchError, match=f"pretrain.diffusion_unet.{message}") as e:
        KIND.check(pretrain_with(dataclasses.replace(SMALL, **{field: value})))
    assert "\n" not in str(e.value)


def test_chunk_length_must_halve_down_every_level():
    p = pretrain_with(dataclasses.replace(SMALL, dim_mults=(1, 2, 4)))
    KIND.check_horizon(p, 8)
    with pytest.raises(BenchError, match=r"env.horizon_steps \(6\) must be divisible by 4 for a UNet with 3 levels"):
        KIND.check_horizon(p, 6)
    with pytest.raises(BenchError, match="must be divisible by 4"):
        KIND.build(OBS, DA, 6, p)  # build refuses too (a pre-training never starts on it)


def test_a_run_selects_the_kind_its_algorithm_accepts():
    assert run_policy_kind("diffusion") == "diffusion"
    assert run_policy_kind("diffusion", "diffusion_unet") == "diffusion_unet"
    with pytest.raises(BenchError, match="policy kind 'diffusion_unet' builds a diffusion policy, but the algorithm "
                                         "starts from a gaussian policy; kinds that fit: gaussian"):
        run_policy_kind("gaussian", "diffusion_unet")
    with pytest.raises(BenchError, match="kinds that fit: diffusion, diffusion_unet"):
        run_policy_kind("diffusion", "gmm")
    with pytest.raises(BenchError, match="unknown policy kind 'unet'"):
        run_policy_kind("diffusion", "unet")
