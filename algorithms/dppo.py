"""DPPO: Diffusion Policy Policy Optimization (Ren et al., ICLR 2025).

The denoising chain is an inner MDP whose actions are the denoised samples x_{k-1}; each step is the
Gaussian N(mu_theta(x_k, k, s), sigma_k^2). A frozen copy of the pre-trained network runs the first
K - K' steps, a fine-tuned copy (`actor_ft`) the last K'. All inner steps of a chunk share the chunk's
GAE advantage, discounted by gamma_denoising^(K'-1-k), and PPO's clipped objective is applied to every
(env step, denoising step) pair with a clip that grows towards the final step. method.md sections 2-3.

Deviations from the original code are options with the paper's value as default: `logprob_reduction`
("mean" as the paper; "sum" is the exact chunk log-likelihood). There is no entropy bonus: sigma_k is a
fixed schedule, so the chain's entropy has no gradient.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from algorithms.base import ActorCriticConfig, ActOutput, AlgoContext
from algorithms.diffusion import (
    ChainPlan,
    DenoisingChain,
    DiffusionPolicy,
    initial_noise_clip,
    sample_chain,
)
from algorithms.ppo import (
    PolicyLoss,
    PPOAlgorithm,
    clipped_surrogate,
    denoising_clip_schedule,
)
from algorithms.registry import register_algorithm

LOG_2PI = float(np.log(2 * np.pi))


@dataclass
class DPPOConfig(ActorCriticConfig):
    ft_denoising_steps: int = 10
    """K': the last K' chain steps are fine-tuned (K' counts DDIM steps when use_ddim)"""
    use_ddim: bool = False
    ddim_steps: int = 5
    """DDIM steps of the chain when use_ddim (eta = 1 while fine-tuning, 0 at evaluation)"""
    min_sampling_std: float = 0.1
    min_logprob_std: float = 0.1
    randn_clip: float = 3.0
    clip_initial_noise: bool = False
    """also clip the chain's initial noise x_K to +-randn_clip (the original clips only the per-step draws)"""
    logprob_min: float = -5.0
    logprob_max: float = 2.0
    logprob_reduction: Literal["mean", "sum"] = "mean"
    """over the executed (Ta, Da) entries; the paper averages"""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    gamma_denoising: float = 0.99
    clip: float = 0.01
    clip_base: float = 0.01
    clip_rate: float = 3.0
    norm_adv: bool = True
    reward_scale_running: bool = True
    reward_clip: float = 10.0
    reward_var_unbiased: bool = True
    """the running return variance divides by count - 1, as the original's RunningMeanStd; false: by count"""
    n_critic_warmup_itr: int = 0
    update_epochs: int = 5
    batch_size: int = 50_000
    """(env step, denoising step) pairs per minibatch"""
    vf_coef: float = 0.5
    clip_vloss: float | None = None
    target_kl: float | None = None
    bc_coef: float = 0.0
    """BC regulariser: log-likelihood of the frozen policy's chains under actor_ft (0 = off)"""


@register_algorithm("dppo")
class DPPO(PPOAlgorithm):
    Config = DPPOConfig
    policy_kind = "diffusion"
    extra_stats = ("bc_loss",)

    def __init__(self, cfg: DPPOConfig, ctx: AlgoContext, pretrained: DiffusionPolicy):
        super().__init__(cfg, ctx, pretrained)
        dev = ctx.device
        self.actor = pretrained.network.to(dev).requires_grad_(False).eval()  # frozen, first K - K' steps
        self.actor_ft = copy.deepcopy(self.actor).requires_grad_(True).train()
        K = pretrained.n_steps
        plan = ChainPlan(K, cfg.ddim_steps if cfg.use_ddim else None, ddim_eta=1.0)
        self.chain = DenoisingChain(plan, pretrained.denoised_clip).to(dev)
        # DDIM evaluates with eta = 0 (its mean differs from eta = 1); DDPM evaluates on the same chain.
        self.eval_chain = (DenoisingChain(ChainPlan(K, cfg.ddim_steps, 0.0), pretrained.denoised_clip).to(dev)
                           if cfg.use_ddim else self.chain)
        if not 1 <= cfg.ft_denoising_steps <= len(self.chain):
            raise ValueError(f"ft_denoising_steps must be in 1..{len(self.chain)}")
        self.n_ft = self.samples_per_step = cfg.ft_denoising_steps
        self.first_ft = len(self.chain) - self.n_ft
        self.build_critic()

    # ----------------------------------------------------------------------------------------------
    # Acting

    def _step_logprob(self, mean: torch.Tensor, std: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        """Reduced log-density of x_next under N(mean, std^2): element-wise, clamped, executed actions only."""
        z = (x_next - mean) / std
        logp = -0.5 * z**2 - torch.log(std) - 0.5 * LOG_2PI
        logp = logp.clamp(self.cfg.logprob_min, self.cfg.logprob_max)[:, : self.ctx.act_steps]
        return logp.mean(dim=(1, 2)) if self.cfg.logprob_reduction == "mean" else logp.sum(dim=(1, 2))

    def _pos_std(self, pos: torch.Tensor, floor: float) -> torch.Tensor:
        return self.chain.std[pos].clamp(min=floor).view(-1, 1, 1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None,
            use_base: bool = False) -> ActOutput:
        """Sample a chunk. Stores the fine-tuned part of the chain and its old log-probs when stochastic.
        `use_base` runs the frozen network for every step (the pre-trained policy, used by the BC term)."""
        cfg = self.cfg
        chain = self.eval_chain if deterministic else self.chain
        xs, logps = [], []

        def record_ft_step(i, x, mean, x_next):
            if i >= self.first_ft:
                xs.append(x)
                logps.append(self._step_logprob(mean, chain.std[i].clamp(min=cfg.min_logprob_std), x_next))

        def network_at(i):
            return self.actor_ft if (i >= self.first_ft and not use_base) else self.actor

        x = sample_chain(network_at, chain, obs, cfg.min_sampling_std, cfg.randn_clip, generator,
                         deterministic=deterministic, on_step=record_ft_step, initial_clip=initial_noise_clip(cfg))
        if deterministic:
            return ActOutput(x)
        xs.append(x)
        return ActOutput(x, {"chains": torch.stack(xs, 1), "logprobs": torch.stack(logps, 1)})

    # ----------------------------------------------------------------------------------------------
    # Update

    def policy_loss(self, data: dict[str, torch.Tensor], idx: torch.Tensor, adv: torch.Tensor,
                    update_actor: bool) -> PolicyLoss:
        cfg = self.cfg
        b, k = idx // self.n_ft, idx % self.n_ft
        pos = k + self.first_ft
        chains = data["chains"]  # (B, K'+1, Tp, Da)
        x_k, x_next, obs_b = chains[b, k], chains[b, k + 1], data["obs"][b]
        mean = self.chain.mean(pos, x_k, self.actor_ft(x_k, self.chain.timesteps[pos], obs_b))
        logp = self._step_logprob(mean, self._pos_std(pos, cfg.min_logprob_std), x_next)
        a = adv[b]
        if cfg.norm_adv:
            a = (a - a.mean()) / (a.std() + 1e-8)
        a = a * cfg.gamma_denoising ** (self.n_ft - 1 - k).float()
        log_ratio = logp - data["logprobs"][b, k]
        ratio = log_ratio.exp()
        clip_k = denoising_clip_schedule(k, self.n_ft, cfg.clip, cfg.clip_base, cfg.clip_rate)
        pg_loss = clipped_surrogate(a, ratio, clip_k).mean()
        out = PolicyLoss(b, pg_loss, pg_loss, ratio, log_ratio, clip_k)
        if cfg.bc_coef > 0 and update_actor:
            bc_loss = self._bc_loss(obs_b)
            out.regulariser = cfg.bc_coef * bc_loss
            out.stats["bc_loss"] = bc_loss.item()
        return out

    def _bc_loss(self, obs_b: torch.Tensor) -> torch.Tensor:
        """-log-likelihood under actor_ft of chains sampled by the frozen pre-trained network."""
        base = self.act(obs_b, use_base=True).extras["chains"]  # (B, K'+1, Tp, Da)
        b = obs_b.shape[0]
        total = 0.0
        for j in range(self.n_ft):
            pos = torch.full((b,), self.first_ft + j, device=obs_b.device)
            mean = self.chain.mean(pos, base[:, j], self.actor_ft(base[:, j], self.chain.timesteps[pos], obs_b))
            total = total + self._step_logprob(mean, self._pos_std(pos, self.cfg.min_logprob_std), base[:, j + 1]).mean()
        return -total / self.n_ft
