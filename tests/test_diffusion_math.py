"""The diffusion math of algorithms/diffusion.py against independent hand computations (method.md §1-2).

Every expected value is written out here in plain Python (float64, explicit loops, `math`), never
produced by the library. The library keeps its chain tables in float32, hence the float32-level
tolerances on everything that goes through `DenoisingChain`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from algorithms.diffusion import ChainPlan, DenoisingChain, cosine_alphas_cumprod, eval_std

torch.set_num_threads(1)

S = 0.008


# ------------------------------------------------------------------------------------------------
# Hand formulas


def hand_schedule(K: int, s: float = S) -> tuple[list[float], list[float]]:
    """(betas, alpha_bars) at t = 0..K-1 of the cosine schedule, by hand."""
    f = [math.cos(((t / K) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(K + 1)]
    betas, abars, prod = [], [], 1.0
    for t in range(K):
        beta = 1.0 - f[t + 1] / f[t]
        if beta < 0.0:
            beta = 0.0
        if beta > 0.999:
            beta = 0.999
        prod = prod * (1.0 - beta)
        betas.append(beta)
        abars.append(prod)
    return betas, abars


def hand_ddpm_tables(K: int) -> dict[str, list[float]]:
    """Per chain position i (timestep t = K-1-i): posterior variance and mean coefficients."""
    betas, abars = hand_schedule(K)
    out = {k: [] for k in ("t", "var", "c_x0", "c_xt", "sqrt_a", "sqrt_1ma")}
    for i in range(K):
        t = K - 1 - i
        a_t = abars[t]
        a_prev = abars[t - 1] if t > 0 else 1.0
        beta = betas[t]
        out["t"].append(t)
        out["var"].append(beta * (1 - a_prev) / (1 - a_t))
        out["c_x0"].append(beta * math.sqrt(a_prev) / (1 - a_t))
        out["c_xt"].append((1 - a_prev) * math.sqrt(1 - beta) / (1 - a_t))
        out["sqrt_a"].append(math.sqrt(a_t))
        out["sqrt_1ma"].append(math.sqrt(1 - a_t))
    return out


def hand_ddim_tables(K: int, n_ddim: int, eta: float) -> dict[str, list[float]]:
    """DDIM over the subsequence of the original DPPO code: t_j = j*K/S (j = 0..S-1), visited from the
    largest; a_prev is alpha_bar of the next visited timestep and 1 after t = 0."""
    _, abars = hand_schedule(K)
    step = K // n_ddim
    ts = [j * step for j in range(n_ddim)][::-1]
    out = {k: [] for k in ("t", "a_t", "a_prev", "sigma")}
    for i, t in enumerate(ts):
        a_t = abars[t]
        a_prev = abars[ts[i + 1]] if i + 1 < len(ts) else 1.0
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        out["t"].append(t)
        out["a_t"].append(a_t)
        out["a_prev"].append(a_prev)
        out["sigma"].append(sigma)
    return out


def clip1(v: float, c: float | None) -> float:
    if c is None:
        return v
    if v > c:
        return c
    if v < -c:
        return -c
    return v


def hand_ddpm_mean(tab, i: int, x: np.ndarray, eps: np.ndarray, clip: float | None = 1.0) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        xv, ev = float(x[idx]), float(eps[idx])
        x0 = (xv - tab["sqrt_1ma"][i] * ev) / tab["sqrt_a"][i]
        x0 = clip1(x0, clip)
        out[idx] = tab["c_x0"][i] * x0 + tab["c_xt"][i] * xv
    return out


def hand_ddim_mean(tab, i: int, x: np.ndarray, eps: np.ndarray, clip: float | None = 1.0) -> np.ndarray:
    a_t, a_prev, sigma = tab["a_t"][i], tab["a_prev"][i], tab["sigma"][i]
    out = np.empty(x.shape, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        xv, ev = float(x[idx]), float(eps[idx])
        x0 = (xv - math.sqrt(1 - a_t) * ev) / math.sqrt(a_t)
        if clip is not None:
            x0 = clip1(x0, clip)
            ev = (xv - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)  # eps consistent with the clipped x0
        out[idx] = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * ev
    return out


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# 1. Cosine schedule


@pytest.mark.parametrize("K", [20, 5])
def test_cosine_alphas_cumprod_matches_hand_formula(K):
    _, abars = hand_schedule(K)
    got = cosine_alphas_cumprod(K)
    assert got.dtype == torch.float64 and got.shape == (K,)
    np.testing.assert_allclose(got.numpy(), np.array(abars), rtol=1e-12, atol=0)


@pytest.mark.parametrize("K", [20, 5])
def test_cosine_schedule_last_beta_is_clipped_at_0999(K):
    # f(K) = cos(pi/2)^2 ~ 0, so the unclipped last beta is ~1: it must be clipped to 0.999.
    f_last = math.cos(math.pi / 2) ** 2
    assert f_last < 1e-30
    got = cosine_alphas_cumprod(K).numpy()
    assert got[-1] / got[-2] == pytest.approx(1 - 0.999, rel=1e-9)
    assert np.all(np.diff(got) < 0) and 0 < got[-1] < got[0] < 1


def test_cosine_schedule_hand_numbers_k20():
    # a few values written out independently of hand_schedule
    s, K = 0.008, 20

    def f(t):
        return math.cos((t / K + s) / (1 + s) * math.pi / 2) ** 2

    got = cosine_alphas_cumprod(K).numpy()
    # without clipping alpha_bar_t = f(t+1)/f(0) (telescoping product)
    for t in (0, 1, 9, 17, 18):
        assert got[t] == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert got[19] == pytest.approx(f(19) / f(0) * 0.001, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# 2. DDPM posterior tables and mean


@pytest.mark.parametrize("K", [20, 5])
def test_ddpm_chain_tables_match_posterior(K):
    tab = hand_ddpm_tables(K)
    chain = DenoisingChain(ChainPlan(K))
    assert len(chain) == K
    assert chain.timesteps.tolist() == tab["t"] == list(range(K - 1, -1, -1))
    np.testing.assert_allclose(f64(chain.c_x0), tab["c_x0"], rtol=2e-7, atol=1e-9)
    np.testing.assert_allclose(f64(chain.c_xt), tab["c_xt"], rtol=2e-7, atol=1e-9)
    np.testing.assert_allclose(f64(chain.c_eps), np.zeros(K), rtol=0, atol=0)
    np.testing.assert_allclose(f64(chain.std[:-1]) ** 2, tab["var"][:-1], rtol=5e-7, atol=0)
    # last step (t = 0): posterior variance is exactly 0, log-variance clipped at 1e-20
    assert tab["var"][-1] == 0.0
    expected_last = np.float32(math.exp(0.5 * math.log(1e-20)))
    assert chain.std[-1].item() == pytest.approx(float(expected_last), rel=1e-6)
    # final step's mean is exactly the (clipped) x0: c_x0 = 1, c_xt = 0
    assert chain.c_x0[-1].item() == pytest.approx(1.0, abs=1e-7)
    assert chain.c_xt[-1].item() == 0.0
    np.testing.assert_allclose(f64(chain.sqrt_alpha), tab["sqrt_a"], rtol=2e-7, atol=0)
    np.testing.assert_allclose(f64(chain.sqrt_one_minus_alpha), tab["sqrt_1ma"], rtol=2e-7, atol=0)


@pytest.mark.parametrize("K", [20, 5])
def test_ddpm_mean_matches_hand_formula_random_inputs(K):
    """Random x, eps ~ N(0, 1): x0 is clipped at many entries of the noisy positions."""
    tab = hand_ddpm_tables(K)
    chain = DenoisingChain(ChainPlan(K))
    x, eps = randn((3, 4, 2), 0), randn((3, 4, 2), 1)
    n_clipped = 0
    for i in range(K):
        expected = hand_ddpm_mean(tab, i, f64(x), f64(eps))
        got = chain.mean(torch.tensor(i), x, eps)
        np.testing.assert_allclose(f64(got), expected, rtol=1e-5, atol=2e-6)
        x0 = (f64(x) - tab["sqrt_1ma"][i] * f64(eps)) / tab["sqrt_a"][i]
        n_clipped += int((np.abs(x0) > 1).sum())
    assert n_clipped > 0  # clipping was exercised


def test_ddpm_mean_clipping_active_and_inactive():
    K, i = 20, 8  # t = 11, a moderate noise level
    tab = hand_ddpm_tables(K)
    a, b = tab["sqrt_a"][i], tab["sqrt_1ma"][i]
    x0_true = torch.tensor([[[0.3, -0.7], [2.5, -3.0]]])  # two entries inside [-1, 1], two outside
    eps = randn((1, 2, 2), 3)
    x = (a * x0_true.double() + b * eps.double()).float()
    chain = DenoisingChain(ChainPlan(K))
    got = f64(chain.mean(torch.tensor(i), x, eps))
    expected = hand_ddpm_mean(tab, i, f64(x), f64(eps))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # by hand, entry by entry: x0 clipped to +1 / -1 where it was 2.5 / -3
    xv = f64(x)[0]
    for (r, c), x0_used in {(0, 0): 0.3, (0, 1): -0.7, (1, 0): 1.0, (1, 1): -1.0}.items():
        want = tab["c_x0"][i] * x0_used + tab["c_xt"][i] * xv[r, c]
        assert got[0, r, c] == pytest.approx(want, abs=2e-6)
    # the unclipped chain gives a different mean exactly where the clip is active
    unclipped = f64(DenoisingChain(ChainPlan(K), denoised_clip=None).mean(torch.tensor(i), x, eps))
    np.testing.assert_allclose(unclipped, hand_ddpm_mean(tab, i, f64(x), f64(eps), clip=None),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(unclipped[0, 0], got[0, 0], atol=1e-6)
    assert np.all(np.abs(unclipped[0, 1] - got[0, 1]) > 1e-2)


def test_ddpm_mean_per_sample_positions():
    """A (B,) tensor of positions indexes one table row per sample (as DPPO.update does)."""
    K = 20
    tab = hand_ddpm_tables(K)
    chain = DenoisingChain(ChainPlan(K))
    pos = torch.tensor([0, 7, 18, 19])
    x, eps = randn((4, 3, 2), 4), randn((4, 3, 2), 5)
    got = f64(chain.mean(pos, x, eps))
    for j, i in enumerate(pos.tolist()):
        expected = hand_ddpm_mean(tab, i, f64(x[j]), f64(eps[j]))
        np.testing.assert_allclose(got[j], expected, rtol=1e-5, atol=2e-6)


# ------------------------------------------------------------------------------------------------
# 3. DDIM chain


@pytest.mark.parametrize("eta", [1.0, 0.0, 0.5])
def test_ddim_chain_tables(eta):
    K, n = 20, 5
    tab = hand_ddim_tables(K, n, eta)
    chain = DenoisingChain(ChainPlan(K, ddim_steps=n, ddim_eta=eta))
    # the code visits arange(0, K, K // S) flipped (as the original DPPO), i.e. 16, 12, 8, 4, 0
    assert chain.timesteps.tolist() == tab["t"] == [16, 12, 8, 4, 0]
    np.testing.assert_allclose(f64(chain.std), tab["sigma"], rtol=5e-7, atol=1e-9)
    np.testing.assert_allclose(f64(chain.c_x0), [math.sqrt(a) for a in tab["a_prev"]], rtol=2e-7, atol=0)
    c_eps = [math.sqrt(1 - ap - sg**2) for ap, sg in zip(tab["a_prev"], tab["sigma"])]
    np.testing.assert_allclose(f64(chain.c_eps), c_eps, rtol=5e-7, atol=1e-9)
    np.testing.assert_allclose(f64(chain.c_xt), np.zeros(n), atol=0)
    np.testing.assert_allclose(f64(chain.sqrt_alpha), [math.sqrt(a) for a in tab["a_t"]], rtol=2e-7)
    # last step: a_prev = 1, so sigma = 0 for any eta and the mean is the clipped x0
    assert tab["a_prev"][-1] == 1.0 and chain.std[-1].item() == 0.0
    if eta == 0.0:
        assert torch.all(chain.std == 0)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_ddim_mean_matches_hand_formula(eta):
    K, n = 20, 5
    tab = hand_ddim_tables(K, n, eta)
    chain = DenoisingChain(ChainPlan(K, ddim_steps=n, ddim_eta=eta))
    x, eps = randn((3, 4, 2), 10), randn((3, 4, 2), 11)
    n_clipped = 0
    for i in range(n):
        got = f64(chain.mean(torch.tensor(i), x, eps))
        np.testing.assert_allclose(got, hand_ddim_mean(tab, i, f64(x), f64(eps)), rtol=1e-5, atol=2e-6)
        x0 = (f64(x) - math.sqrt(1 - tab["a_t"][i]) * f64(eps)) / math.sqrt(tab["a_t"][i])
        n_clipped += int((np.abs(x0) > 1).sum())
    assert n_clipped > 0


def test_ddim_mean_recomputes_eps_from_clipped_x0():
    K, n, i = 20, 5, 1  # t = 12
    tab = hand_ddim_tables(K, n, 1.0)
    a_t = tab["a_t"][i]
    x0_true = torch.tensor([[[0.5, 2.0]]])
    eps = torch.tensor([[[0.3, -0.4]]])
    x = (math.sqrt(a_t) * x0_true.double() + math.sqrt(1 - a_t) * eps.double()).float()
    chain = DenoisingChain(ChainPlan(K, n, 1.0))
    got = f64(chain.mean(torch.tensor(i), x, eps))[0, 0]
    a_prev, sigma = tab["a_prev"][i], tab["sigma"][i]
    xv = f64(x)[0, 0]
    # entry 0: no clipping, eps unchanged
    want0 = math.sqrt(a_prev) * 0.5 + math.sqrt(1 - a_prev - sigma**2) * 0.3
    # entry 1: x0 = 2 clipped to 1, eps recomputed as (x - sqrt(a_t) * 1) / sqrt(1 - a_t)
    eps1 = (xv[1] - math.sqrt(a_t) * 1.0) / math.sqrt(1 - a_t)
    want1 = math.sqrt(a_prev) * 1.0 + math.sqrt(1 - a_prev - sigma**2) * eps1
    assert got[0] == pytest.approx(want0, abs=2e-6)
    assert got[1] == pytest.approx(want1, abs=2e-6)
    # keeping the original eps (-0.4) would have given a clearly different value
    stale = math.sqrt(a_prev) * 1.0 + math.sqrt(1 - a_prev - sigma**2) * -0.4
    assert abs(stale - want1) > 0.1


def test_ddim_steps_must_divide_k():
    with pytest.raises(ValueError):
        DenoisingChain(ChainPlan(20, ddim_steps=3))


# ------------------------------------------------------------------------------------------------
# Evaluation noise


def test_eval_std_ddpm_and_ddim():
    K = 20
    tab = hand_ddpm_tables(K)
    ddpm = DenoisingChain(ChainPlan(K))
    for i in range(K - 1):
        assert eval_std(ddpm, i).item() == pytest.approx(max(math.sqrt(tab["var"][i]), 1e-3), rel=1e-6)
    assert eval_std(ddpm, K - 1).item() == 0.0
    ddim = DenoisingChain(ChainPlan(K, 5, 1.0))
    for i in range(5):
        assert eval_std(ddim, i).item() == 0.0


def test_initial_noise_is_unclipped_unless_asked():
    """The original draws x_K ~ N(0, I) unclipped and clips only the per-step draws; `initial_clip` (the
    algorithms' `clip_initial_noise`) clips x_K too."""
    from algorithms.diffusion import sample_chain
    from algorithms.networks import DenoisingMLP

    net = DenoisingMLP(2, 1, 2, (8,), 4, "ReLU", False)
    chain = DenoisingChain(ChainPlan(2))
    obs = torch.zeros(20_000, 2)

    def first_x(**kw):
        seen = {}
        sample_chain(net, chain, obs, randn_clip=3.0, generator=torch.Generator().manual_seed(0),
                     on_step=lambda i, x, mean, x_next: seen.setdefault(i, x), **kw)
        return seen[0]

    free, clipped = first_x(), first_x(initial_clip=3.0)
    assert free.abs().max() > 3.0 and clipped.abs().max() <= 3.0
    assert torch.equal(free.clamp(-3, 3), clipped)  # the same draws, clipped
