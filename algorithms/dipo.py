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

import numpy as np
import torch

from algorithms.base import ActOutput, AlgoContext, Algorithm, Rollout
from algorithms.diffusion import DiffusionPolicy
from algorithms.offpolicy import (OffPolicyConfig, ReplayBuffer, TwinQ, check_replay_config, replay_steps,
                                  soft_update, transitions_from_rollout, twin_q_td_loss)
from algorithms.ppo import warmup_cosine_lr
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


_SMOKE = {"algo.batch_size": 16, "algo.replay_ratio": 4, "algo.n_critic_warmup_itr": 1, "algo.lr_warmup_itr": 0,
          "algo.critic_hidden": (32, 32, 32)}


@register_algorithm("dipo")
class DIPO(Algorithm):
    Config = DIPOConfig
    policy_kind = "diffusion"
    suite_defaults = {
        # cfg/robomimic/finetune/*/ft_dipo_diffusion_mlp.yaml (n_critic_warmup_itr is 5 on Lift, 2 elsewhere)
        "robomimic": {"algo.gamma": 0.999, "algo.reward_scale": 1.0, "algo.replay_ratio": 16,
                      "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-5, "algo.n_critic_warmup_itr": 2},
    }
    presets = {
        "smoke": {"gym": _SMOKE, "robomimic": _SMOKE, "test": _SMOKE},
        # gym: under 4 minutes on one CPU thread (201 s CPU on hopper; the updates dominate: 11 per
        # iteration of 256 samples, each with 10 action-gradient steps; 60k env steps); the other
        # algorithm values are the paper's
        "small": {"gym": {"train.n_steps": 25, "algo.batch_size": 256, "algo.replay_ratio": 12,
                          "algo.lr_warmup_itr": 0},
                  "robomimic": {"algo.batch_size": 256, "algo.lr_warmup_itr": 0},
                  # point_reach in seconds: 375 critic-only steps first (the critic's action gradient is
                  # anti-correlated with the true one early on: fast actions go with far goals), then a
                  # short, strong action ascent (5 steps of 3e-2) cloned at lr 1e-3
                  "test": {"train.n_iterations": 6, "train.n_steps": 40, "algo.n_critic_warmup_itr": 3,
                           "algo.batch_size": 128, "algo.replay_ratio": 40, "algo.buffer_size": 1600,
                           "algo.action_lr": 3e-2, "algo.action_gradient_steps": 5, "algo.lr_warmup_itr": 0,
                           "algo.critic_hidden": (64, 64, 64), "algo.gamma": 0.9, "algo.reward_scale": 0.1,
                           "algo.actor_lr": 1e-3, "algo.actor_lr_min": 1e-3},
                  # on top of "test": the narrow reward needs the paper's critic width, reward scale 1 and
                  # all the data (the critic's action gradient agrees with the true one after ~1000 steps on
                  # 1600+ transitions; 64 units or a 1600-row buffer stay near chance); improvements kept in
                  # their own column compound without corrupting Q (write-back into the executed actions:
                  # 8.6 -> 16.7; discarding them: no gain); the fast-moving actor acts (its Polyak average
                  # lags a 3e-3 learning rate)
                  "bimodal_bandit": {"train.n_iterations": 7, "algo.replay_ratio": 80, "algo.buffer_size": 1_000_000,
                                     "algo.critic_hidden": (256, 256, 256), "algo.reward_scale": 1.0,
                                     "algo.write_back": "separate", "algo.act_with_target_actor": False,
                                     "algo.actor_lr": 3e-3, "algo.actor_lr_min": 3e-3}},
        # The Config and suite defaults are the original's; the harness's paper preset has the Gym budget
        # (40 envs x 500 chunks x 1000 iterations) and the robomimic n_steps. The original DIPO ran 300
        # iterations on robomimic (1000 on Transport, with its own sampling std and lr floor).
        "paper": {"gym": {}, "robomimic": {"train.n_iterations": 300},
                  "lift": {"algo.n_critic_warmup_itr": 5},
                  "transport": {"train.n_iterations": 1000, "algo.min_sampling_std": 0.08, "algo.actor_lr_min": 1e-6}},
    }

    check_config = staticmethod(check_replay_config)

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
        self._set_lrs(0)

    def _sample(self, policy: DiffusionPolicy, obs: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return policy.sample(obs, min_std=self.cfg.min_sampling_std, deterministic=deterministic,
                             randn_clip=self.cfg.randn_clip, generator=generator)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        policy = self.actor_target if self.cfg.act_with_target_actor else self.actor
        actions = self._sample(policy, obs, deterministic, generator)
        return ActOutput(actions, {} if deterministic else {"actions": actions})

    def _set_lrs(self, iteration: int) -> None:
        cfg, n = self.cfg, self.ctx.n_iterations
        for opt, lr, lr_min in ((self.actor_opt, cfg.actor_lr, cfg.actor_lr_min),
                                (self.critic_opt, cfg.critic_lr, cfg.critic_lr_min)):
            for g in opt.param_groups:
                g["lr"] = warmup_cosine_lr(iteration, lr, lr_min, cfg.lr_warmup_itr, n)

    def update(self, ro: Rollout, iteration: int) -> dict[str, float]:
        cfg, ta = self.cfg, self.ctx.act_steps
        self._set_lrs(iteration)
        self.buffer.add(transitions_from_rollout(ro, ro.extras["actions"]))
        n_updates = replay_steps(ro.rewards.numel(), cfg.batch_size, cfg.replay_ratio)
        update_actor = iteration >= cfg.n_critic_warmup_itr
        critic_losses, actor_losses, action_shift = [], [], []
        for _ in range(n_updates):
            # 1. critic on a uniform batch, next actions from the target actor
            batch = self.buffer.sample(cfg.batch_size)
            with torch.no_grad():
                next_actions = self._sample(self.actor_target, batch["next_obs"])
            critic_loss = twin_q_td_loss(self.critic, self.critic_target, batch, next_actions, cfg.gamma,
                                         cfg.reward_scale, ta)
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_opt.step()
            critic_losses.append(critic_loss.item())

            if update_actor:
                # 2. improve another batch's executed actions on min(Q1, Q2); write them back into the buffer
                batch = self.buffer.sample(cfg.batch_size)
                key = "improved_actions" if cfg.write_back == "separate" else "actions"
                improved = batch[key].clone()
                improved[:, :ta] = improve_actions(self.critic, batch["obs"], improved[:, :ta],
                                                   cfg.action_gradient_steps, cfg.action_lr,
                                                   self.action_grad_max_norm, cfg.action_adam_eps)
                if cfg.write_back != "none":
                    self.buffer.set_actions(batch["index"], improved, key)
                action_shift.append((improved - batch[key])[:, :ta].abs().mean().item())
                # 3. behaviour-clone the improved chunks with the diffusion loss
                actor_loss = self.actor.loss(improved, batch["obs"])
                self.actor_opt.zero_grad(set_to_none=True)
                actor_loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)
                self.actor_opt.step()
                actor_losses.append(actor_loss.item())

            # 4. targets
            soft_update(self.critic_target, self.critic, cfg.target_tau)
            soft_update(self.actor_target, self.actor, cfg.target_tau)
        out = {"critic_loss": float(np.mean(critic_losses)), "gradient_steps": float(n_updates),
               "buffer_size": float(len(self.buffer)), "actor_updated": float(update_actor),
               "actor_lr": self.actor_opt.param_groups[0]["lr"], "critic_lr": self.critic_opt.param_groups[0]["lr"]}
        if actor_losses:
            out.update(actor_loss=float(np.mean(actor_losses)), action_shift=float(np.mean(action_shift)))
        return out

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "actor_target": self.actor_target.state_dict(),
                "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.buffer.load_state_dict(state["buffer"])
