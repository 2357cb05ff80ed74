"""`TransitionDataset`: what every dataset loader returns (arrays, episode ends, a content checksum)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from core.errors import BenchError

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


@dataclass
class TransitionDataset:
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool: true environment termination
    timeouts: np.ndarray  # (N,) bool: episode cut without termination (time limit or data end)
    source: str = ""

    def __post_init__(self):
        n = len(self.observations)
        if not all(len(x) == n for x in (self.actions, self.rewards, self.terminals, self.timeouts)):
            raise BenchError(f"dataset {self.source}: arrays have different lengths")
        if n == 0:
            raise BenchError(f"dataset {self.source} is empty")
        for name in ("observations", "actions", "rewards"):
            if not np.isfinite(getattr(self, name)).all():
                raise BenchError(f"dataset {self.source}: non-finite values in {name}")
        self.timeouts = self.timeouts.copy()
        self.timeouts[-1] |= not self.terminals[-1]  # the data's end closes the last episode

    @property
    def checksum(self) -> str:
        h = hashlib.sha256()
        for name in D4RL_KEYS:
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        return h.hexdigest()

    def episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) with ends exclusive."""
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        starts = np.concatenate([[0], ends[:-1]])
        return starts, ends

    def episode_returns(self) -> np.ndarray:
        starts, _ = self.episode_bounds()
        return np.add.reduceat(self.rewards.astype(np.float64), starts)

    def chunk_starts(self, horizon_steps: int) -> np.ndarray:
        """Indices i whose chunk i..i+Tp-1 lies inside one episode (as DPPO's sequence dataset)."""
        starts, ends = self.episode_bounds()
        last_valid = np.repeat(ends - horizon_steps, ends - starts)
        return np.flatnonzero(np.arange(len(self.observations)) <= last_valid)

    def check_dims(self, obs_dim: int, act_dim: int, task: str) -> None:
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise BenchError(f"dataset {self.source}: observations and actions must be 2-D (N, dim), got "
                             f"shapes {self.observations.shape} and {self.actions.shape}")
        if self.observations.shape[1] != obs_dim or self.actions.shape[1] != act_dim:
            raise BenchError(
                f"dataset {self.source} has obs/action dims {self.observations.shape[1]}/"
                f"{self.actions.shape[1]}, task {task!r} needs {obs_dim}/{act_dim}")
