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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


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
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError
