"""The diffusion policy shared by DPPO and every diffusion baseline.

DDPM (Ho et al. 2020) with the cosine schedule (Nichol & Dhariwal 2021), epsilon-prediction, and the
reconstructed x0 clipped to +-`denoised_clip`. A `DenoisingChain` turns the schedule into per-position
coefficients of the reverse chain (DDPM over all K steps, or DDIM over a subsequence), so samplers and
log-probability code index one table with a (possibly per-sample) chain position.

Shapes: x is an action chunk (B, Tp, Da) in normalised action space; obs is (B, obs_dim).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from algorithms.networks import DenoisingMLP


def cosine_alphas_cumprod(n_steps: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar at t = 0..K-1 of the cosine schedule, with betas clipped to [0, 0.999] as in DPPO."""
    x = torch.linspace(0, n_steps, n_steps + 1, dtype=torch.float64) / n_steps
    f = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
    return torch.cumprod(1 - betas, 0)


@dataclass(frozen=True)
class ChainPlan:
    """Which timesteps the reverse chain visits and with which DDIM eta (None = ancestral DDPM)."""

    n_train_steps: int  # K of pre-training
    ddim_steps: int | None = None
    ddim_eta: float = 1.0


class DenoisingChain(nn.Module):
    """Per-position coefficients of x_{k-1} = mean(x_k, eps) + std * z, positions 0..n-1 from noisiest.

    DDPM position i visits timestep t = K-1-i; the posterior q(x_{t-1} | x_t, x0) gives
    mean = c_x0 * x0 + c_xt * x_t with x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), and
    var = beta_t (1 - a_{t-1}) / (1 - a_t). DDIM visits t = K - K/S, K - 2K/S, ..., 0 (as DPPO) with
    mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps, sigma = eta sqrt((1-a_prev)/(1-a_t) (1-a_t/a_prev)).
    """

    def __init__(self, plan: ChainPlan, denoised_clip: float | None = 1.0):
        super().__init__()
        self.plan, self.denoised_clip = plan, denoised_clip
        ac = cosine_alphas_cumprod(plan.n_train_steps)
        if plan.ddim_steps is None:
            t = torch.arange(plan.n_train_steps - 1, -1, -1)
        else:
            if plan.n_train_steps % plan.ddim_steps:
                raise ValueError("ddim_steps must divide the number of denoising steps")
            t = torch.arange(0, plan.n_train_steps, plan.n_train_steps // plan.ddim_steps).flip(0)
        a_t = ac[t]
        if plan.ddim_steps is None:
            a_prev = torch.where(t > 0, ac[(t - 1).clamp(min=0)], torch.ones_like(a_t))
            beta = 1 - a_t / a_prev
            var = beta * (1 - a_prev) / (1 - a_t)
            c_x0 = beta * a_prev.sqrt() / (1 - a_t)
            c_xt = (1 - a_prev) * (1 - beta).sqrt() / (1 - a_t)
            c_eps = torch.zeros_like(a_t)
            # log-variance clipped at 1e-20 as in DPPO: the last step's variance is exactly 0
            std = torch.exp(0.5 * torch.log(var.clamp(min=1e-20)))
        else:
            a_prev = torch.cat([ac[t[1:]], torch.ones(1, dtype=ac.dtype)])
            sigma = plan.ddim_eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
            c_x0 = a_prev.sqrt()
            c_xt = torch.zeros_like(a_t)
            c_eps = (1 - a_prev - sigma**2).clamp(min=0).sqrt()
            std = sigma
        f32 = torch.float32
        self.register_buffer("timesteps", t)
        self.register_buffer("sqrt_alpha", a_t.sqrt().to(f32))
        self.register_buffer("sqrt_one_minus_alpha", (1 - a_t).sqrt().to(f32))
        self.register_buffer("c_x0", c_x0.to(f32))
        self.register_buffer("c_xt", c_xt.to(f32))
        self.register_buffer("c_eps", c_eps.to(f32))
        self.register_buffer("std", std.to(f32))

    def __len__(self) -> int:
        return len(self.timesteps)

    def mean(self, pos: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Mean of x_{next} given x at chain position(s) `pos` (int tensor, shape () or (B,))."""
        shape = (-1,) + (1,) * (x.dim() - 1)

        def coef(buf):
            return buf[pos].reshape(shape) if pos.dim() else buf[pos]

        x0 = (x - coef(self.sqrt_one_minus_alpha) * eps) / coef(self.sqrt_alpha)
        if self.denoised_clip is not None:
            x0 = x0.clamp(-self.denoised_clip, self.denoised_clip)
            if self.plan.ddim_steps is not None:  # keep eps consistent with the clipped x0
                eps = (x - coef(self.sqrt_alpha) * x0) / coef(self.sqrt_one_minus_alpha)
        return coef(self.c_x0) * x0 + coef(self.c_xt) * x + coef(self.c_eps) * eps


class NoiseFeed:
    """Stands in for a `torch.Generator` in `clipped_randn`: hands out the given standard-normal draws
    (`noise[0]`, `noise[1]`, ... in the order they are asked for) instead of drawing them, so a traced
    sampler takes its noise as an input (bench/export.py). `noise` None records the shapes asked for,
    drawing fresh ones."""

    def __init__(self, noise: torch.Tensor | None = None):
        self.noise, self.shapes = noise, []

    def draw(self, shape, device) -> torch.Tensor:
        i = len(self.shapes)
        self.shapes.append(tuple(shape))
        if self.noise is None:
            return torch.randn(shape, device=device)
        return self.noise[i].clone()  # a copy: the caller clamps it in place


def clipped_randn(shape, clip: float | None, generator: torch.Generator | NoiseFeed | None, device) -> torch.Tensor:
    if isinstance(generator, NoiseFeed):
        z = generator.draw(shape, device)
    else:
        z = torch.randn(shape, generator=generator, device=device)
    return z.clamp_(-clip, clip) if clip is not None else z


class DiffusionPolicy(nn.Module):
    """The pre-trained diffusion policy: an epsilon network plus its training loss and samplers."""

    def __init__(self, network: DenoisingMLP, n_steps: int, denoised_clip: float | None = 1.0):
        super().__init__()
        self.network, self.n_steps = network, n_steps
        ac = cosine_alphas_cumprod(n_steps).float()
        self.register_buffer("sqrt_ac", ac.sqrt())
        self.register_buffer("sqrt_one_minus_ac", (1 - ac).sqrt())
        self.denoised_clip = denoised_clip
        self.ddpm = DenoisingChain(ChainPlan(n_steps), denoised_clip)

    @property
    def horizon_steps(self) -> int:
        return self.network.horizon_steps

    @property
    def act_dim(self) -> int:
        return self.network.act_dim

    def loss(self, x0: torch.Tensor, obs: torch.Tensor, generator: torch.Generator | None = None,
             reduction: str = "mean"):
        """Denoising MSE: || eps - eps_theta(sqrt(a_t) x0 + sqrt(1-a_t) eps, t, s) ||^2, t ~ U{0..K-1}.
        `reduction="none"` gives one value per sample (the mean over its chunk), for weighted regression."""
        b = x0.shape[0]
        t = torch.randint(0, self.n_steps, (b,), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        xt = self.sqrt_ac[t].view(b, 1, 1) * x0 + self.sqrt_one_minus_ac[t].view(b, 1, 1) * eps
        if reduction == "none":
            return F.mse_loss(self.network(xt, t, obs), eps, reduction="none").mean(dim=(1, 2))
        return F.mse_loss(self.network(xt, t, obs), eps)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, chain: DenoisingChain | None = None, min_std: float = 0.0,
               deterministic: bool = False, randn_clip: float | None = 3.0,
               generator: torch.Generator | None = None, initial_clip: float | None = None) -> torch.Tensor:
        """Run the whole reverse chain with this network (used for pre-trained evaluation and BC)."""
        return sample_chain(self.network, chain or self.ddpm, obs, min_std, randn_clip, generator,
                            deterministic=deterministic, initial_clip=initial_clip)


def sample_chain(network: nn.Module | Callable[[int], nn.Module], chain: DenoisingChain, obs: torch.Tensor,
                 min_std: float = 0.0, randn_clip: float | None = 3.0, generator: torch.Generator | None = None,
                 keep_grad: bool = False, deterministic: bool = False,
                 on_step: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
                 initial_clip: float | None = None) -> torch.Tensor:
    """Run every step of `chain` (B, Tp, Da); `network` is the epsilon network, or a function of the chain
    position giving the one for that step (DPPO: frozen, then fine-tuned). Stochastic steps draw
    x_next = mean + max(std, `min_std`) z and tell `on_step(i, x, mean, x_next)`; `deterministic` uses
    DPPO's evaluation noise (`eval_std`). z is clipped to +-`randn_clip`; the initial x_K ~ N(0, I) to
    +-`initial_clip` (None: unclipped, as the original). `keep_grad` keeps the autograd graph through all
    steps (the noise itself carries no gradient)."""
    network_at = network if not isinstance(network, nn.Module) else (lambda i: network)
    with torch.set_grad_enabled(keep_grad and torch.is_grad_enabled()):
        b, dev, first = obs.shape[0], obs.device, network_at(0)
        x = clipped_randn((b, first.horizon_steps, first.act_dim), initial_clip, generator, dev)
        for i in range(len(chain)):
            eps = network_at(i)(x, chain.timesteps[i].expand(b), obs)
            mean = chain.mean(torch.tensor(i, device=dev), x, eps)
            if deterministic:
                std = eval_std(chain, i)
                x = mean + std * clipped_randn(x.shape, randn_clip, generator, dev) if std > 0 else mean
                continue
            # always drawn, even where the std is 0 (a DDIM chain's last step with min_std 0), so the
            # number of draws per chunk does not depend on the schedule
            x_next = mean + chain.std[i].clamp(min=min_std) * clipped_randn(x.shape, randn_clip, generator, dev)
            if on_step is not None:
                on_step(i, x, mean, x_next)
            x = x_next
        return x


def initial_noise_clip(cfg) -> float | None:
    """The `initial_clip` of `sample_chain` for an algorithm config with `randn_clip` and `clip_initial_noise`."""
    return cfg.randn_clip if cfg.clip_initial_noise else None


def eval_std(chain: DenoisingChain, i: int) -> torch.Tensor:
    """Deterministic evaluation as in DPPO: DDIM with eta = 0 is noise-free; DDPM uses std 0 at the last
    step and a 1e-3 floor elsewhere (near-deterministic, as the original evaluation)."""
    if chain.plan.ddim_steps is not None or i == len(chain) - 1:
        return torch.zeros((), device=chain.std.device)
    return chain.std[i].clamp(min=1e-3)
