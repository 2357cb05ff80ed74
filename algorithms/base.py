"""The algorithm interface.

The harness (bench.runner) owns the loop, the env-step budget, seeding, evaluation, logging and
checkpoints. An algorithm owns its networks, how it acts, and how it updates. Each iteration the
harness collects `n_steps` chunks from every env into a `Rollout` and calls `update(rollout, iteration)`:

- on-policy algorithms (DPPO, Gaussian/GMM PPO, DRWR) update on that rollout and drop it;
- off-policy algorithms (DIPO, IDQL, DQL, QSM) append its transitions to their replay buffer (the
  `final_obs` of a truncated step is its true next observation) and take their replay-ratio gradient
  steps; they use small `n_steps`, as the original code's off-policy agents do.

Algorithms never write files, seed RNGs or step envs. Everything needed to resume goes in
`state_dict()` (networks, optimisers, schedulers, running statistics).

The base class owns the plumbing; an algorithm declares
- `lr_schedules`: optimiser attribute -> (config field of its lr, of its lr_min); `update` sets each to the
  warm-up cosine schedule (`cfg.lr_warmup_itr`, one cycle = the run) before calling `learn`;
- `state_parts`: attribute paths saved by `state_dict` under their last name ("policy.network" ->
  "network"): anything with state_dict/load_state_dict, or plain tensors (dicts of them, None);
and implements `act` and `learn(rollout, iteration)`, its update.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from algorithms.networks import Activation
from algorithms.schedules import set_warmup_cosine_lrs


@dataclass
class AlgoContext:
    """What the harness tells an algorithm about the run it is part of."""

    obs_dim: int
    act_dim: int
    horizon_steps: int  # Tp
    act_steps: int  # Ta
    n_envs: int
    n_steps: int  # chunks per env per iteration
    n_iterations: int
    suite: str
    device: torch.device


@dataclass
class Rollout:
    """One iteration of on-policy data, time-major: (T = n_steps, N = n_envs, ...), on the algorithm's device.

    `rewards` are the raw chunk rewards (sum of the executed steps). An episode ends after step t where
    `terminated[t] | truncated[t]`; then `obs[t + 1]` is the next episode's first observation and
    `final_obs[t]` the true last observation of the ended one (bootstrap from it on truncation).
    """

    obs: torch.Tensor  # (T, N, obs_dim)
    extras: dict[str, torch.Tensor]  # whatever `act` returned to store, each (T, N, ...)
    rewards: torch.Tensor  # (T, N)
    terminated: torch.Tensor  # (T, N) bool
    truncated: torch.Tensor  # (T, N) bool
    final_obs: torch.Tensor  # (T, N, obs_dim), valid where terminated | truncated
    next_obs: torch.Tensor  # (N, obs_dim), observation after the last step


@dataclass
class ActorCriticConfig:
    """Config fields of every algorithm with an actor and a critic optimiser (AdamW, warm-up cosine LRs) and
    an MLP critic; an algorithm's Config subclasses this and redeclares a field to change its default."""

    actor_lr: float = 1e-4
    actor_lr_min: float = 1e-4
    actor_weight_decay: float = 0.0
    critic_lr: float = 1e-3
    critic_lr_min: float = 1e-3
    critic_weight_decay: float = 0.0
    lr_warmup_itr: int = 10
    """linear warm-up of the learning rates from their minimum, then cosine to the minimum"""
    max_grad_norm: float | None = None
    """actor gradient-norm clipping (None = off, as the original configs)"""
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    critic_activation: Activation = "Mish"
    critic_residual: bool = True


ACTOR_CRITIC_LRS = {"actor_opt": ("actor_lr", "actor_lr_min"), "critic_opt": ("critic_lr", "critic_lr_min")}


@dataclass
class ActOutput:
    actions: torch.Tensor  # (N, Tp, Da) normalised action chunk
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-env data for the rollout


class Algorithm:
    name: ClassVar[str] = ""
    Config: ClassVar[type]
    policy_kind: ClassVar[str] = "diffusion"  # which pre-trained policy `bench run` starts from
    # Dotted config overrides per suite (e.g. {"robomimic": {"algo.gamma": 0.999}}) and per preset.
    suite_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    lr_schedules: ClassVar[dict[str, tuple[str, str]]] = {}
    state_parts: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise a one-line BenchError for values no run can use. Called when the run config is composed
        (before any data is made or policy pre-trained) and again when the algorithm is built."""

    def __init__(self, cfg, ctx: AlgoContext, pretrained):
        type(self).check_config(cfg)
        self.cfg, self.ctx = cfg, ctx

    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        """Batched over envs. `generator` (given by evaluation) makes the draws independent of training."""
        raise NotImplementedError

    def update(self, rollout: Rollout, iteration: int) -> dict[str, float]:
        """The harness's entry: this iteration's learning rates, then the algorithm's update."""
        cfg = self.cfg
        set_warmup_cosine_lrs(iteration, self.ctx.n_iterations, getattr(cfg, "lr_warmup_itr", 0),
                              [(getattr(self, opt), getattr(cfg, lr), getattr(cfg, lr_min))
                               for opt, (lr, lr_min) in self.lr_schedules.items()])
        return self.learn(rollout, iteration)

    def learn(self, rollout: Rollout, iteration: int) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {path.rpartition(".")[2]: _saved(operator.attrgetter(path)(self)) for path in self.state_parts}

    def load_state_dict(self, state: dict) -> None:
        for path in self.state_parts:
            owner_path, _, name = path.rpartition(".")
            owner = operator.attrgetter(owner_path)(self) if owner_path else self
            part = getattr(owner, name)
            if hasattr(part, "load_state_dict"):
                part.load_state_dict(state[name])
            else:
                setattr(owner, name, _to_device(state[name], self.ctx.device))


def _saved(part):
    if hasattr(part, "state_dict"):
        return part.state_dict()
    return _to_device(part, None)


def _to_device(value, device):
    """A copy of plain tensor state (a tensor, a dict of them, or None) on `device` (None: where it is)."""
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if value is None:
        return None
    return value.clone() if device is None else value.to(device)


def raise_if_not_finite(losses: dict[str, float], algo: str, iteration: int) -> None:
    """FloatingPointError naming the losses that are NaN or infinite (e.g. the means over an update's steps:
    one non-finite step makes its mean non-finite)."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"{algo} losses became non-finite at iteration {iteration}: {bad}")


def optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip_params=None,
                   max_grad_norm: float | None = None) -> None:
    """One gradient step on `loss`; with `max_grad_norm`, the gradient of `clip_params` is norm-clipped first."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, max_grad_norm)
    opt.step()
