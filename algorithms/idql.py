"""IDQL: Implicit Diffusion Q-Learning (Hansen-Estruch et al. 2023), fine-tuned online as in DPPO's baseline.

Critics as IQL: V(s) is fitted by expectile regression (expectile 0.8) to min(Q1', Q2')(s, a) of the
target twin Q; both Q's are fitted to r + gamma (1 - terminated) V(s'). The actor is plain diffusion BC
on buffer chunks (no weighting). The policy is implicit: acting draws `n_candidates` chunks from the
diffusion policy and picks one by Q: while training, a categorical draw with weight
`exploration_expectile` where Q' - V > 0 and 1 - that elsewhere; at evaluation, the argmax of Q'.
Every gradient step updates V, then Q, then the Polyak target, then the actor (after the critic warm-up).
method.md section 5; the original's agent/finetune/train_idql_diffusion_agent.py.

Rewards are multiplied by `reward_scale` (0.01 Gym, 1 robomimic) in the TD target. The buffer holds
whole predicted chunks (Tp) so BC sees what the policy predicts; Q scores the executed part (Ta), as the
original's critic. A truncated step bootstraps from its true final observation (the original did too;
method.md section 6).

Options (original values by default): `critic_residual` (the original's configs asked for residual Q
networks, but the `residual_tyle` typo made them plain MLPs, method.md section 6.3);
`expectile_exploration=False` picks the argmax while training too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch

from algorithms.base import ActOutput, AlgoContext, optimiser_step
from algorithms.diffusion import DiffusionPolicy, initial_noise_clip, sample_chain
from algorithms.networks import ValueCritic
from algorithms.offpolicy import (
    OffPolicyAlgorithm,
    OffPolicyConfig,
    ReplayBuffer,
    TwinQ,
    check_replay_config,
    sequential_mean,
    soft_update,
)
from algorithms.registry import register_algorithm
from core.errors import BenchError


@dataclass
class IDQLConfig(OffPolicyConfig):
    n_candidates: int = 20
    """chunks sampled per state to choose from (the original's eval_sample_num: 20 Gym, 10 robomimic)"""
    expectile: float = 0.8
    """tau of V's expectile regression on Q' - V"""
    expectile_exploration: bool = True
    """training picks candidates by the expectile-weighted draw (False: argmax, as evaluation)"""
    exploration_expectile: float = 0.7
    """candidate weight where Q' - V > 0 (1 - this elsewhere); the original's critic_hyperparam"""
    replay_ratio: float = 128.0
    target_tau: float = 0.001
    v_residual: bool = True
    """V(s) is a residual MLP (the original's V critic did get its residual_style)"""


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean of |tau - 1(diff < 0)| diff^2: positive errors (target above V) weigh tau, negative 1 - tau."""
    return (torch.where(diff > 0, tau, 1 - tau) * diff**2).mean()


def candidate_probs(q: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    """Categorical over candidates (S, B) -> (B, S): weight tau where Q - V > 0, 1 - tau elsewhere."""
    w = torch.where(q - v > 0, tau, 1 - tau)
    return (w / w.sum(0)).T.contiguous()  # contiguous: multinomial's draws depend on the memory layout


@register_algorithm("idql")
class IDQL(OffPolicyAlgorithm):
    Config = IDQLConfig
    policy_kind = "diffusion"
    lr_schedules: ClassVar = {"actor_opt": ("actor_lr", "actor_lr_min"), "v_opt": ("critic_lr", "critic_lr_min"),
                    "q_opt": ("critic_lr", "critic_lr_min")}
    state_parts = ("policy.network", "critic_v", "critic_q", "target_q", "actor_opt", "v_opt", "q_opt", "buffer")
    logged = ("gradient_steps", "buffer_size", "actor_lr", "actor_updated")
    step_mean = staticmethod(sequential_mean)

    @classmethod
    def check_config(cls, cfg: IDQLConfig) -> None:
        check_replay_config(cfg)
        for name in ("expectile", "exploration_expectile"):
            if not 0 < getattr(cfg, name) < 1:
                raise BenchError(f"algo.{name} must be strictly between 0 and 1, got {getattr(cfg, name)}")
        if cfg.n_candidates < 1:
            raise BenchError(f"algo.n_candidates must be >= 1, got {cfg.n_candidates}")

    def __init__(self, cfg: IDQLConfig, ctx: AlgoContext, pretrained: DiffusionPolicy):
        super().__init__(cfg, ctx, pretrained)
        dev = ctx.device
        self.policy = copy.deepcopy(pretrained).to(dev).requires_grad_(True).train()  # whole network fine-tuned
        self.chain = self.policy.ddpm
        self.critic_v = ValueCritic(ctx.obs_dim, cfg.critic_hidden, cfg.critic_activation, cfg.v_residual).to(dev)
        self.critic_q = TwinQ(ctx.obs_dim, (ctx.act_steps, ctx.act_dim), cfg.critic_hidden, cfg.critic_activation,
                              cfg.critic_residual).to(dev)
        self.target_q = copy.deepcopy(self.critic_q).requires_grad_(False)
        self.actor_opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.actor_lr,
                                           weight_decay=cfg.actor_weight_decay)
        self.v_opt = torch.optim.AdamW(self.critic_v.parameters(), lr=cfg.critic_lr,
                                       weight_decay=cfg.critic_weight_decay)
        self.q_opt = torch.optim.AdamW(self.critic_q.parameters(), lr=cfg.critic_lr,
                                       weight_decay=cfg.critic_weight_decay)
        self.buffer = ReplayBuffer(cfg.buffer_size, ctx.obs_dim, (ctx.horizon_steps, ctx.act_dim), dev)

    # ----------------------------------------------------------------------------------------------
    # Acting: sample candidates, choose by the target Q

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        cfg, (b, _), S = self.cfg, obs.shape, self.cfg.n_candidates
        obs_rep = obs.repeat(S, 1)  # candidate s of env n at row s * b + n
        x = sample_chain(self.policy.network, self.chain, obs_rep, cfg.min_sampling_std, cfg.randn_clip,
                         generator, deterministic=deterministic, initial_clip=initial_noise_clip(cfg))
        q = torch.min(*self.target_q(obs_rep, x[:, : self.ctx.act_steps])).view(S, b)
        if deterministic or not cfg.expectile_exploration:
            pick = q.argmax(0)
        else:
            probs = candidate_probs(q, self.critic_v(obs)[None], cfg.exploration_expectile)
            pick = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        actions = x.view(S, b, *x.shape[1:])[pick, torch.arange(b, device=obs.device)]
        return ActOutput(actions, {"actions": actions})

    # ----------------------------------------------------------------------------------------------
    # Update: V, then Q, then (after the critic warm-up) the actor, then the target Q

    def critic_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, ta = self.cfg, self.ctx.act_steps
        obs, chunk = b["obs"], b["actions"]
        # V: upper expectile of the target Q over buffer actions
        with torch.no_grad():
            q_target = torch.min(*self.target_q(obs, chunk[:, :ta]))
        v_loss = expectile_loss(q_target - self.critic_v(obs), cfg.expectile)
        optimiser_step(self.v_opt, v_loss)
        # Q: one-step TD target through the (just updated) V
        with torch.no_grad():
            y = cfg.reward_scale * b["rewards"] + cfg.gamma * (1 - b["terminated"]) * self.critic_v(b["next_obs"])
        q1, q2 = self.critic_q(obs, chunk[:, :ta])
        q_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
        optimiser_step(self.q_opt, q_loss)
        return {"v_loss": v_loss.item(), "q_loss": q_loss.item(), "q_mean": q1.mean().item()}

    def actor_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """Unweighted diffusion BC on buffer chunks."""
        actor_loss = self.policy.loss(b["actions"], b["obs"])
        optimiser_step(self.actor_opt, actor_loss, self.policy.parameters(), self.cfg.max_grad_norm)
        return {"actor_loss": actor_loss.item()}

    def update_targets(self) -> None:
        soft_update(self.target_q, self.critic_q, self.cfg.target_tau)
