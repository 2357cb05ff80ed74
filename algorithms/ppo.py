"""PPO machinery shared by DPPO and the Gaussian/GMM PPO baselines: GAE, running reward scaling, the
clipped surrogate, DPPO's per-denoising-step clip schedule, warm-up + cosine learning rates, and the
pieces of the update loop that do not depend on the policy (advantages of a rollout, shuffled
minibatches, the value loss, the optimiser step, the update's summary statistics)."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from algorithms.base import Rollout


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, dones: torch.Tensor,
        gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al. 2016), time-major (T, N).

    `next_values[t]` is the value to bootstrap from after step t: V(s_{t+1}) inside an episode, 0 after a
    termination, V(true final observation) after a truncation. `dones[t]` (terminated or truncated) stops
    the recursion so no advantage leaks into the next episode.
    """
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    not_done = 1.0 - dones.to(rewards.dtype)
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv


class RunningMeanStd:
    def __init__(self, epsilon: float = 1e-4):
        self.mean, self.var, self.count = 0.0, 1.0, epsilon

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = float(np.mean(x)), float(np.var(x)), x.size
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean, self.var, self.count = self.mean + delta * batch_count / total, m2 / total, total


class RunningRewardScaler:
    """Divide rewards by the running std of the discounted return (with this run's gamma), clip at +-clip."""

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.ret = np.zeros(n_envs)
        self.rms = RunningMeanStd()

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards, dones: (T, N). The running return restarts after each done."""
        rets = np.empty_like(rewards, dtype=np.float64)
        ret = self.ret
        for t in range(len(rewards)):
            ret = ret * self.gamma + rewards[t]
            rets[t] = ret
            ret = np.where(dones[t], 0.0, ret)
        self.ret = ret
        self.rms.update(rets)
        return np.clip(rewards / np.sqrt(self.rms.var + self.epsilon), -self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"ret": self.ret.copy(), "mean": self.rms.mean, "var": self.rms.var, "count": self.rms.count}

    def load_state_dict(self, d: dict) -> None:
        self.ret = np.asarray(d["ret"], dtype=np.float64).copy()
        self.rms.mean, self.rms.var, self.rms.count = d["mean"], d["var"], d["count"]


def clipped_surrogate(advantages: torch.Tensor, ratio: torch.Tensor, clip: torch.Tensor | float) -> torch.Tensor:
    """PPO policy loss per sample: max(-A r, -A clip(r, 1 - c, 1 + c)); `clip` may differ per sample."""
    clipped = torch.maximum(torch.minimum(ratio, 1 + clip), 1 - clip) if torch.is_tensor(clip) else ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(-advantages * ratio, -advantages * clipped)


def denoising_clip_schedule(k: torch.Tensor, n_ft_steps: int, clip: float, base: float, rate: float) -> torch.Tensor:
    """DPPO's clip per fine-tuned denoising step k = 0 (noisiest) .. K'-1 (final):
    base + (clip - base) * (exp(rate * tau) - 1) / (exp(rate) - 1), tau = k / (K' - 1)."""
    if n_ft_steps == 1:
        return torch.full_like(k, clip, dtype=torch.float32)
    tau = k.float() / (n_ft_steps - 1)
    return base + (clip - base) * (torch.exp(rate * tau) - 1) / (math.exp(rate) - 1)


def warmup_cosine_lr(iteration: int, lr: float, lr_min: float, warmup: int, cycle: int) -> float:
    """Linear warm-up from lr_min to lr over `warmup` iterations, then cosine to lr_min at `cycle`
    (the original's CosineAnnealingWarmupRestarts with one cycle)."""
    if iteration < warmup:
        return lr_min + (lr - lr_min) * iteration / max(warmup, 1)
    progress = min(1.0, (iteration - warmup) / max(cycle - warmup, 1))
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))


def set_warmup_cosine_lrs(iteration: int, n_iterations: int, warmup: int,
                          schedules: list[tuple[torch.optim.Optimizer, float, float]]) -> None:
    """Set each (optimiser, lr, lr_min) to `warmup_cosine_lr` at this iteration (one cycle = the run)."""
    for opt, lr, lr_min in schedules:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(iteration, lr, lr_min, warmup, n_iterations)


def rollout_advantages(ro: Rollout, critic: torch.nn.Module, reward_scaler: RunningRewardScaler | None, gamma: float,
                       lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages, returns, values) of a Rollout, each (T, N). Rewards are scaled first when a scaler is
    given; bootstrap values are 0 after a termination and V(true final observation) after a truncation."""
    T, N = ro.rewards.shape
    dones = ro.terminated | ro.truncated
    rewards = ro.rewards.cpu().numpy()
    if reward_scaler is not None:
        rewards = reward_scaler(rewards, dones.cpu().numpy())
    rewards = torch.as_tensor(rewards, dtype=torch.float32, device=ro.obs.device)
    with torch.no_grad():
        values = critic(ro.obs.flatten(0, 1)).view(T, N)
        next_values = torch.cat([values[1:], critic(ro.next_obs)[None]], 0)
        if ro.truncated.any():  # bootstrap from the true final observation, only where needed
            next_values[ro.truncated] = critic(ro.final_obs[ro.truncated])
        next_values = next_values.masked_fill(ro.terminated, 0.0)
    adv = gae(rewards, values, next_values, dones, gamma, lam)
    return adv, adv + values, values


def minibatches(n: int, batch_size: int, epochs: int, device) -> Iterator[torch.Tensor]:
    """Indices of PPO's minibatches: `epochs` shuffled passes over n samples in minibatches of
    min(batch_size, n); a last partial minibatch is dropped, as in the original. Breaking out of the
    loop over this generator ends all epochs (target-KL early stop)."""
    mb = min(batch_size, n)
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for start in range(0, n - mb + 1, mb):
            yield perm[start: start + mb]


def value_loss(v: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor, clip: float | None) -> torch.Tensor:
    """0.5 * MSE(V, return); with `clip`, the max with the loss of V clipped to old_values +- clip."""
    if clip is None:
        return 0.5 * ((v - returns) ** 2).mean()
    v_clipped = old_values + (v - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((v - returns) ** 2, (v_clipped - returns) ** 2).mean()


def ppo_step(loss: torch.Tensor, actor_opt: torch.optim.Optimizer, critic_opt: torch.optim.Optimizer,
             actor_params, max_grad_norm: float | None, update_actor: bool) -> None:
    """One gradient step of actor and critic on a joint loss; the actor is not stepped during critic warm-up."""
    actor_opt.zero_grad(set_to_none=True)
    critic_opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(actor_params, max_grad_norm)
    critic_opt.step()
    if update_actor:
        actor_opt.step()


def update_summary(stats: dict[str, list[float]], returns: torch.Tensor, values: torch.Tensor,
                   actor_opt: torch.optim.Optimizer, critic_opt: torch.optim.Optimizer, update_actor: bool,
                   kl_stop: bool) -> dict[str, float]:
    """Per-update metrics: minibatch means of `stats`, the critic's explained variance of the returns
    (before the update), learning rates, and whether the actor was updated / the epochs stopped early."""
    out = {k: float(np.mean(v)) for k, v in stats.items() if v}
    var_y = returns.var()
    out.update(explained_variance=float(1 - (returns - values).var() / var_y) if var_y > 0 else float("nan"),
               actor_lr=actor_opt.param_groups[0]["lr"], critic_lr=critic_opt.param_groups[0]["lr"],
               actor_updated=float(update_actor), kl_early_stop=float(kl_stop))
    return out
