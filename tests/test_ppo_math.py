"""PPO / DPPO math (algorithms/ppo.py, algorithms/dppo.py, envs/vector.Normalizer) against independent
hand computations (method.md §2-3).

Expected values are written out here in plain Python (float64, explicit loops and ifs, `math`);
the library is only called to produce the value under test (and, for DPPO, the network outputs that
are inputs of the hand formulas).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  (imported lazily by the first optimiser; ~2 s, paid at collection instead)

from algorithms.base import AlgoContext, Rollout
from algorithms.dppo import DPPO, DPPOConfig
from algorithms.ppo import (
    RunningMeanStd,
    RunningRewardScaler,
    clipped_surrogate,
    denoising_clip_schedule,
    gae,
)
from algorithms.schedules import warmup_cosine_lr
from bench.config import PretrainConfig
from bench.pretrain import build_diffusion_policy
from envs.vector import Normalizer

torch.set_num_threads(1)

LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------------
# Hand diffusion tables (duplicated on purpose: each test module is self-contained)


def hand_abars(K: int, s: float = 0.008) -> tuple[list[float], list[float]]:
    f = [math.cos(((t / K) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(K + 1)]
    betas, abars, prod = [], [], 1.0
    for t in range(K):
        beta = min(max(1.0 - f[t + 1] / f[t], 0.0), 0.999)
        prod *= 1.0 - beta
        betas.append(beta)
        abars.append(prod)
    return betas, abars


def hand_step(K: int, ddim_steps: int | None, pos: int):
    """(timestep, function (x, eps) -> mean, std) of chain position `pos`, by hand (eta = 1 for DDIM)."""
    betas, abars = hand_abars(K)
    if ddim_steps is None:
        t = K - 1 - pos
        a_t, beta = abars[t], betas[t]
        a_prev = abars[t - 1] if t > 0 else 1.0
        var = beta * (1 - a_prev) / (1 - a_t)
        std = math.exp(0.5 * math.log(max(var, 1e-20)))

        def mean(x, e):
            x0 = min(max((x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t), -1.0), 1.0)
            return beta * math.sqrt(a_prev) / (1 - a_t) * x0 + (1 - a_prev) * math.sqrt(1 - beta) / (1 - a_t) * x
    else:
        ts = [j * (K // ddim_steps) for j in range(ddim_steps)][::-1]
        t = ts[pos]
        a_t = abars[t]
        a_prev = abars[ts[pos + 1]] if pos + 1 < len(ts) else 1.0
        std = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))

        def mean(x, e):
            x0 = min(max((x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t), -1.0), 1.0)
            e = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - std**2) * e
    return t, mean, std


def hand_logprob(mean: np.ndarray, std: list[float], x: np.ndarray, act_steps: int, reduction: str = "mean",
                 lo: float = -5.0, hi: float = 2.0) -> np.ndarray:
    """Per-sample reduced Gaussian log-density: element-wise, clamped, first Ta of Tp, mean/sum over (Ta, Da)."""
    B, Tp, Da = x.shape
    out = np.zeros(B)
    for b in range(B):
        total = 0.0
        for t in range(act_steps):
            for d in range(Da):
                z = (float(x[b, t, d]) - float(mean[b, t, d])) / std[b]
                lp = -0.5 * z * z - math.log(std[b]) - 0.5 * LOG_2PI
                lp = min(max(lp, lo), hi)
                total += lp
        out[b] = total / (act_steps * Da) if reduction == "mean" else total
    return out


# ------------------------------------------------------------------------------------------------
# A tiny DPPO


K_PRE, K_FT, OBS, DA, TP, TA = 10, 4, 3, 2, 4, 2


def make_dppo(**overrides) -> DPPO:
    torch.manual_seed(0)
    pre = build_diffusion_policy(obs_dim=OBS, act_dim=DA, horizon_steps=TP,
                                 cfg=PretrainConfig(hidden_dims=(16, 16, 16), denoising_steps=K_PRE))
    ctx = AlgoContext(obs_dim=OBS, act_dim=DA, horizon_steps=TP, act_steps=TA, n_envs=2, n_steps=3,
                      n_iterations=5, suite="gym", device=torch.device("cpu"))
    kw = dict(ft_denoising_steps=K_FT, batch_size=8, critic_hidden=(16, 16, 16))
    kw.update(overrides)
    return DPPO(DPPOConfig(**kw), ctx, pre)


def perturb_actor_ft(algo: DPPO, seed: int = 1) -> None:
    """Make the fine-tuned copy differ from the frozen network, so a mix-up would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in algo.actor_ft.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


# ------------------------------------------------------------------------------------------------
# 4. DPPO chain log-probability


def _logprob_inputs():
    g = torch.Generator().manual_seed(0)
    B = 4
    mean = torch.randn((B, TP, DA), generator=g)
    # std 0.01 pushes small-|z| entries above the upper clamp 2, std 1 keeps them inside
    std_vals = [0.01, 0.1, 1.0, 0.3]
    std = torch.tensor(std_vals).view(B, 1, 1)
    z = torch.randn((B, TP, DA), generator=g)
    z[:, 0, 0] = 0.0  # density at the mean
    z[:, 1, 1] = 6.0  # far in the tail: below the lower clamp -5 for every std here
    x = mean + std * z
    return mean, std, std_vals, x


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_step_logprob_matches_hand_gaussian(reduction):
    algo = make_dppo(logprob_reduction=reduction)
    mean, std, std_vals, x = _logprob_inputs()
    got = algo._step_logprob(mean, std, x)
    assert got.shape == (4,)
    expected = hand_logprob(mean.double().numpy(), std_vals, x.double().numpy(), TA, reduction)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6, atol=2e-6)
    # the clamps are active in this example (hand check)
    raw = [-0.5 * 0.0 - math.log(s) - 0.5 * LOG_2PI for s in std_vals]
    assert max(raw) > 2.0 and min(-0.5 * 36 - math.log(s) - 0.5 * LOG_2PI for s in std_vals) < -5.0
    # second opinion: torch.distributions.Normal in float64
    normal = torch.distributions.Normal(mean.double(), std.double().expand_as(mean))
    lp = normal.log_prob(x.double()).clamp(-5.0, 2.0)[:, :TA]
    ref = lp.mean(dim=(1, 2)) if reduction == "mean" else lp.sum(dim=(1, 2))
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=2e-6)


def test_step_logprob_ignores_non_executed_actions():
    algo = make_dppo()
    mean, std, _, x = _logprob_inputs()
    x2 = x.clone()
    x2[:, TA:] += 0.37  # change only the Tp - Ta actions that are not executed
    torch.testing.assert_close(algo._step_logprob(mean, std, x2), algo._step_logprob(mean, std, x), rtol=0, atol=0)
    x3 = x.clone()
    x3[:, TA - 1, 0] += 0.37  # an executed one does change it
    assert not torch.allclose(algo._step_logprob(mean, std, x3), algo._step_logprob(mean, std, x))


@pytest.mark.parametrize("use_ddim", [False, True])
def test_act_stores_chain_and_its_logprobs(use_ddim):
    algo = make_dppo(use_ddim=use_ddim, ddim_steps=5)
    perturb_actor_ft(algo)
    n_chain = 5 if use_ddim else K_PRE
    ddim = 5 if use_ddim else None
    assert len(algo.chain) == n_chain and algo.first_ft == n_chain - K_FT
    B = 3
    obs = torch.randn((B, OBS), generator=torch.Generator().manual_seed(2))
    out = algo.act(obs, generator=torch.Generator().manual_seed(3))
    chains, logps = out.extras["chains"], out.extras["logprobs"]
    assert chains.shape == (B, K_FT + 1, TP, DA) and logps.shape == (B, K_FT)
    torch.testing.assert_close(out.actions, chains[:, -1], rtol=0, atol=0)
    for k in range(K_FT):
        pos = algo.first_ft + k
        t, mean_fn, std = hand_step(K_PRE, ddim, pos)
        assert int(algo.chain.timesteps[pos]) == t
        with torch.no_grad():
            eps = algo.actor_ft(chains[:, k], torch.full((B,), t), obs).double().numpy()
        x = chains[:, k].double().numpy()
        mean = np.empty_like(x)
        for idx in np.ndindex(x.shape):
            mean[idx] = mean_fn(float(x[idx]), float(eps[idx]))
        x_next = chains[:, k + 1].double().numpy()
        # the draw: x_next = mean + max(std, 0.1) * z with z clipped to +-3
        z = (x_next - mean) / max(std, 0.1)
        assert np.all(np.abs(z) <= 3.0 + 1e-4)
        expected = hand_logprob(mean, [max(std, 0.1)] * B, x_next, TA)
        np.testing.assert_allclose(logps[:, k].double().numpy(), expected, rtol=1e-5, atol=2e-6)


# ------------------------------------------------------------------------------------------------
# DPPO.update: ratios, per-step clip, denoising discount, value loss (one minibatch of all pairs)


def test_update_first_minibatch_matches_hand_loss():
    T, N = 3, 2
    algo = make_dppo(batch_size=T * N * K_FT, update_epochs=1, reward_scale_running=False, norm_adv=True,
                     n_critic_warmup_itr=1, clip=0.01, clip_base=0.001, clip_rate=3.0, gamma=0.9,
                     gae_lambda=0.8, gamma_denoising=0.7)
    perturb_actor_ft(algo)
    g = torch.Generator().manual_seed(5)
    obs = torch.randn((T, N, OBS), generator=g)
    outs = [algo.act(obs[t], generator=g) for t in range(T)]
    chains = torch.stack([o.extras["chains"] for o in outs])
    stored = torch.stack([o.extras["logprobs"] for o in outs])  # (T, N, K')
    # shift the "old" log-probs per denoising step so the ratios are exp(delta_k), some clipped
    delta = [0.0005, -0.003, 0.02, -0.009]
    old = stored - torch.tensor(delta).view(1, 1, K_FT)
    rewards = torch.tensor([[1.0, -0.5], [0.2, 0.7], [-1.0, 0.3]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    truncated = torch.tensor([[False, True], [False, False], [False, False]])
    final_obs = torch.randn((T, N, OBS), generator=g)
    next_obs = torch.randn((N, OBS), generator=g)
    ro = Rollout(obs=obs, extras={"chains": chains, "logprobs": old}, rewards=rewards, terminated=terminated,
                 truncated=truncated, final_obs=final_obs, next_obs=next_obs)
    actor_before = [p.clone() for p in algo.actor_ft.parameters()]
    with torch.no_grad():
        V = algo.critic(obs.flatten(0, 1)).view(T, N).double().numpy()
        V_next = algo.critic(next_obs).double().numpy()
        V_final = algo.critic(final_obs.flatten(0, 1)).view(T, N).double().numpy()

    stats = algo.update(ro, iteration=0)

    # --- hand GAE (gamma 0.9, lambda 0.8), explicit per-step ifs
    gamma, lam = 0.9, 0.8
    A = np.zeros((T, N))
    for n in range(N):
        nxt = 0.0
        for t in range(T - 1, -1, -1):
            if terminated[t, n]:
                boot = 0.0
            elif truncated[t, n]:
                boot = V_final[t, n]
            elif t == T - 1:
                boot = V_next[n]
            else:
                boot = V[t + 1, n]
            delta_t = float(rewards[t, n]) + gamma * boot - V[t, n]
            if terminated[t, n] or truncated[t, n]:
                A[t, n] = delta_t
            else:
                A[t, n] = delta_t + gamma * lam * nxt
            nxt = A[t, n]
    # --- hand loss over all (sample, k) pairs
    pairs_adv = [A[t, n] for t in range(T) for n in range(N) for _ in range(K_FT)]
    m = sum(pairs_adv) / len(pairs_adv)
    sd = math.sqrt(sum((a - m) ** 2 for a in pairs_adv) / (len(pairs_adv) - 1))
    pg, kl, clipped, n_pairs = 0.0, 0.0, 0, 0
    for t in range(T):
        for n in range(N):
            for k in range(K_FT):
                a = (A[t, n] - m) / (sd + 1e-8) * 0.7 ** (K_FT - 1 - k)
                r = math.exp(delta[k])
                c = 0.001 + (0.01 - 0.001) * (math.exp(3.0 * k / (K_FT - 1)) - 1) / (math.exp(3.0) - 1)
                r_c = min(max(r, 1 - c), 1 + c)
                pg += max(-a * r, -a * r_c)
                kl += (r - 1) - math.log(r)
                clipped += abs(r - 1) > c
                n_pairs += 1
    v_loss = 0.5 * sum(A[t, n] ** 2 for t in range(T) for n in range(N)) / (T * N)
    assert stats["pg_loss"] == pytest.approx(pg / n_pairs, rel=1e-4, abs=1e-6)
    assert stats["approx_kl"] == pytest.approx(kl / n_pairs, rel=1e-3, abs=1e-7)
    assert stats["clipfrac"] == pytest.approx(clipped / n_pairs, abs=1e-9)
    assert 0 < clipped < n_pairs
    assert stats["ratio"] == pytest.approx(sum(math.exp(d) for d in delta) / K_FT, rel=1e-5)
    assert stats["v_loss"] == pytest.approx(v_loss, rel=1e-5, abs=1e-7)
    # critic warm-up iteration: the actor is not stepped
    assert stats["actor_updated"] == 0.0
    for p, q in zip(algo.actor_ft.parameters(), actor_before):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# 5. Clipped surrogate


def test_clipped_surrogate_hand_numbers_scalar_clip():
    A = torch.tensor([2.0, 2.0, 2.0, -2.0, -2.0, -2.0, 0.0, 1.0])
    r = torch.tensor([0.5, 1.0, 1.5, 0.5, 1.0, 1.5, 1.3, 1.1])
    # max(-A r, -A clip(r, 0.8, 1.2)), worked out by hand
    expected = torch.tensor([-1.0,   # A>0, r<1-c: max(-1.0, -1.6) -> unclipped (pessimistic)
                             -2.0,   # inside
                             -2.4,   # A>0, r>1+c: max(-3.0, -2.4) -> clipped
                             1.6,    # A<0, r<1-c: max(1.0, 1.6) -> clipped
                             2.0,    # inside
                             3.0,    # A<0, r>1+c: max(3.0, 2.4) -> unclipped
                             0.0,    # A = 0
                             -1.1])  # inside
    torch.testing.assert_close(clipped_surrogate(A, r, 0.2), expected, rtol=1e-6, atol=1e-6)


def test_clipped_surrogate_per_sample_clip_tensor():
    A_l, r_l, c_l = [2.0, 2.0, -2.0, -2.0, 1.0], [1.5, 1.5, 0.5, 0.5, 1.05], [0.1, 0.6, 0.1, 0.6, 0.01]
    A, r, c = torch.tensor(A_l), torch.tensor(r_l), torch.tensor(c_l)
    expected = []
    for a, rr, cc in zip(A_l, r_l, c_l):
        lo, hi = 1 - cc, 1 + cc
        rc = lo if rr < lo else (hi if rr > hi else rr)
        expected.append(max(-a * rr, -a * rc))
    # by hand: [-2.2, -3.0, 1.8, 1.0, -1.01]
    np.testing.assert_allclose(expected, [-2.2, -3.0, 1.8, 1.0, -1.01], rtol=1e-12)
    torch.testing.assert_close(clipped_surrogate(A, r, c), torch.tensor(expected), rtol=1e-6, atol=1e-6)
    # a tensor clip equal everywhere agrees with the scalar path
    torch.testing.assert_close(clipped_surrogate(A, r, torch.full((5,), 0.1)), clipped_surrogate(A, r, 0.1))


# ------------------------------------------------------------------------------------------------
# 6. Per-denoising-step clip schedule


def test_denoising_clip_schedule_hand_values():
    n, clip, base, rate = 10, 0.01, 0.001, 3.0
    got = denoising_clip_schedule(torch.arange(n), n, clip, base, rate).double().numpy()
    expected = [base + (clip - base) * (math.exp(rate * k / (n - 1)) - 1) / (math.exp(rate) - 1) for k in range(n)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert got[0] == pytest.approx(base, rel=1e-6)
    assert got[-1] == pytest.approx(clip, rel=1e-6)
    assert np.all(np.diff(got) > 0)
    # per-sample k in any order
    k = torch.tensor([9, 0, 4, 4])
    np.testing.assert_allclose(denoising_clip_schedule(k, n, clip, base, rate).double().numpy(),
                               [expected[9], expected[0], expected[4], expected[4]], rtol=1e-6)


def test_denoising_clip_schedule_single_step_and_gym_defaults():
    assert denoising_clip_schedule(torch.tensor([0]), 1, 0.01, 0.001, 3.0).tolist() == pytest.approx([0.01])
    # Gym: base == clip -> constant
    np.testing.assert_allclose(denoising_clip_schedule(torch.arange(10), 10, 0.01, 0.01, 3.0).numpy(),
                               np.full(10, 0.01), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# 7. GAE


def hand_gae(r, v, nv, d, gamma, lam):
    T, N = len(r), len(r[0])
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        for t in range(T - 1, -1, -1):
            delta = r[t][n] + gamma * nv[t][n] - v[t][n]
            if d[t][n] or t == T - 1:
                adv[t][n] = delta
            else:
                adv[t][n] = delta + gamma * lam * adv[t + 1][n]
    return adv


def _gae_case(r_after=None):
    # env 0 terminates after t = 1; env 1 is truncated after t = 3 (bootstrap from V(final obs) = 2.5)
    r = [[1.0, 0.5], [2.0, -1.0], [0.0, 0.3], [-0.5, 1.2], [0.7, 0.4]]
    v = [[0.3, 1.0], [0.6, 0.9], [0.1, 1.4], [0.2, 1.1], [0.5, 0.8]]
    if r_after is not None:
        r_after(r, v)
    term = [[False, False], [True, False], [False, False], [False, False], [False, False]]
    trunc = [[False, False], [False, False], [False, False], [False, True], [False, False]]
    v_final_env1, v_last = 2.5, [0.9, -0.3]
    T, N = 5, 2
    nv = [[0.0] * N for _ in range(T)]
    for t in range(T):
        for n in range(N):
            if term[t][n]:
                nv[t][n] = 0.0
            elif trunc[t][n]:
                nv[t][n] = v_final_env1
            elif t == T - 1:
                nv[t][n] = v_last[n]
            else:
                nv[t][n] = v[t + 1][n]
    d = [[term[t][n] or trunc[t][n] for n in range(N)] for t in range(T)]
    return r, v, nv, d


def _run_gae(r, v, nv, d, gamma, lam):
    return gae(torch.tensor(r, dtype=torch.float64), torch.tensor(v, dtype=torch.float64),
               torch.tensor(nv, dtype=torch.float64), torch.tensor(d), gamma, lam)


def test_gae_hand_example_with_termination_and_truncation():
    gamma, lam = 0.9, 0.8
    r, v, nv, d = _gae_case()
    got = _run_gae(r, v, nv, d, gamma, lam)
    # float32-level tolerance: see test_gae_float64_keeps_float64_precision for why
    np.testing.assert_allclose(got.numpy(), hand_gae(r, v, nv, d, gamma, lam), rtol=1e-6, atol=1e-7)
    # three entries fully by hand:
    # env 0, t = 1 (terminated): A = r - V = 2.0 - 0.6
    assert got[1, 0].item() == pytest.approx(2.0 - 0.6, abs=1e-12)
    # env 1, t = 3 (truncated): A = r + gamma * V(final) - V = 1.2 + 0.9 * 2.5 - 1.1
    assert got[3, 1].item() == pytest.approx(1.2 + 0.9 * 2.5 - 1.1, abs=1e-12)
    # env 1, t = 2: delta + gamma lam A[3]
    d2 = 0.3 + 0.9 * 1.1 - 1.4
    assert got[2, 1].item() == pytest.approx(d2 + 0.9 * 0.8 * (1.2 + 0.9 * 2.5 - 1.1), abs=1e-6)
    # float32 inputs (what DPPO passes) agree with the hand values at float32 precision
    got32 = gae(torch.tensor(r), torch.tensor(v), torch.tensor(nv), torch.tensor(d), gamma, lam)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), hand_gae(r, v, nv, d, gamma, lam), rtol=1e-6, atol=1e-6)


def test_gae_float64_keeps_float64_precision():
    gamma, lam = 0.9, 0.8
    r, v, nv, d = _gae_case()
    got = _run_gae(r, v, nv, d, gamma, lam)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), hand_gae(r, v, nv, d, gamma, lam), rtol=1e-12, atol=1e-12)


def test_gae_does_not_leak_across_episode_boundary():
    gamma, lam = 0.9, 0.8
    base = _run_gae(*_gae_case(), gamma, lam)

    def change_after_boundary(r, v):
        for t in (2, 3, 4):  # env 0's next episode
            r[t][0] += 10.0 * (t + 1)
            v[t][0] -= 3.0
        r[4][1] += 7.0  # env 1's next episode
        v[4][1] += 5.0

    changed = _run_gae(*_gae_case(change_after_boundary), gamma, lam)
    torch.testing.assert_close(changed[:2, 0], base[:2, 0], rtol=0, atol=0)
    torch.testing.assert_close(changed[:4, 1], base[:4, 1], rtol=0, atol=0)
    assert not torch.allclose(changed[2:, 0], base[2:, 0])
    assert not torch.allclose(changed[4:, 1], base[4:, 1])


def test_gae_lambda_one_is_monte_carlo_return_minus_value():
    r = [[1.0], [2.0], [3.0]]
    v = [[0.5], [0.25], [0.125]]
    nv = [[0.25], [0.125], [4.0]]
    got = _run_gae(r, v, nv, [[False]] * 3, 0.5, 1.0)
    # G_0 = 1 + 0.5*2 + 0.25*3 + 0.125*4
    assert got[0, 0].item() == pytest.approx(1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4 - 0.5, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# 8. Running reward scaling


def hand_rms_update(mean, var, count, batch, unbiased=True):
    """Pooled mean/variance of (count samples with mean, var) and the batch: the pooled sum of squares
    divided by count - 1 (the original's RunningMeanStd) or, with unbiased=False, by count."""
    n = len(batch)
    bm = sum(batch) / n
    bv = sum((x - bm) ** 2 for x in batch) / n
    total = count + n
    new_mean = (count * mean + n * bm) / total
    m2 = count * (var + (mean - new_mean) ** 2) + n * (bv + (bm - new_mean) ** 2)
    return new_mean, m2 / (total - 1 if unbiased else total), total


def hand_scale(rewards, dones, ret, rms, gamma, clip, eps=1e-8):
    T, N = len(rewards), len(rewards[0])
    ret = list(ret)
    rets = []
    for t in range(T):
        for n in range(N):
            ret[n] = ret[n] * gamma + rewards[t][n]
            rets.append(ret[n])
            if dones[t][n]:
                ret[n] = 0.0
    rms = hand_rms_update(*rms, rets)
    std = math.sqrt(rms[1] + eps)
    out = []
    for t in range(T):
        row = []
        for n in range(N):
            y = rewards[t][n] / std
            if y > clip:
                y = clip
            elif y < -clip:
                y = -clip
            row.append(y)
        out.append(row)
    return out, ret, rms, rets


def test_running_reward_scaler_gamma_09_two_calls():
    gamma = 0.9
    sc = RunningRewardScaler(n_envs=2, gamma=gamma, clip=10.0)
    r1 = [[1.0, 0.5], [2.0, -1.0], [0.5, 0.0], [-1.0, 3.0]]
    d1 = [[False, False], [True, False], [False, False], [False, False]]
    exp1, ret, rms, rets = hand_scale(r1, d1, [0.0, 0.0], (0.0, 1.0, 1e-4), gamma, 10.0)
    # a few running returns by hand: env 0 restarts after its done at t = 1
    assert rets[2] == pytest.approx(1.0 * 0.9 + 2.0)  # env 0, t = 1
    assert rets[4] == pytest.approx(0.5)  # env 0, t = 2 (new episode)
    assert rets[7] == pytest.approx(((0.5 * 0.9 - 1.0) * 0.9 + 0.0) * 0.9 + 3.0)  # env 1, t = 3
    got1 = sc(np.array(r1), np.array(d1))
    np.testing.assert_allclose(got1, exp1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sc.ret, ret, rtol=1e-12)
    assert (sc.rms.mean, sc.rms.var, sc.rms.count) == pytest.approx(rms, rel=1e-12)
    # second call carries the running returns over
    r2 = [[0.2, -0.4], [1.5, 0.1], [0.0, 0.0], [2.0, 1.0]]
    d2 = [[False, True], [False, False], [True, False], [False, False]]
    exp2, ret2, rms2, _ = hand_scale(r2, d2, ret, rms, gamma, 10.0)
    got2 = sc(np.array(r2), np.array(d2))
    np.testing.assert_allclose(got2, exp2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sc.ret, ret2, rtol=1e-12)
    assert (sc.rms.mean, sc.rms.var, sc.rms.count) == pytest.approx(rms2, rel=1e-12)
    # gamma is not hard-coded: the scaler built with 0.99 matches the 0.99 hand computation, not 0.9's
    other = RunningRewardScaler(n_envs=2, gamma=0.99)
    other(np.array(r1), np.array(d1))
    var_099 = hand_scale(r1, d1, [0.0, 0.0], (0.0, 1.0, 1e-4), 0.99, 10.0)[2][1]
    assert other.rms.var == pytest.approx(var_099, rel=1e-12)
    assert abs(var_099 - rms[1]) > 1e-4


def test_running_reward_scaler_clips():
    gamma, clip = 0.9, 0.5
    sc = RunningRewardScaler(n_envs=2, gamma=gamma, clip=clip)
    r = [[0.1, 3.0], [-4.0, 0.2], [0.05, -0.1], [0.3, 2.0]]
    d = [[False, False], [False, True], [False, False], [True, False]]
    expected, _, rms, _ = hand_scale(r, d, [0.0, 0.0], (0.0, 1.0, 1e-4), gamma, clip)
    unclipped = [[x / math.sqrt(rms[1] + 1e-8) for x in row] for row in r]
    flat = [x for row in unclipped for x in row]
    assert any(x > clip for x in flat) and any(x < -clip for x in flat) and any(abs(x) < clip for x in flat)
    got = sc(np.array(r), np.array(d))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert got.max() == clip and got.min() == -clip


def test_running_mean_std_pooled_update():
    rms = RunningMeanStd()
    a, b = np.array([1.0, 2.0, 4.0]), np.array([[0.5, -1.0], [3.0, 7.0]])
    rms.update(a)
    rms.update(b)
    state = hand_rms_update(0.0, 1.0, 1e-4, a.tolist())
    state = hand_rms_update(*state, b.ravel().tolist())
    assert (rms.mean, rms.var, rms.count) == pytest.approx(state, rel=1e-12)
    # one update from the negligible prior: the sample variance of the data (n - 1), as the original;
    # unbiased=False gives the population variance (n), and pools exactly over several updates
    alldata = [1.0, 2.0, 4.0, 0.5, -1.0, 3.0, 7.0]
    mu = sum(alldata) / 7
    ss = sum((x - mu) ** 2 for x in alldata)
    once = RunningMeanStd()
    once.update(np.array(alldata))
    assert rms.mean == pytest.approx(mu, rel=1e-4) and once.mean == pytest.approx(mu, rel=1e-4)
    assert once.var == pytest.approx(ss / 6, rel=1e-4)
    pop = RunningMeanStd(unbiased=False)
    pop.update(a)
    pop.update(b)
    state = hand_rms_update(0.0, 1.0, 1e-4, a.tolist(), unbiased=False)
    assert (pop.mean, pop.var, pop.count) == pytest.approx(hand_rms_update(*state, b.ravel().tolist(), unbiased=False),
                                                           rel=1e-12)
    assert pop.var == pytest.approx(ss / 7, rel=1e-4)


# ------------------------------------------------------------------------------------------------
# 9. Warm-up + cosine learning rate


def test_warmup_cosine_lr_hand_values():
    lr, lr_min, warmup, cycle = 1e-3, 1e-4, 4, 20
    cases = {
        0: 1e-4,  # warm-up starts at lr_min
        2: 1e-4 + (1e-3 - 1e-4) * 2 / 4,
        4: 1e-3,  # end of warm-up: cos(0)
        12: 1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)),  # halfway: (lr + lr_min) / 2
        16: 1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.75)),
        20: 1e-4,  # end of the cycle
        30: 1e-4,  # stays at lr_min
    }
    for it, want in cases.items():
        assert warmup_cosine_lr(it, lr, lr_min, warmup, cycle) == pytest.approx(want, rel=1e-12, abs=1e-15), it
    assert cases[12] == pytest.approx(5.5e-4)
    # no warm-up: starts at lr
    assert warmup_cosine_lr(0, lr, lr_min, 0, 10) == pytest.approx(1e-3, rel=1e-12)
    assert warmup_cosine_lr(5, lr, lr_min, 0, 10) == pytest.approx(5.5e-4, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# 10. Normalizer


def test_normalizer_round_trip_and_range():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(50, 3)) * np.array([1.0, 10.0, 0.1]) + np.array([0.0, 5.0, -2.0])
    act = rng.uniform(-2.0, 3.0, size=(50, 2))
    norm = Normalizer.from_data(obs, act)
    a = act[:7].astype(np.float32)
    back = norm.unnormalize_act(norm.normalize_act(a))
    np.testing.assert_allclose(back, a, rtol=0, atol=1e-5)
    na = norm.normalize_act(act)
    assert na.dtype == np.float32 and na.min() >= -1 - 1e-6 and na.max() <= 1 + 1e-6
    no = norm.normalize_obs(np.stack([obs.min(0), obs.max(0)]))
    np.testing.assert_allclose(no[0], -1.0, atol=1e-6)
    # max -> 2 * range / (range + 1e-6) - 1, i.e. 1 up to the 1e-6 epsilon
    rng_ = obs.max(0) - obs.min(0)
    np.testing.assert_allclose(no[1], 2 * rng_ / (rng_ + 1e-6) - 1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(no[1], 1.0, atol=1e-5)
    # a hand value: the midpoint maps to 0
    mid = (obs.min(0) + obs.max(0)) / 2
    np.testing.assert_allclose(norm.normalize_obs(mid[None])[0], 0.0, atol=1e-5)
