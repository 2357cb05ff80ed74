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

from algorithms.base import ActOutput, AlgoContext, Algorithm, Rollout
from algorithms.diffusion import ChainPlan, DenoisingChain, DiffusionPolicy, clipped_randn, eval_std
from algorithms.networks import ValueCritic, check_residual_mlp
from algorithms.ppo import (RunningRewardScaler, clipped_surrogate, denoising_clip_schedule, minibatches,
                            ppo_step, rollout_advantages, set_warmup_cosine_lrs, update_summary, value_loss)
from algorithms.registry import register_algorithm

LOG_2PI = float(np.log(2 * np.pi))


@dataclass
class DPPOConfig:
    ft_denoising_steps: int = 10
    """K': the last K' chain steps are fine-tuned (K' counts DDIM steps when use_ddim)"""
    use_ddim: bool = False
    ddim_steps: int = 5
    """DDIM steps of the chain when use_ddim (eta = 1 while fine-tuning, 0 at evaluation)"""
    min_sampling_std: float = 0.1
    min_logprob_std: float = 0.1
    randn_clip: float = 3.0
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
    n_critic_warmup_itr: int = 0
    update_epochs: int = 5
    batch_size: int = 50_000
    """(env step, denoising step) pairs per minibatch"""
    actor_lr: float = 1e-4
    actor_lr_min: float = 1e-4
    actor_weight_decay: float = 0.0
    critic_lr: float = 1e-3
    critic_lr_min: float = 1e-3
    critic_weight_decay: float = 0.0
    lr_warmup_itr: int = 10
    vf_coef: float = 0.5
    clip_vloss: float | None = None
    max_grad_norm: float | None = None
    target_kl: float | None = None
    bc_coef: float = 0.0
    """BC regulariser: log-likelihood of the frozen policy's chains under actor_ft (0 = off)"""
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    critic_activation: Literal["ReLU", "Mish", "GELU", "Tanh", "ELU"] = "Mish"
    critic_residual: bool = True


@register_algorithm("dppo")
class DPPO(Algorithm):
    Config = DPPOConfig
    policy_kind = "diffusion"
    suite_defaults = {
        "robomimic": {"algo.gamma": 0.999, "algo.clip_base": 0.001, "algo.n_critic_warmup_itr": 2,
                      "algo.actor_lr": 1e-4, "algo.actor_lr_min": 1e-4, "algo.update_epochs": 10,
                      "algo.batch_size": 7500},
        # method.md section 4: K = 100 fine-tuned through 5 DDIM steps, std floor 0.04 for sampling
        "furniture": {"algo.gamma": 0.999, "algo.clip": 0.001, "algo.clip_base": 0.001, "algo.n_critic_warmup_itr": 1,
                      "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-6, "algo.update_epochs": 5,
                      "algo.batch_size": 8800, "algo.gamma_denoising": 0.9, "algo.min_sampling_std": 0.04,
                      "algo.use_ddim": True, "algo.ddim_steps": 5, "algo.ft_denoising_steps": 5},
        # tiny test tasks (learning checks): larger steps than the paper's, to learn in seconds
        "test": {"algo.clip": 0.2, "algo.actor_lr": 1e-3, "algo.actor_lr_min": 1e-3, "algo.lr_warmup_itr": 0,
                 "algo.batch_size": 500, "algo.update_epochs": 10},
    }
    presets = {
        "smoke": {"gym": {"algo.batch_size": 64, "algo.update_epochs": 1, "algo.ft_denoising_steps": 5,
                          "algo.lr_warmup_itr": 0},
                  "robomimic": {"algo.batch_size": 64, "algo.update_epochs": 1, "algo.ft_denoising_steps": 5,
                                "algo.lr_warmup_itr": 0, "algo.n_critic_warmup_itr": 1},
                  "furniture": {"algo.batch_size": 64, "algo.update_epochs": 1, "algo.lr_warmup_itr": 0,
                                "algo.ddim_steps": 5}},
        "small": {"gym": {"algo.batch_size": 2500, "algo.update_epochs": 5, "algo.lr_warmup_itr": 2},
                  "robomimic": {"algo.batch_size": 2500, "algo.update_epochs": 10, "algo.lr_warmup_itr": 2},
                  "furniture": {"algo.batch_size": 2200, "algo.lr_warmup_itr": 2},
                  "test": {"train.n_steps": 20}},
        # robomimic: method.md section 4; Transport's sampling-std floor 0.08 as in DPPO's transport config
        "paper": {"gym": {"algo.batch_size": 50_000, "algo.update_epochs": 5},
                  "robomimic": {"algo.batch_size": 7500, "algo.update_epochs": 10},
                  "furniture": {"algo.batch_size": 8800, "algo.update_epochs": 5},
                  "square": {"algo.batch_size": 10_000},
                  "transport": {"algo.batch_size": 10_000, "algo.update_epochs": 5, "algo.min_sampling_std": 0.08}},
    }

    @classmethod
    def check_config(cls, cfg: DPPOConfig) -> None:
        check_residual_mlp(tuple(cfg.critic_hidden), cfg.critic_residual, "algo.critic_residual", "algo.critic_hidden")

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
        self.n_ft = cfg.ft_denoising_steps
        self.first_ft = len(self.chain) - self.n_ft
        self.critic = ValueCritic(ctx.obs_dim, cfg.critic_hidden, cfg.critic_activation, cfg.critic_residual).to(dev)
        self.actor_opt = torch.optim.AdamW(self.actor_ft.parameters(), lr=cfg.actor_lr,
                                           weight_decay=cfg.actor_weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr,
                                            weight_decay=cfg.critic_weight_decay)
        self.reward_scaler = RunningRewardScaler(ctx.n_envs, cfg.gamma, cfg.reward_clip)
        self._set_lrs(0)

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
        cfg, b, dev = self.cfg, obs.shape[0], obs.device
        chain = self.eval_chain if deterministic else self.chain
        x = clipped_randn((b, self.ctx.horizon_steps, self.ctx.act_dim), cfg.randn_clip, generator, dev)
        xs, logps = [], []
        for i in range(len(chain)):
            net = self.actor_ft if (i >= self.first_ft and not use_base) else self.actor
            pos = torch.tensor(i, device=dev)
            mean = chain.mean(pos, x, net(x, chain.timesteps[i].expand(b), obs))
            if deterministic:
                std = eval_std(chain, i)
                x = mean + std * clipped_randn(x.shape, cfg.randn_clip, generator, dev) if std > 0 else mean
                continue
            x_next = mean + chain.std[i].clamp(min=cfg.min_sampling_std) * clipped_randn(
                x.shape, cfg.randn_clip, generator, dev)
            if i >= self.first_ft:
                xs.append(x)
                logps.append(self._step_logprob(mean, chain.std[i].clamp(min=cfg.min_logprob_std), x_next))
            x = x_next
        if deterministic:
            return ActOutput(x)
        xs.append(x)
        return ActOutput(x, {"chains": torch.stack(xs, 1), "logprobs": torch.stack(logps, 1)})

    # ----------------------------------------------------------------------------------------------
    # Update

    def _set_lrs(self, iteration: int) -> None:
        cfg = self.cfg
        set_warmup_cosine_lrs(iteration, self.ctx.n_iterations, cfg.lr_warmup_itr,
                              [(self.actor_opt, cfg.actor_lr, cfg.actor_lr_min),
                               (self.critic_opt, cfg.critic_lr, cfg.critic_lr_min)])

    def advantages(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(advantages, value targets, values), each (T, N): GAE with the critic (a hook for variants)."""
        scaler = self.reward_scaler if self.cfg.reward_scale_running else None
        return rollout_advantages(ro, self.critic, scaler, self.cfg.gamma, self.cfg.gae_lambda)

    def update(self, ro: Rollout, iteration: int) -> dict[str, float]:
        cfg, dev = self.cfg, ro.obs.device
        self._set_lrs(iteration)
        adv, returns, values = (x.flatten(0, 1) for x in self.advantages(ro))
        obs = ro.obs.flatten(0, 1)
        chains = ro.extras["chains"].flatten(0, 1)  # (B, K'+1, Tp, Da)
        old_logp = ro.extras["logprobs"].flatten(0, 1)  # (B, K')
        n_pairs = obs.shape[0] * self.n_ft
        update_actor = iteration >= cfg.n_critic_warmup_itr
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "v_loss", "bc_loss", "approx_kl", "clipfrac", "ratio")}
        stop = False
        for idx in minibatches(n_pairs, cfg.batch_size, cfg.update_epochs, dev):
            b, k = idx // self.n_ft, idx % self.n_ft
            pos = k + self.first_ft
            x_k, x_next, obs_b = chains[b, k], chains[b, k + 1], obs[b]
            mean = self.chain.mean(pos, x_k, self.actor_ft(x_k, self.chain.timesteps[pos], obs_b))
            logp = self._step_logprob(mean, self._pos_std(pos, cfg.min_logprob_std), x_next)
            a = adv[b]
            if cfg.norm_adv:
                a = (a - a.mean()) / (a.std() + 1e-8)
            a = a * cfg.gamma_denoising ** (self.n_ft - 1 - k).float()
            log_ratio = logp - old_logp[b, k]
            ratio = log_ratio.exp()
            clip_k = denoising_clip_schedule(k, self.n_ft, cfg.clip, cfg.clip_base, cfg.clip_rate)
            pg_loss = clipped_surrogate(a, ratio, clip_k).mean()
            v_loss = value_loss(self.critic(obs_b), returns[b], values[b], cfg.clip_vloss)
            # during critic warm-up the actor is not stepped: skip its backward pass too
            loss = (pg_loss if update_actor else pg_loss.detach()) + cfg.vf_coef * v_loss
            if cfg.bc_coef > 0 and update_actor:
                bc_loss = self._bc_loss(obs_b)
                loss = loss + cfg.bc_coef * bc_loss
                stats["bc_loss"].append(bc_loss.item())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"DPPO loss became {loss.item()} at iteration {iteration}")
            ppo_step(loss, self.actor_opt, self.critic_opt, self.actor_ft.parameters(), cfg.max_grad_norm,
                     update_actor)
            with torch.no_grad():
                approx_kl = ((ratio - 1) - log_ratio).mean().item()
                stats["approx_kl"].append(approx_kl)
                stats["clipfrac"].append(((ratio - 1).abs() > clip_k).float().mean().item())
                stats["ratio"].append(ratio.mean().item())
            stats["pg_loss"].append(pg_loss.item())
            stats["v_loss"].append(v_loss.item())
            if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                stop = True
                break
        return update_summary(stats, returns, values, self.actor_opt, self.critic_opt, update_actor, stop)

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

    # ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"actor_ft": self.actor_ft.state_dict(), "critic": self.critic.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "reward_scaler": self.reward_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.actor_ft.load_state_dict(state["actor_ft"])
        self.critic.load_state_dict(state["critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
