"""PPO machinery shared by DPPO and the Gaussian/GMM PPO baselines: GAE, running reward scaling, the
clipped surrogate, DPPO's per-denoising-step clip schedule, the pieces of the update loop that do not
depend on the policy (advantages of a rollout, shuffled minibatches, the value loss, the optimiser step,
the update's summary statistics), and `PPOAlgorithm`, the update loop itself."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from algorithms.base import ACTOR_CRITIC_LRS, Algorithm, Rollout
from algorithms.networks import ValueCritic, check_residual_mlp


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
    """Pooled running mean and variance. `unbiased` divides the pooled sum of squares by count - 1, as the
    original (DPPO's util/reward_scaling.py); False divides by count (the population variance)."""

    def __init__(self, epsilon: float = 1e-4, unbiased: bool = True):
        self.mean, self.var, self.count = 0.0, 1.0, epsilon
        self.unbiased = unbiased

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = float(np.mean(x)), float(np.var(x)), x.size
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        var = m2 / (total - 1) if self.unbiased else m2 / total
        self.mean, self.var, self.count = self.mean + delta * batch_count / total, var, total


class RunningRewardScaler:
    """Divide rewards by the running std of the discounted return (with this run's gamma), clip at +-clip."""

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8, unbiased: bool = True):
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.ret = np.zeros(n_envs)
        self.rms = RunningMeanStd(unbiased=unbiased)

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


@dataclass
class PolicyLoss:
    """A minibatch's policy side, from `PPOAlgorithm.policy_loss`."""

    samples: torch.Tensor  # the rollout samples (env steps) of the minibatch, for the critic
    pg_loss: torch.Tensor
    actor_loss: torch.Tensor  # pg_loss and any bonus on the actor alone (not stepped during critic warm-up)
    ratio: torch.Tensor
    log_ratio: torch.Tensor
    clip: torch.Tensor | float
    regulariser: torch.Tensor | None = None  # added after the value loss (only while the actor learns)
    stats: dict[str, float] = field(default_factory=dict)


class PPOAlgorithm(Algorithm):
    """The PPO update of DPPO and Gaussian/GMM PPO: GAE advantages with a V(s) critic (rewards scaled by a
    running return std), then `update_epochs` passes of minibatches of the flattened rollout, each a joint
    step of the clipped surrogate (`policy_loss`, per algorithm) and the value loss, stopped early past
    `target_kl`. An algorithm sets `self.actor_ft` before calling `build_critic`."""

    lr_schedules = ACTOR_CRITIC_LRS
    state_parts = ("actor_ft", "critic", "actor_opt", "critic_opt", "reward_scaler")
    extra_stats: tuple[str, ...] = ()  # minibatch metrics of `PolicyLoss.stats`, logged after v_loss
    samples_per_step = 1  # PPO samples per env step (DPPO: one per fine-tuned denoising step)
    actor_ft: torch.nn.Module

    @classmethod
    def check_config(cls, cfg) -> None:
        check_residual_mlp(tuple(cfg.critic_hidden), cfg.critic_residual, "algo.critic_residual", "algo.critic_hidden")

    def build_critic(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.critic = ValueCritic(ctx.obs_dim, cfg.critic_hidden, cfg.critic_activation, cfg.critic_residual).to(ctx.device)
        self.actor_opt = torch.optim.AdamW(self.actor_ft.parameters(), lr=cfg.actor_lr,
                                           weight_decay=cfg.actor_weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr,
                                            weight_decay=cfg.critic_weight_decay)
        self.reward_scaler = RunningRewardScaler(ctx.n_envs, cfg.gamma, cfg.reward_clip,
                                                 unbiased=cfg.reward_var_unbiased)

    def advantages(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(advantages, value targets, values), each (T, N): GAE with the critic (a hook for variants)."""
        scaler = self.reward_scaler if self.cfg.reward_scale_running else None
        return rollout_advantages(ro, self.critic, scaler, self.cfg.gamma, self.cfg.gae_lambda)

    def policy_loss(self, data: dict[str, torch.Tensor], idx: torch.Tensor, adv: torch.Tensor,
                    update_actor: bool) -> PolicyLoss:
        """The minibatch `idx` (into the flattened PPO samples) of `data` (obs and the act extras, flattened
        to one row per env step) with the env steps' advantages `adv`."""
        raise NotImplementedError

    def learn(self, ro: Rollout, iteration: int) -> dict[str, float]:
        cfg = self.cfg
        adv, returns, values = (x.flatten(0, 1) for x in self.advantages(ro))
        data = {"obs": ro.obs.flatten(0, 1)} | {k: v.flatten(0, 1) for k, v in ro.extras.items()}
        update_actor = iteration >= cfg.n_critic_warmup_itr
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "v_loss", *self.extra_stats, "approx_kl",
                                                         "clipfrac", "ratio")}
        stop = False
        n = data["obs"].shape[0] * self.samples_per_step
        for idx in minibatches(n, cfg.batch_size, cfg.update_epochs, ro.obs.device):
            pl = self.policy_loss(data, idx, adv, update_actor)
            b = pl.samples
            v_loss = value_loss(self.critic(data["obs"][b]), returns[b], values[b], cfg.clip_vloss)
            # during critic warm-up the actor is not stepped: skip its backward pass too
            loss = (pl.actor_loss if update_actor else pl.actor_loss.detach()) + cfg.vf_coef * v_loss
            if pl.regulariser is not None:
                loss = loss + pl.regulariser
            for k, v in pl.stats.items():
                stats[k].append(v)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.name.upper()} loss became {loss.item()} at iteration {iteration}")
            ppo_step(loss, self.actor_opt, self.critic_opt, self.actor_ft.parameters(), cfg.max_grad_norm,
                     update_actor)
            with torch.no_grad():
                approx_kl = ((pl.ratio - 1) - pl.log_ratio).mean().item()
                stats["approx_kl"].append(approx_kl)
                stats["clipfrac"].append(((pl.ratio - 1).abs() > pl.clip).float().mean().item())
                stats["ratio"].append(pl.ratio.mean().item())
            stats["pg_loss"].append(pl.pg_loss.item())
            stats["v_loss"].append(v_loss.item())
            if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                stop = True
                break
        return update_summary(stats, returns, values, self.actor_opt, self.critic_opt, update_actor, stop)
