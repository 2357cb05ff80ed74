"""QSM: Q-Score Matching (Psenka et al. 2024), as in the DPPO baselines.

Off-policy. Every iteration the rollout's transitions go into a FIFO replay buffer, then
`replay_ratio * new transitions / batch_size` gradient steps each do, on one uniform batch
(method.md section 5):

1. critic: twin Q(s, a) on the executed actions of the chunk, clipped double-Q TD target
   reward_scale * r + gamma * (1 - terminated) * min(Q1', Q2')(s', a'), a' ~ the current actor (with
   the sampling noise), Q' the Polyak-averaged target critic;
2. actor (score matching): noise the buffer action to x_t = sqrt(a_t) a + sqrt(1 - a_t) eps with
   t ~ U{0..K-1}, and regress the negated noise prediction onto the scaled action-gradient of Q at the
   *noisy* action: loss = mean (-eps_theta(x_t, t, s) - alpha * grad_x Q(s, x_t))^2, where grad_x Q is the
   mean of the two critics' gradients (the original code's choice; the paper's algorithm box evaluates Q
   at the final action, the code at x_t). The sign: the denoising mean moves against eps_theta, so
   -eps_theta is the direction a denoising step moves x_t; it is matched to alpha times Q's score.
3. Polyak update (`target_tau`) of the target critic. QSM keeps no target actor.

The actor is not stepped during the first `n_critic_warmup_itr` iterations.

Differences from the original code, with the original as default where it is a choice:
- `buffer_size` counts vector-env steps as the original (each holds n_envs transitions), so the ring
  holds buffer_size * n_envs transitions.
- The buffer stores the whole predicted chunk (Tp actions); Q sees the executed first Ta of them, as the
  original critic, and the score-matching loss covers those Ta actions (Q has no gradient for the
  others). The original stored only the executed actions and required Tp == Ta, which holds in every
  original config, so there the two agree.
- Rewards are stored raw and scaled by `reward_scale` in the TD target (the original stored them scaled).
- The critic MLP is not residual by default, as the original's in effect (`critic_residual`, see
  OffPolicyConfig).
- Time-outs bootstrap from the true final observation, terminations do not (method.md section 6).
- Options not in the original, off by default: `q_grad_at="denoised"` takes grad Q at the network's
  (detached, clipped) reconstruction x0_hat of x_t instead of at x_t. Why it exists: with a peaked Q (a
  narrow reward, as on bimodal_bandit) grad Q vanishes at the noisy x_t of most samples and noise levels, so
  the target there is 0, the denoiser is erased (x0_hat = x_t / sqrt(a_t), clipped) and the chain never
  reaches the peaks; even with the true reward as Q the original target does not improve the bandit policy.
  At x0_hat the target is Q's slope at the action the chain is heading for at every noise level, and the fit
  becomes the self-consistent -eps_theta = alpha * grad Q(x0_hat(eps_theta)), which draws reconstructions
  into Q's peaks. The small bimodal_bandit preset turns it on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from algorithms.base import ActOutput, AlgoContext, optimiser_step
from algorithms.diffusion import DiffusionPolicy, initial_noise_clip
from algorithms.offpolicy import (
    OffPolicyAlgorithm,
    OffPolicyConfig,
    ReplayBuffer,
    TwinQ,
    soft_update,
)
from algorithms.registry import register_algorithm


@dataclass
class QSMConfig(OffPolicyConfig):
    """The shared replay settings (algorithms/offpolicy.py) at the original Gym QSM values, plus QSM's own."""

    buffer_size: int = 25_000
    """replay buffer capacity in vector-env steps of n_envs transitions each (as the original); FIFO"""
    q_grad_coeff: float = 10.0
    """alpha: -eps_theta(x_t, t, s) is regressed onto alpha * grad_x Q(s, x_t) (or at x0_hat: `q_grad_at`)"""
    q_grad_at: Literal["noisy", "denoised"] = "noisy"
    """where grad_x Q is evaluated for the score-matching target: "noisy" at x_t (the original code);
    "denoised" at the network's own reconstruction x0_hat = (x_t - sqrt(1 - a_t) eps_theta) / sqrt(a_t),
    detached and clipped to +-denoised_clip as the sampler clips it, so the target is Q's slope at the action
    the chain is heading for (the paper's algorithm box takes grad Q at the action, not at a noisy one). At
    x_t a peaked Q is flat for most noise levels, the target is 0 there and the denoiser is erased; at x0_hat
    the fit is a fixed point -eps_theta = alpha * grad Q(x0_hat(eps_theta)), which pulls reconstructions into
    Q's peaks (not in the original; see the module notes)"""


def q_score_target(critic, obs: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * (grad_x Q1(s, x) + grad_x Q2(s, x)) / 2, detached; `critic(obs, x) -> (q1, q2)`, and its
    parameters get no gradient."""
    x = x.detach().requires_grad_(True)
    q1, q2 = critic(obs, x)
    (grad,) = torch.autograd.grad((q1 + q2).sum() / 2, x)
    return alpha * grad


def q_score_matching_loss(eps_pred: torch.Tensor, critic, x: torch.Tensor, obs: torch.Tensor, alpha: float,
                          act_steps: int | None = None) -> torch.Tensor:
    """MSE between -eps_pred = -eps_theta(x_t, t, s) and alpha * grad_x Q(s, x) over the first `act_steps`
    actions of the chunks (the ones Q sees; None: all), averaged over every entry; x is where Q's gradient is
    taken: the noisy x_t itself (the original) or its denoised estimate (`denoised_estimate`)."""
    x_exec = x[:, :act_steps]
    return F.mse_loss(-eps_pred[:, :act_steps], q_score_target(critic, obs, x_exec, alpha))


def denoised_estimate(x_t: torch.Tensor, eps: torch.Tensor, sqrt_ac: torch.Tensor, sqrt_one_minus_ac: torch.Tensor,
                      clip: float | None) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), clipped to +-clip (None: unclipped) as the sampler does;
    sqrt_ac and sqrt_one_minus_ac broadcast against x_t (one value per sample: shape (B, 1, 1))."""
    x0 = (x_t - sqrt_one_minus_ac * eps) / sqrt_ac
    return x0.clamp(-clip, clip) if clip is not None else x0


@register_algorithm("qsm")
class QSM(OffPolicyAlgorithm):
    Config = QSMConfig
    policy_kind = "diffusion"
    state_parts = ("actor", "critic", "critic_target", "actor_opt", "critic_opt", "buffer")

    def __init__(self, cfg: QSMConfig, ctx: AlgoContext, pretrained: DiffusionPolicy):
        super().__init__(cfg, ctx, pretrained)
        dev = ctx.device
        self.actor = copy.deepcopy(pretrained).to(dev).requires_grad_(True).train()
        self.critic = TwinQ(ctx.obs_dim, (ctx.act_steps, ctx.act_dim), cfg.critic_hidden, cfg.critic_activation,
                            cfg.critic_residual).to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.AdamW(self.actor.parameters(), lr=cfg.actor_lr,
                                           weight_decay=cfg.actor_weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr,
                                            weight_decay=cfg.critic_weight_decay)
        self.buffer = ReplayBuffer(cfg.buffer_size * ctx.n_envs, ctx.obs_dim, (ctx.horizon_steps, ctx.act_dim), dev)

    def _sample(self, obs: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.actor.sample(obs, min_std=self.cfg.min_sampling_std, deterministic=deterministic,
                                 randn_clip=self.cfg.randn_clip, generator=generator,
                                 initial_clip=initial_noise_clip(self.cfg))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        actions = self._sample(obs, deterministic, generator)
        return ActOutput(actions, {} if deterministic else {"actions": actions})

    def critic_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """1. the critic, next actions from the current actor."""
        with torch.no_grad():
            next_actions = self._sample(batch["next_obs"])
        return self.twin_q_step(batch, next_actions, self.critic_target)

    def actor_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """2. match -eps_theta at a noised buffer action to alpha * grad_x Q there."""
        cfg, actor = self.cfg, self.actor
        x0, b = batch["actions"], batch["actions"].shape[0]
        t = torch.randint(0, actor.n_steps, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        sa, s1a = actor.sqrt_ac[t].view(b, 1, 1), actor.sqrt_one_minus_ac[t].view(b, 1, 1)
        x_t = sa * x0 + s1a * noise
        eps_pred = actor.network(x_t, t, batch["obs"])
        x_q = x_t if cfg.q_grad_at == "noisy" else denoised_estimate(x_t, eps_pred.detach(), sa, s1a,
                                                                     actor.denoised_clip)
        actor_loss = q_score_matching_loss(eps_pred, self.critic, x_q, batch["obs"], cfg.q_grad_coeff,
                                           self.ctx.act_steps)
        optimiser_step(self.actor_opt, actor_loss, actor.parameters(), cfg.max_grad_norm)
        return {"actor_loss": actor_loss.item()}

    def update_targets(self) -> None:
        # 3. target critic
        soft_update(self.critic_target, self.critic, self.cfg.target_tau)
