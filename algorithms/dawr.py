"""DAWR: advantage-weighted regression (Peng et al. 2019) on a diffusion policy, a baseline of DPPO.

A FIFO buffer keeps the most recent `buffer_steps` vectorised chunk steps of every env, in time order.
Each iteration (method.md section 5; the original agent/finetune/train_awr_diffusion_agent.py):

1. TD(lambda) over the whole buffer with the current critic: G^lambda = V + GAE(gamma, lambda) on the
   rewards times `reward_scale`; the critic's target is V + td_alpha * GAE (the original's alpha = 0.95: a
   step towards G^lambda, with the same fixed point);
2. n_actor / critic_update_ratio critic steps on MSE(V(s), target), minibatches drawn with replacement,
   where n_actor = replay_ratio * (new chunk steps) / batch_size; all before the actor's steps, as the
   original;
3. the advantages A = target - V, recomputed with the updated critic;
4. n_actor actor steps of weighted diffusion BC on the stored chunks, w = min(exp(beta * A_norm), w_max),
   A normalised per minibatch; the actor is not stepped during the first `n_critic_warmup_itr` iterations.

Fixed defects of the original (method.md section 6): gamma is the config's (the original's TD(lambda)
hard-coded 0.99 whatever the config said); a truncation stops the recursion and bootstraps from the true
final observation (the original bootstrapped from the next episode's first state); the newest step
bootstraps from the observation that followed it (the original used its own state's value). Where the
envs did not continue from the buffer's last step (reset on a resume without env state), the trajectory
is cut there like a truncation. The buffer stores the executed chunk clipped to [-1, 1], as DRWR does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import (
    ACTOR_CRITIC_LRS,
    ActorCriticConfig,
    AlgoContext,
    Rollout,
    optimiser_step,
    raise_if_not_finite,
)
from algorithms.diffusion import DiffusionPolicy
from algorithms.drwr import DiffusionRegression, normalized_exp_weights
from algorithms.networks import ValueCritic, check_residual_mlp
from algorithms.offpolicy import transitions_from_rollout
from algorithms.ppo import gae
from algorithms.registry import register_algorithm
from core.errors import BenchError


@dataclass
class DAWRConfig(ActorCriticConfig):
    gamma: float = 0.99
    """discount per chunk"""
    td_lambda: float = 0.95
    td_alpha: float = 0.95
    """critic target V + td_alpha * (G^lambda - V) (the original's alpha); cancels in the normalised advantage"""
    reward_scale: float = 0.01
    """rewards are multiplied by this before TD(lambda) (the original's scale_reward_factor)"""
    beta: float = 10.0
    max_weight: float = 100.0
    buffer_steps: int = 5000
    """vectorised chunk steps kept (x n_envs transitions); the original's 5000 = 10 iterations of 500"""
    batch_size: int = 1000
    replay_ratio: float = 64.0
    """actor gradient steps per iteration = replay_ratio * n_envs * n_steps / batch_size"""
    critic_update_ratio: int = 4
    """one critic step per this many actor steps"""
    n_critic_warmup_itr: int = 0
    min_sampling_std: float = 0.1
    randn_clip: float = 3.0
    clip_initial_noise: bool = False
    """also clip the chain's initial noise x_K to +-randn_clip (the original clips only the per-step draws)"""


class TrajectoryFIFO:
    """The last `capacity` vectorised steps, time-major (S, N, ...) and in the order they happened, so
    TD(lambda) can run backwards over them. `ended` marks where a trajectory stops (termination,
    truncation, or a break in continuity); `next_obs` is then the true next observation to bootstrap from."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity, self.device = capacity, device
        self.data: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.data["rewards"].numel() if self.data else 0

    def add(self, ro: Rollout, actions: torch.Tensor) -> None:
        T, N = ro.rewards.shape
        new = {k: v.view(T, N, *v.shape[1:]) for k, v in transitions_from_rollout(ro, actions).items()}
        new["terminated"] = ro.terminated.clone()
        new["ended"] = ro.terminated | ro.truncated
        if self.data:
            broken = (self.data["next_obs"][-1] != ro.obs[0]).any(-1)
            self.data["ended"][-1] |= broken
            new = {k: torch.cat([self.data[k], v]) for k, v in new.items()}
        self.data = {k: v[max(0, v.shape[0] - self.capacity):] for k, v in new.items()}

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.data.items()}

    def load_state_dict(self, state: dict) -> None:
        self.data = {k: v.to(self.device) for k, v in state.items()}


@register_algorithm("dawr")
class DAWR(DiffusionRegression):
    Config = DAWRConfig
    policy_kind = "diffusion"
    lr_schedules = ACTOR_CRITIC_LRS
    state_parts = ("policy.network", "critic", "actor_opt", "critic_opt", "buffer")

    @classmethod
    def check_config(cls, cfg: DAWRConfig) -> None:
        check_residual_mlp(tuple(cfg.critic_hidden), cfg.critic_residual, "algo.critic_residual", "algo.critic_hidden")
        for name in ("buffer_steps", "batch_size", "critic_update_ratio"):
            if getattr(cfg, name) < 1:
                raise BenchError(f"algo.{name} must be >= 1, got {getattr(cfg, name)}")

    def __init__(self, cfg: DAWRConfig, ctx: AlgoContext, pretrained: DiffusionPolicy):
        super().__init__(cfg, ctx, pretrained, cfg.actor_lr, cfg.actor_weight_decay)
        self.critic = ValueCritic(ctx.obs_dim, cfg.critic_hidden, cfg.critic_activation,
                                  cfg.critic_residual).to(ctx.device)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr,
                                            weight_decay=cfg.critic_weight_decay)
        self.buffer = TrajectoryFIFO(cfg.buffer_steps, ctx.device)

    @torch.no_grad()
    def td_lambda(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(critic targets V + td_alpha * GAE, values V), both (S, N), over the whole buffer."""
        cfg, d = self.cfg, self.buffer.data
        S, N = d["rewards"].shape
        values = self.critic(d["obs"].flatten(0, 1)).view(S, N)
        # V(s_{t+1}) is the next row's value inside a trajectory; evaluate next_obs only where it stops
        next_values = torch.cat([values[1:], self.critic(d["next_obs"][-1])[None]])
        if d["ended"].any():
            next_values[d["ended"]] = self.critic(d["next_obs"][d["ended"]])
        next_values = next_values.masked_fill(d["terminated"], 0.0)
        adv = gae(d["rewards"] * cfg.reward_scale, values, next_values, d["ended"], cfg.gamma, cfg.td_lambda)
        return values + cfg.td_alpha * adv, values

    def learn(self, ro: Rollout, iteration: int) -> dict[str, float]:
        cfg, dev = self.cfg, ro.obs.device
        self.buffer.add(ro, ro.extras["actions"])
        obs = self.buffer.data["obs"].flatten(0, 1)
        chunks = self.buffer.data["actions"].flatten(0, 1)
        size = obs.shape[0]
        n_actor = max(1, int(ro.rewards.numel() / cfg.batch_size * cfg.replay_ratio))

        targets = self.td_lambda()[0].flatten()
        v_losses = []
        for _ in range(n_actor // cfg.critic_update_ratio):
            idx = torch.randint(0, size, (cfg.batch_size,), device=dev)
            v_loss = ((self.critic(obs[idx]) - targets[idx]) ** 2).mean()
            optimiser_step(self.critic_opt, v_loss)
            v_losses.append(v_loss.detach())

        targets, values = (x.flatten() for x in self.td_lambda())
        adv = targets - values
        update_actor = iteration >= cfg.n_critic_warmup_itr
        losses, capped = [], []
        for _ in range(n_actor if update_actor else 0):
            idx = torch.randint(0, size, (cfg.batch_size,), device=dev)
            weights = normalized_exp_weights(adv[idx], cfg.beta, cfg.max_weight, eps=1e-6, unbiased=True)
            losses.append(self.weighted_bc_step(chunks[idx], obs[idx], weights))
            capped.append((weights >= cfg.max_weight).float().mean())
        stats = {"buffer_size": float(size), "actor_updated": float(update_actor),
                 "adv_std": float(adv.std()) if size > 1 else 0.0,
                 "actor_lr": self.actor_opt.param_groups[0]["lr"], "critic_lr": self.critic_opt.param_groups[0]["lr"]}
        if v_losses:
            stats["v_loss"] = float(torch.stack(v_losses).mean())
        if losses:
            stats.update(loss=float(torch.stack(losses).mean()), capped_frac=float(torch.stack(capped).mean()))
        var_t = targets.var()
        stats["explained_variance"] = float(1 - (targets - values).var() / var_t) if var_t > 0 else float("nan")
        raise_if_not_finite({k: stats[k] for k in ("v_loss", "loss") if k in stats}, "DAWR", iteration)
        return stats
