"""DQL: Diffusion Q-Learning (Wang et al. 2023), fine-tuned online as in DPPO's baseline.

Twin Q with Polyak targets, fitted to r + gamma (1 - terminated) min(Q1', Q2')(s', a'), a' drawn from the
current diffusion policy. The actor samples a chunk through the whole K-step chain with gradients and
minimises L_bc + eta * (-Q_i(s, a_pi).mean() / |Q_j(s, a_pi)|.mean().detach()), where (i, j) is (1, 2)
or (2, 1) with probability 1/2 each step: the Q term is normalised by the other critic's magnitude so eta
does not depend on the reward scale. Every gradient step updates the critic, then the actor (after the
critic warm-up), then the target critic. method.md section 5; the original's
agent/finetune/train_dql_diffusion_agent.py and model/diffusion/diffusion_dql.py.

Rewards are multiplied by `reward_scale` (0.01 Gym, 1 robomimic) in the TD target. Q scores the executed
part (Ta) of a chunk, as the original's critic. A truncated step bootstraps from its true final
observation (the original did too).

Options with the original code's values by default: `bc_actions` — "policy": the diffusion loss is taken
on the policy's own differentiable sample a_pi (what the DPPO baseline code does); "buffer": on buffer
chunks (Wang et al.'s offline DQL). `critic_residual` (the original's configs asked for residual Q networks,
but the `residual_tyle` typo made them plain MLPs, method.md section 6.3).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from algorithms.base import ActOutput, AlgoContext, optimiser_step
from algorithms.diffusion import DiffusionPolicy, initial_noise_clip, sample_chain
from algorithms.offpolicy import (
    OffPolicyAlgorithm,
    OffPolicyConfig,
    ReplayBuffer,
    TwinQ,
    sequential_mean,
    soft_update,
)
from algorithms.registry import register_algorithm


@dataclass
class DQLConfig(OffPolicyConfig):
    eta: float = 1.0
    """weight of the normalised Q term in the actor loss"""
    bc_actions: Literal["policy", "buffer"] = "policy"
    """x0 of the actor's diffusion loss: the policy's own sample (original code) or buffer chunks"""


def normalised_q_loss(q1: torch.Tensor, q2: torch.Tensor, first: bool) -> torch.Tensor:
    """-Q_i.mean() / |Q_j|.mean() with (i, j) = (1, 2) if `first` else (2, 1); no gradient through Q_j."""
    qi, qj = (q1, q2) if first else (q2, q1)
    return -qi.mean() / qj.abs().mean().detach()


@register_algorithm("dql")
class DQL(OffPolicyAlgorithm):
    Config = DQLConfig
    policy_kind = "diffusion"
    state_parts = ("policy.network", "critic", "target_critic", "actor_opt", "critic_opt", "buffer")
    logged = ("gradient_steps", "buffer_size", "actor_lr", "actor_updated")
    step_mean = staticmethod(sequential_mean)

    def __init__(self, cfg: DQLConfig, ctx: AlgoContext, pretrained: DiffusionPolicy):
        super().__init__(cfg, ctx, pretrained)
        dev = ctx.device
        self.policy = copy.deepcopy(pretrained).to(dev).requires_grad_(True).train()  # whole network fine-tuned
        self.chain = self.policy.ddpm
        self.critic = TwinQ(ctx.obs_dim, (ctx.act_steps, ctx.act_dim), cfg.critic_hidden, cfg.critic_activation,
                            cfg.critic_residual).to(dev)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.actor_lr,
                                           weight_decay=cfg.actor_weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr,
                                            weight_decay=cfg.critic_weight_decay)
        self.buffer = ReplayBuffer(cfg.buffer_size, ctx.obs_dim, (ctx.horizon_steps, ctx.act_dim), dev)

    def _sample(self, obs: torch.Tensor, keep_grad: bool = False, deterministic: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_chain(self.policy.network, self.chain, obs, self.cfg.min_sampling_std, self.cfg.randn_clip,
                            generator, keep_grad=keep_grad, deterministic=deterministic,
                            initial_clip=initial_noise_clip(self.cfg))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        actions = self._sample(obs, deterministic=deterministic, generator=generator)
        return ActOutput(actions, {"actions": actions})

    # ----------------------------------------------------------------------------------------------
    # Update: the critic, then (after the critic warm-up) the actor, then the target critic

    def critic_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """Clipped double-Q target with the next chunk from the current policy."""
        with torch.no_grad():
            next_chunk = self._sample(b["next_obs"])
        return self.twin_q_step(b, next_chunk, self.target_critic)

    def actor_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """Backpropagate through the whole chain into the (fixed) critic."""
        cfg, obs = self.cfg, b["obs"]
        chunk = self._sample(obs, keep_grad=True)
        self.critic.requires_grad_(False)
        q1_pi, q2_pi = self.critic(obs, chunk[:, : self.ctx.act_steps])
        self.critic.requires_grad_(True)
        bc_loss = self.policy.loss(chunk if cfg.bc_actions == "policy" else b["actions"], obs)
        first = bool(torch.rand(()) < 0.5)
        q_loss = normalised_q_loss(q1_pi, q2_pi, first)
        actor_loss = bc_loss + cfg.eta * q_loss
        optimiser_step(self.actor_opt, actor_loss, self.policy.parameters(), cfg.max_grad_norm)
        return {"actor_loss": actor_loss.item(), "bc_loss": bc_loss.item(), "q_loss": q_loss.item(),
                "q_pi_mean": q1_pi.mean().item()}

    def update_targets(self) -> None:
        soft_update(self.target_critic, self.critic, self.cfg.target_tau)
