"""DIPO: DIffusion POlicy with action gradients (Yang et al. 2023), as in the DPPO baselines.

Off-policy. Every iteration the rollout's transitions go into a FIFO replay buffer, then
`replay_ratio * new transitions / batch_size` gradient steps each do (method.md section 5):

1. critic: twin Q(s, a) on the executed actions of the chunk, clipped double-Q TD target
   reward_scale * r + gamma * (1 - terminated) * min(Q1', Q2')(s', a'), a' ~ the *target* actor;
2. action gradient: a fresh batch of buffer chunks' executed actions is moved uphill on min(Q1, Q2) by
   `action_gradient_steps` Adam steps (lr `action_lr`, eps 1e-5), each after clipping the gradient's norm
   and followed by clipping the actions to [-1, 1]; the improved actions are written back into the buffer
   (so later critic and actor steps train on them), and
3. actor: the diffusion (epsilon-MSE) loss on the improved actions, i.e. behaviour cloning of them;
4. Polyak updates (`target_tau`) of the target critic and the target actor.

The actor is not updated (nor are buffer actions improved) during the first `n_critic_warmup_itr`
iterations. As in the original, the policy that acts (and the deterministic evaluation) is the target
actor (`act_with_target_actor`).

Differences from the original code, with the original as default where it is a choice:
- The buffer stores the whole predicted chunk (Tp actions, the target of the diffusion loss); Q sees and
  the action gradient moves the executed first Ta of them, as the original critic. The original stored
  only the Ta executed actions and required Tp == Ta, which holds in every original config. The
  action-gradient norm limit is `action_grad_norm_coef * Ta * Da` and, as in the original, is the norm of
  the whole batch's action gradient.
- Rewards are stored raw and scaled by `reward_scale` in the TD target (the original stored them scaled).
- The critic MLP is not residual by default, as the original's in effect (`critic_residual`, see
  OffPolicyConfig).
- Time-outs bootstrap from the true final observation, terminations do not (method.md section 6).
- `write_back` (not in the paper; default "buffer", the original): a written-back action keeps the
  reward of the action it replaced, so the critic's TD targets pair actions with rewards they never
  earned and Q flattens around the improved actions (on bimodal_bandit only a third of the
  action-gradient steps then raise the true reward). "separate" keeps the improved actions in their own
  buffer column: they are still improved again each time they are drawn, so improvements compound as in
  the original, but the critic trains on what was executed. "none" discards them; then the actor clones
  one ascent from stale buffer actions and barely moves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

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
class DIPOConfig(OffPolicyConfig):
    """The shared replay settings (algorithms/offpolicy.py) at the original Gym DIPO values, plus DIPO's own."""

    replay_ratio: float = 64.0
    """gradient steps per iteration = replay_ratio * new transitions / batch_size (at least 1)"""
    action_lr: float = 1e-4
    """Adam learning rate of the action-gradient ascent on min(Q1, Q2)"""
    action_gradient_steps: int = 10
    action_adam_eps: float = 1e-5
    action_grad_norm_coef: float = 0.1
    """the batch's action gradient is norm-clipped at this * Ta * Da (as the original)"""
    write_back: Literal["buffer", "separate", "none"] = "buffer"
    """where improved actions go: "buffer" overwrites the executed actions (the original; critic and actor
    then train on them); "separate" keeps them in a column of their own that the action gradient keeps
    improving and the actor clones, while the critic trains on the executed actions; "none" discards them
    (each actor step clones one ascent from the executed actions). See the module notes."""
    act_with_target_actor: bool = True
    """act (and evaluate) with the target actor, as the original; False: with the trained actor"""


def improve_actions(critic, obs: torch.Tensor, actions: torch.Tensor, steps: int, lr: float,
                    max_grad_norm: float, adam_eps: float = 1e-5) -> torch.Tensor:
    """DIPO's action gradient: `steps` Adam steps of ascent on sum_b min(Q1, Q2)(s_b, a_b) over the actions,
    each with the whole batch's gradient norm-clipped at `max_grad_norm`, then the actions clipped to
    [-1, 1]. `critic(obs, actions) -> (q1, q2)`; its parameters get no gradient. Returns new actions."""
    a = actions.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([a], lr=lr, eps=adam_eps)
    for _ in range(steps):
        q1, q2 = critic(obs, a)
        (a.grad,) = torch.autograd.grad(-torch.min(q1, q2).sum(), a)
        torch.nn.utils.clip_grad_norm_([a], max_grad_norm)
        opt.step()
        with torch.no_grad():
            a.clamp_(-1.0, 1.0)
    return a.detach()


@register_algorithm("dipo")
class DIPO(OffPolicyAlgorithm):
    Config = DIPOConfig
    policy_kind = "diffusion"
    state_parts = ("actor", "actor_target", "critic", "critic_target", "actor_opt", "critic_opt", "buffer")

    def __init__(self, cfg: DIPOConfig, ctx: AlgoContext, pretrained: DiffusionPolicy):
        super().__init__(cfg, ctx, pretrained)
        dev, ta = ctx.device, ctx.act_steps
        self.actor = copy.deepcopy(pretrained).to(dev).requires_grad_(True).train()
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False).eval()
        self.critic = TwinQ(ctx.obs_dim, (ta, ctx.act_dim), cfg.critic_hidden, cfg.critic_activation,
                            cfg.critic_residual).to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.AdamW(self.actor.parameters(), lr=cfg.actor_lr,
                                           weight_decay=cfg.actor_weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr,
                                            weight_decay=cfg.critic_weight_decay)
        self.buffer = ReplayBuffer(cfg.buffer_size, ctx.obs_dim, (ctx.horizon_steps, ctx.act_dim), dev,
                                   improved_actions=cfg.write_back == "separate")
        self.action_grad_max_norm = cfg.action_grad_norm_coef * ta * ctx.act_dim

    def _sample(self, policy: DiffusionPolicy, obs: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return policy.sample(obs, min_std=self.cfg.min_sampling_std, deterministic=deterministic,
                             randn_clip=self.cfg.randn_clip, generator=generator,
                             initial_clip=initial_noise_clip(self.cfg))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        policy = self.actor_target if self.cfg.act_with_target_actor else self.actor
        actions = self._sample(policy, obs, deterministic, generator)
        return ActOutput(actions, {} if deterministic else {"actions": actions})

    def critic_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """1. the critic on a uniform batch, next actions from the target actor."""
        with torch.no_grad():
            next_actions = self._sample(self.actor_target, batch["next_obs"])
        return self.twin_q_step(batch, next_actions, self.critic_target)

    def actor_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, ta = self.cfg, self.ctx.act_steps
        # 2. improve another batch's executed actions on min(Q1, Q2); write them back into the buffer
        batch = self.buffer.sample(cfg.batch_size)
        key = "improved_actions" if cfg.write_back == "separate" else "actions"
        improved = batch[key].clone()
        improved[:, :ta] = improve_actions(self.critic, batch["obs"], improved[:, :ta], cfg.action_gradient_steps,
                                           cfg.action_lr, self.action_grad_max_norm, cfg.action_adam_eps)
        if cfg.write_back != "none":
            self.buffer.set_actions(batch["index"], improved, key)
        action_shift = (improved - batch[key])[:, :ta].abs().mean().item()
        # 3. behaviour-clone the improved chunks with the diffusion loss
        actor_loss = self.actor.loss(improved, batch["obs"])
        optimiser_step(self.actor_opt, actor_loss, self.actor.parameters(), cfg.max_grad_norm)
        return {"actor_loss": actor_loss.item(), "action_shift": action_shift}

    def update_targets(self) -> None:
        # 4. targets
        soft_update(self.critic_target, self.critic, self.cfg.target_tau)
        soft_update(self.actor_target, self.actor, self.cfg.target_tau)
