"""PPO machinery shared by DPPO and the Gaussian/GMM PPO baselines: GAE, running reward scaling, the
clipped surrogate, DPPO's per-denoising-step clip schedule, and warm-up + cosine learning rates."""

from __future__ import annotations

import math

import numpy as np
import torch


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
