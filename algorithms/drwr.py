"""DRWR: reward-weighted regression (Peters & Schaal 2007) on a diffusion policy, DPPO's on-policy baseline.

Each iteration the whole pre-trained network is fine-tuned by diffusion behaviour cloning on its own
samples, each weighted by its Monte-Carlo return (method.md section 5):

    G_t = r_t + gamma * G_{t+1} within an episode (chunk rewards, gamma once per chunk; 0 after its end),
    w   = min(exp(beta * (G - mean G) / (std G + 1e-3)), w_max)    over the samples of the iteration,
    loss = mean_b  w_b * || eps - eps_theta(x_t(x0_b), t, s_b) ||^2,   x0_b = the executed chunk.

A return needs the episode's end. Steps whose episode is still running when the rollout stops are, by
default, held back and trained on in the iteration in which their episode ends (`incomplete_episodes =
"defer"`), so every step is used once with its true return (a held step was sampled by the policy of
an earlier iteration, at most one episode back: slightly off-policy). The original code (`"drop"`) discarded
them, and also the steps of an episode that began in the previous iteration and one-step episodes: that
keeps short, failed episodes and throws away most of every long one (the bias of method.md section 6,
item 7). `"drop"` here discards only the running episodes' steps. A time-limit truncation ends the return
(there is no critic to bootstrap from), as in the original.

x0 is the sampled chunk as the environment executed it, i.e. clipped to [-1, 1] (the env wrapper clips;
the original regressed on the unclipped sample); with Tp > Ta its unexecuted tail is the policy's own
sample. The sampler is the pre-trained DDPM chain with the sampling std floored at `min_sampling_std`
and draws clipped to +-`randn_clip`; evaluation is deterministic like DPPO's (`eval_std`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from algorithms.base import (
    ActOutput,
    AlgoContext,
    Algorithm,
    Rollout,
    optimiser_step,
    raise_if_not_finite,
)
from algorithms.diffusion import DiffusionPolicy, initial_noise_clip
from algorithms.ppo import gae, minibatches
from algorithms.registry import register_algorithm
from core.errors import BenchError


@dataclass
class DRWRConfig:
    gamma: float = 0.99
    """discount per chunk"""
    beta: float = 10.0
    """inverse temperature of the exponential weights"""
    max_weight: float = 100.0
    """weights are capped at this value"""
    incomplete_episodes: Literal["defer", "drop"] = "defer"
    """steps of episodes still running at the end of a rollout: train on them once the episode ends
    ("defer"), or discard them ("drop", as the original)"""
    batch_size: int = 1000
    update_epochs: int = 16
    """passes over the iteration's samples; the last partial minibatch of a pass is skipped (as the original)"""
    lr: float = 1e-4
    lr_min: float = 1e-4
    lr_warmup_itr: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    min_sampling_std: float = 0.1
    randn_clip: float = 3.0
    clip_initial_noise: bool = False
    """also clip the chain's initial noise x_K to +-randn_clip (the original clips only the per-step draws)"""


def normalized_exp_weights(scores: torch.Tensor, beta: float, max_weight: float, eps: float,
                           unbiased: bool) -> torch.Tensor:
    """min(exp(beta * (x - mean x) / (std x + eps)), max_weight) over the given samples."""
    z = (scores - scores.mean()) / (scores.std(unbiased=unbiased) + eps) if scores.numel() > 1 else scores * 0
    return torch.exp(beta * z).clamp(max=max_weight)


def episode_has_ended(ended: torch.Tensor) -> torch.Tensor:
    """(T, N) bool: True at t where the same env's episode ends at some step >= t inside the window."""
    return ended.int().flip(0).cummax(0).values.flip(0).bool()


class DiffusionRegression(Algorithm):
    """What DRWR and DAWR share: the whole pre-trained network, sampled with a floored std, fine-tuned by
    weighted diffusion behaviour cloning on the chunks it executed."""

    def __init__(self, cfg, ctx: AlgoContext, pretrained: DiffusionPolicy, lr: float, weight_decay: float):
        super().__init__(cfg, ctx, pretrained)
        # a copy: the harness checkpoints `pretrained` as the pre-trained policy
        self.policy = copy.deepcopy(pretrained).to(ctx.device).requires_grad_(True).train()
        self.actor_opt = torch.optim.AdamW(self.policy.network.parameters(), lr=lr, weight_decay=weight_decay)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        x = self.policy.sample(obs, min_std=self.cfg.min_sampling_std, deterministic=deterministic,
                               randn_clip=self.cfg.randn_clip, generator=generator,
                               initial_clip=initial_noise_clip(self.cfg))
        return ActOutput(x) if deterministic else ActOutput(x, {"actions": x.clamp(-1.0, 1.0)})

    def weighted_bc_step(self, chunks: torch.Tensor, obs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One AdamW step on mean_b w_b * diffusion-MSE_b; returns the (detached) loss, checked by the caller
        once per update (no host sync per step)."""
        loss = (weights * self.policy.loss(chunks, obs, reduction="none")).mean()
        optimiser_step(self.actor_opt, loss, self.policy.network.parameters(), self.cfg.max_grad_norm)
        return loss.detach()


@register_algorithm("drwr")
class DRWR(DiffusionRegression):
    Config = DRWRConfig
    policy_kind = "diffusion"
    lr_schedules: ClassVar = {"actor_opt": ("lr", "lr_min")}
    state_parts = ("policy.network", "actor_opt", "held", "last_next_obs")

    @classmethod
    def check_config(cls, cfg: DRWRConfig) -> None:
        for name in ("batch_size", "update_epochs"):
            if getattr(cfg, name) < 1:
                raise BenchError(f"algo.{name} must be >= 1, got {getattr(cfg, name)}")

    def __init__(self, cfg: DRWRConfig, ctx: AlgoContext, pretrained: DiffusionPolicy):
        super().__init__(cfg, ctx, pretrained, cfg.lr, cfg.weight_decay)
        # steps of still-running episodes, time-major (P, N, ...), and which of them are waiting (P, N)
        n, dev = ctx.n_envs, ctx.device
        self.held = {"obs": torch.zeros(0, n, ctx.obs_dim, device=dev),
                     "actions": torch.zeros(0, n, ctx.horizon_steps, ctx.act_dim, device=dev),
                     "rewards": torch.zeros(0, n, device=dev),
                     "ended": torch.zeros(0, n, dtype=torch.bool, device=dev),
                     "waiting": torch.zeros(0, n, dtype=torch.bool, device=dev)}
        self.last_next_obs: torch.Tensor | None = None  # where the held steps left off

    def _samples(self, ro: Rollout):
        """(obs, chunks, returns) of every step whose episode has ended; holds back the others when deferring."""
        if self.last_next_obs is not None and self.held["ended"].shape[0]:
            # envs that did not continue from where they stopped (reset on resume without env state):
            # their held episodes never get an end, so they are dropped and cut off from the new data
            cut = (self.last_next_obs != ro.obs[0]).any(-1)
            self.held["waiting"][:, cut] = False
            self.held["ended"][-1, cut] = True
        self.last_next_obs = ro.next_obs.clone()
        new = {"obs": ro.obs, "actions": ro.extras["actions"], "rewards": ro.rewards,
               "ended": ro.terminated | ro.truncated, "waiting": torch.ones_like(ro.terminated)}
        win = {k: torch.cat([self.held[k], v]) for k, v in new.items()}  # held steps precede the rollout
        # the discounted return-to-go is GAE with V = 0 and lambda = 1; an episode end stops the sum
        zeros = torch.zeros_like(win["rewards"])
        returns = gae(win["rewards"], zeros, zeros, win["ended"], self.cfg.gamma, 1.0)
        complete = episode_has_ended(win["ended"])
        if self.cfg.incomplete_episodes == "defer":
            # each env's running episode is a suffix of the window: keep the longest such suffix
            n_keep = int((~complete).sum(0).max())
            self.held = {k: v[v.shape[0] - n_keep:] for k, v in win.items()}
            self.held["waiting"] = self.held["waiting"] & ~complete[complete.shape[0] - n_keep:]
        use = win["waiting"] & complete
        return win["obs"][use], win["actions"][use], returns[use]

    def learn(self, ro: Rollout, iteration: int) -> dict[str, float]:
        cfg = self.cfg
        obs, chunks, returns = self._samples(ro)
        n = returns.numel()
        stats = {"samples": float(n), "held_back": float(self.held["waiting"].sum()),
                 "lr": self.actor_opt.param_groups[0]["lr"]}
        if n == 0:  # no episode ended yet: nothing has a return
            return stats
        weights = normalized_exp_weights(returns, cfg.beta, cfg.max_weight, eps=1e-3, unbiased=False)
        losses = [self.weighted_bc_step(chunks[idx], obs[idx], weights[idx])
                  for idx in minibatches(n, cfg.batch_size, cfg.update_epochs, returns.device)]
        stats.update(loss=float(torch.stack(losses).mean()), return_mean=float(returns.mean()),
                     weight_mean=float(weights.mean()), weight_max=float(weights.max()),
                     capped_frac=float((weights >= cfg.max_weight).float().mean()))
        raise_if_not_finite({"loss": stats["loss"]}, "DRWR", iteration)
        return stats
