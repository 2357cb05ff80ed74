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

from algorithms.base import ActOutput, AlgoContext, Algorithm, Rollout
from algorithms.diffusion import DiffusionPolicy
from algorithms.offpolicy import (OffPolicyConfig, ReplayBuffer, TwinQ, check_replay_config, replay_steps,
                                  sample_chain, soft_update, transitions_from_rollout, twin_q_td_loss)
from algorithms.ppo import set_warmup_cosine_lrs
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


_SMOKE = {"algo.batch_size": 16, "algo.replay_ratio": 1.0, "algo.n_critic_warmup_itr": 1, "algo.lr_warmup_itr": 0}
# small: CPU-sized (about 3 CPU minutes on hopper). With ~100x fewer critic steps than the original, an
# immature critic's action gradient wrecks the policy within an iteration: the critic gets a longer
# warm-up and a faster target, and the actor a 10x smaller step; small batches buy more steps. On
# point_reach (5 chunks per episode, "test" below) gamma 0.8 matches the horizon.
_SMALL = {"algo.batch_size": 64, "algo.replay_ratio": 8.0, "algo.buffer_size": 100_000, "algo.target_tau": 0.05,
          "algo.n_critic_warmup_itr": 10, "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-5,
          "algo.lr_warmup_itr": 0}


@register_algorithm("dql")
class DQL(Algorithm):
    Config = DQLConfig
    policy_kind = "diffusion"
    suite_defaults = {
        "robomimic": {"algo.gamma": 0.999, "algo.reward_scale": 1.0, "algo.actor_lr": 1e-5,
                      "algo.actor_lr_min": 1e-5},
    }
    presets = {
        "smoke": {"gym": _SMOKE, "robomimic": _SMOKE, "test": _SMOKE},
        "small": {"gym": {**_SMALL, "train.n_iterations": 40, "train.n_steps": 40}, "robomimic": _SMALL,
                  "test": {"train.n_iterations": 10, "algo.batch_size": 50, "algo.replay_ratio": 32.0,
                           "algo.reward_scale": 1.0, "algo.gamma": 0.8, "algo.target_tau": 0.05,
                           "algo.lr_warmup_itr": 0},
                  # on top of "test": the one-step bandit's critic is good enough after 2 iterations; with
                  # the 5-iteration warm-up the actor gets only half the run (8.6 -> 17.6; with 2: 54.0)
                  "bimodal_bandit": {"algo.n_critic_warmup_itr": 2}},
        # paper: the Config defaults and suite defaults are the original's; the harness's paper preset has
        # its Gym budget (40 envs x 500 chunks x 1000 iterations) and robomimic n_steps; these runs
        # were 300 iterations on robomimic (1000 on Transport, with its own sampling std, lr floor, warm-up).
        "paper": {"gym": {}, "robomimic": {"train.n_iterations": 300},
                  "transport": {"train.n_iterations": 1000, "algo.min_sampling_std": 0.08,
                                "algo.actor_lr_min": 1e-6, "algo.n_critic_warmup_itr": 2}},
    }

    check_config = staticmethod(check_replay_config)

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
                            generator, keep_grad=keep_grad, deterministic=deterministic)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        actions = self._sample(obs, deterministic=deterministic, generator=generator)
        return ActOutput(actions, {"actions": actions})

    # ----------------------------------------------------------------------------------------------
    # Update

    def _set_lrs(self, iteration: int) -> None:
        cfg = self.cfg
        set_warmup_cosine_lrs(iteration, self.ctx.n_iterations, cfg.lr_warmup_itr,
                              [(self.actor_opt, cfg.actor_lr, cfg.actor_lr_min),
                               (self.critic_opt, cfg.critic_lr, cfg.critic_lr_min)])

    def update(self, ro: Rollout, iteration: int) -> dict[str, float]:
        cfg, ta = self.cfg, self.ctx.act_steps
        self._set_lrs(iteration)
        self.buffer.add(transitions_from_rollout(ro, ro.extras["actions"]))
        update_actor = iteration >= cfg.n_critic_warmup_itr
        n_grad = replay_steps(ro.rewards.numel(), cfg.batch_size, cfg.replay_ratio)
        sums = {"critic_loss": 0.0, "actor_loss": 0.0, "bc_loss": 0.0, "q_loss": 0.0, "q_pi_mean": 0.0}
        for _ in range(n_grad):
            b = self.buffer.sample(cfg.batch_size)
            obs = b["obs"]
            # critic: clipped double-Q target with the next chunk from the current policy
            with torch.no_grad():
                next_chunk = self._sample(b["next_obs"])
            critic_loss = twin_q_td_loss(self.critic, self.target_critic, b, next_chunk, cfg.gamma,
                                         cfg.reward_scale, ta)
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_opt.step()
            # actor: backpropagate through the whole chain into the (fixed) critic
            if update_actor:
                chunk = self._sample(obs, keep_grad=True)
                self.critic.requires_grad_(False)
                q1_pi, q2_pi = self.critic(obs, chunk[:, :ta])
                self.critic.requires_grad_(True)
                bc_loss = self.policy.loss(chunk if cfg.bc_actions == "policy" else b["actions"], obs)
                first = bool(torch.rand(()) < 0.5)
                q_loss = normalised_q_loss(q1_pi, q2_pi, first)
                actor_loss = bc_loss + cfg.eta * q_loss
                self.actor_opt.zero_grad(set_to_none=True)
                actor_loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.actor_opt.step()
                sums["actor_loss"] += actor_loss.item()
                sums["bc_loss"] += bc_loss.item()
                sums["q_loss"] += q_loss.item()
                sums["q_pi_mean"] += q1_pi.mean().item()
            soft_update(self.target_critic, self.critic, cfg.target_tau)
            sums["critic_loss"] += critic_loss.item()
        if not all(torch.isfinite(torch.tensor(v)) for v in sums.values()):
            raise FloatingPointError(f"DQL losses became non-finite at iteration {iteration}")
        out = {k: v / n_grad for k, v in sums.items()
               if update_actor or k not in ("actor_loss", "bc_loss", "q_loss", "q_pi_mean")}
        return out | {"gradient_steps": float(n_grad), "buffer_size": float(len(self.buffer)),
                      "actor_lr": self.actor_opt.param_groups[0]["lr"], "actor_updated": float(update_actor)}

    # ----------------------------------------------------------------------------------------------

    def _parts(self) -> dict:
        return {"network": self.policy.network, "critic": self.critic, "target_critic": self.target_critic,
                "actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "buffer": self.buffer}

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self._parts().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self._parts().items():
            part.load_state_dict(state[name])
