"""Off-policy machinery shared by DIPO, IDQL, DQL, QSM (and DAWR's rollout -> transitions): a FIFO replay
buffer whose contents go in checkpoints, the twin state-action critic with Polyak target updates, and
`OffPolicyAlgorithm`, the update framing they share (buffer add, replay-step count, critic warm-up,
metric means), so that each algorithm writes only its critic and actor steps.

Transitions are per action chunk: `actions` is whatever the algorithm stored (the predicted chunk),
`rewards` the raw chunk reward, `next_obs` the true next observation (the final observation of an
ended episode, never the next episode's first one) and `terminated` a float 0/1 mask that is 1 only for
a true termination, so truncated steps still bootstrap (method.md section 6, defect 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from algorithms.base import (
    ACTOR_CRITIC_LRS,
    ActorCriticConfig,
    Algorithm,
    Rollout,
    optimiser_step,
    raise_if_not_finite,
)
from algorithms.networks import Activation, check_residual_mlp, mlp
from core.errors import BenchError

TRANSITION_KEYS = ("obs", "actions", "rewards", "next_obs", "terminated")


@dataclass
class OffPolicyConfig(ActorCriticConfig):
    """Settings every replay-based diffusion baseline has; defaults are the original Gym configs'.
    An algorithm's Config subclasses this and redeclares a field to change its default."""

    gamma: float = 0.99
    """discount per action chunk, as the original"""
    reward_scale: float = 0.01
    """chunk rewards are multiplied by this in the TD target (original `scale_reward_factor`; robomimic 1)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (chunks); FIFO"""
    batch_size: int = 1000
    replay_ratio: float = 16.0
    """gradient steps per iteration = replay_ratio * new transitions / batch_size (at least 1)"""
    target_tau: float = 0.005
    """Polyak rate of the target networks after every gradient step"""
    n_critic_warmup_itr: int = 5
    """iterations in which only the critics learn"""
    min_sampling_std: float = 0.1
    """floor of the denoising std when sampling (acting and next actions)"""
    randn_clip: float = 3.0
    clip_initial_noise: bool = False
    """also clip the chain's initial noise x_K to +-randn_clip (the original clips only the per-step draws)"""
    critic_residual: bool = False
    """Q networks: the original configs asked for residual MLPs, but a misspelt constructor argument
    (`residual_tyle`, method.md section 6.3) made every original Q critic a plain MLP"""


def transitions_from_rollout(ro: Rollout, actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flatten a time-major rollout (T, N, ...) into T*N transitions (row t*N + n is env n at step t)."""
    T, N = ro.rewards.shape
    ended = ro.terminated | ro.truncated
    next_obs = torch.cat([ro.obs[1:], ro.next_obs[None]], 0)
    next_obs = torch.where(ended[..., None], ro.final_obs, next_obs)
    return {
        "obs": ro.obs.reshape(T * N, -1),
        "actions": actions.reshape(T * N, *actions.shape[2:]),
        "rewards": ro.rewards.reshape(T * N).float(),
        "next_obs": next_obs.reshape(T * N, -1),
        "terminated": ro.terminated.reshape(T * N).float(),
    }


class ReplayBuffer:
    """FIFO ring of transitions on `device`; once full, each new transition overwrites the oldest."""

    def __init__(self, capacity: int, obs_dim: int, action_shape: tuple[int, ...], device: torch.device | str,
                 improved_actions: bool = False):
        if capacity < 1:
            raise ValueError("replay buffer capacity must be >= 1")
        self.capacity, self.device = capacity, torch.device(device)
        self.data = {
            "obs": torch.zeros(capacity, obs_dim, device=self.device),
            "actions": torch.zeros(capacity, *action_shape, device=self.device),
            "rewards": torch.zeros(capacity, device=self.device),
            "next_obs": torch.zeros(capacity, obs_dim, device=self.device),
            "terminated": torch.zeros(capacity, device=self.device),
        }
        if improved_actions:  # a second action column, a copy of the executed one that an algorithm rewrites
            self.data["improved_actions"] = torch.zeros(capacity, *action_shape, device=self.device)
        self.ptr = 0  # next row to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        n = batch["obs"].shape[0]
        start = max(0, n - self.capacity)  # more than capacity at once: only the newest rows survive
        rows = (self.ptr + torch.arange(n - start)) % self.capacity
        rows = rows.to(self.device)
        for k in TRANSITION_KEYS:
            self.data[k][rows] = batch[k][start:].to(self.device, self.data[k].dtype)
        if "improved_actions" in self.data:
            self.data["improved_actions"][rows] = self.data["actions"][rows]
        self.ptr = (self.ptr + n - start) % self.capacity
        self.size = min(self.size + n - start, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Uniform with replacement; "index" (rows) lets a caller write improved actions back."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        index = torch.randint(0, self.size, (batch_size,), generator=generator, device=gen_device).to(self.device)
        out = {k: v[index] for k, v in self.data.items()}
        out["index"] = index
        return out

    def set_actions(self, index: torch.Tensor, actions: torch.Tensor, key: str = "actions") -> None:
        self.data[key][index.to(self.device)] = actions.to(self.device, self.data[key].dtype)

    def state_dict(self) -> dict:
        # rows [0, size) are exactly the filled ones (the ring fills from 0 before it wraps)
        return {"capacity": self.capacity, "ptr": self.ptr, "size": self.size,
                "data": {k: v[: self.size].clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay buffer capacity {self.capacity} != checkpoint's {state['capacity']}")
        self.ptr, self.size = state["ptr"], state["size"]
        for k, v in self.data.items():
            v.zero_()
            v[: self.size] = state["data"][k].to(self.device)


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs on [observation; flattened action chunk] (clipped double Q)."""

    def __init__(self, obs_dim: int, act_shape: tuple[int, ...], hidden: tuple[int, ...],
                 activation: Activation = "Mish", residual: bool = False):
        super().__init__()
        in_dim = obs_dim + int(torch.Size(act_shape).numel())
        self.q1 = mlp(in_dim, hidden, 1, activation, residual)
        self.q2 = mlp(in_dim, hidden, 1, activation, residual)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, actions.reshape(obs.shape[0], -1)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def check_replay_config(cfg) -> None:
    """One-line errors for replay settings no run can use (`buffer_size`, `batch_size`, `replay_ratio`, and
    `target_tau` where the config has one)."""
    for name in ("buffer_size", "batch_size"):
        if getattr(cfg, name) < 1:
            raise BenchError(f"algo.{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.replay_ratio > 0:
        raise BenchError(f"algo.replay_ratio must be > 0, got {cfg.replay_ratio}")
    check_residual_mlp(tuple(cfg.critic_hidden), cfg.critic_residual, "algo.critic_residual", "algo.critic_hidden")
    tau = getattr(cfg, "target_tau", None)
    if tau is not None and not 0 < tau <= 1:
        raise BenchError(f"algo.target_tau must be in (0, 1], got {tau}")


def replay_steps(n_new: int, batch_size: int, replay_ratio: float) -> int:
    """Gradient steps after adding `n_new` transitions: `replay_ratio` per `batch_size` new transitions, as
    the original agents (n_steps * n_envs / batch_size * replay_ratio, truncated), and at least one."""
    return max(1, int(n_new / batch_size * replay_ratio))


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) target + tau source."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)


def twin_q_td_loss(critic: TwinQ, critic_target: TwinQ, batch: dict[str, torch.Tensor], next_actions: torch.Tensor,
                   gamma: float, reward_scale: float = 1.0, act_steps: int | None = None) -> torch.Tensor:
    """The clipped double-Q TD loss of DIPO, DQL and QSM: sum_i mean_b (Q_i(s, a) - y)^2 with
    y = reward_scale * r + gamma * (1 - terminated) * min_j Q'_j(s', a').
    `next_actions` come from whichever actor the algorithm bootstraps with (no gradient flows into y); the
    critics see the first `act_steps` actions of each chunk (the executed ones; None: the whole chunk)."""
    with torch.no_grad():
        next_q = torch.min(*critic_target(batch["next_obs"], next_actions[:, :act_steps]))
        target = reward_scale * batch["rewards"] + gamma * (1.0 - batch["terminated"]) * next_q
    q1, q2 = critic(batch["obs"], batch["actions"][:, :act_steps])
    return ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()


def sequential_mean(values: list[float]) -> float:
    """Sum in step order, then divide (IDQL's and DQL's logged means; np.mean sums pairwise)."""
    total = 0.0
    for v in values:
        total += v
    return total / len(values)


class OffPolicyAlgorithm(Algorithm):
    """Each iteration the rollout's transitions (the stored "actions" chunks) go into `self.buffer`, then
    `replay_steps` gradient steps each draw a uniform batch and run `critic_step(batch)`, `actor_step(batch)`
    (from iteration `n_critic_warmup_itr` on) and `update_targets()`. The steps return metrics (floats);
    the update logs their means (critic metrics, then `logged`, then actor metrics) and raises
    FloatingPointError where one is not finite."""

    lr_schedules = ACTOR_CRITIC_LRS
    check_config = staticmethod(check_replay_config)
    logged: ClassVar[tuple[str, ...]] = ("gradient_steps", "buffer_size", "actor_updated", "actor_lr", "critic_lr")
    """the columns after the critic metrics, in the order earlier runs logged them; "<x>_lr" is self.<x>_opt's"""
    step_mean: ClassVar[Callable[[list[float]], float]] = staticmethod(np.mean)
    buffer: ReplayBuffer

    def critic_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def actor_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def update_targets(self) -> None:
        raise NotImplementedError

    def twin_q_step(self, batch: dict[str, torch.Tensor], next_actions: torch.Tensor,
                    critic_target: TwinQ) -> dict[str, float]:
        """The clipped double-Q TD step of DIPO, DQL and QSM on `self.critic` with `self.critic_opt`."""
        cfg = self.cfg
        critic_loss = twin_q_td_loss(self.critic, critic_target, batch, next_actions, cfg.gamma, cfg.reward_scale,
                                     self.ctx.act_steps)
        optimiser_step(self.critic_opt, critic_loss)
        return {"critic_loss": critic_loss.item()}

    def learn(self, ro: Rollout, iteration: int) -> dict[str, float]:
        cfg = self.cfg
        self.buffer.add(transitions_from_rollout(ro, ro.extras["actions"]))
        n_steps = replay_steps(ro.rewards.numel(), cfg.batch_size, cfg.replay_ratio)
        update_actor = iteration >= cfg.n_critic_warmup_itr
        critic_stats, actor_stats = [], []
        for _ in range(n_steps):
            batch = self.buffer.sample(cfg.batch_size)
            critic_stats.append(self.critic_step(batch))
            if update_actor:
                actor_stats.append(self.actor_step(batch))
            self.update_targets()
        critic, actor = ({k: self.step_mean([s[k] for s in stats]) for k in stats[0]} if stats else {}
                         for stats in (critic_stats, actor_stats))
        raise_if_not_finite(critic | actor, self.name.upper(), iteration)
        counts = {"gradient_steps": float(n_steps), "buffer_size": float(len(self.buffer)),
                  "actor_updated": float(update_actor)}
        logged = {k: counts[k] if k in counts else getattr(self, k.removesuffix("_lr") + "_opt").param_groups[0]["lr"]
                  for k in self.logged}
        return critic | logged | actor
