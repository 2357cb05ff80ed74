"""Vectorised, chunked, normalised task environments.

`ChunkStepper` (per env) executes an action chunk of Ta actions, sums the rewards, and stops early at
termination or truncation, so a chunk never spans two episodes. The gymnasium vector env around it
uses SAME_STEP autoreset: a finished env is reset inside the same call and its true final observation
is returned separately, which is what bootstrapping on truncation needs. `TaskVectorEnv` adds batched
min-max normalisation (observations to [-1, 1], actions from [-1, 1]) and rejects NaN observations.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from core.errors import BenchError
from envs.tasks import TaskSpec

NORM_EPS = 1e-6  # as in DPPO's normalisation


class ChunkStepper(gym.Wrapper):
    def __init__(self, env: gym.Env, act_steps: int):
        super().__init__(env)
        self.act_steps = act_steps
        box = env.action_space
        self.action_space = gym.spaces.Box(
            np.repeat(box.low[None], act_steps, 0), np.repeat(box.high[None], act_steps, 0), dtype=box.dtype
        )

    def step(self, chunk):
        total, info = 0.0, {}
        for i in range(self.act_steps):
            obs, reward, terminated, truncated, info = self.env.step(chunk[i])
            total += float(reward)
            if terminated or truncated:
                break
        info = dict(info, chunk_steps=i + 1)
        return obs, total, terminated, truncated, info


@dataclass
class Normalizer:
    """Min-max normalisation to [-1, 1] with statistics from the pre-training data."""

    obs_min: np.ndarray
    obs_max: np.ndarray
    act_min: np.ndarray
    act_max: np.ndarray

    @classmethod
    def from_data(cls, observations: np.ndarray, actions: np.ndarray) -> "Normalizer":
        f = np.float32
        return cls(observations.min(0).astype(f), observations.max(0).astype(f),
                   actions.min(0).astype(f), actions.max(0).astype(f))

    def normalize_obs(self, obs):
        return (2 * (obs - self.obs_min) / (self.obs_max - self.obs_min + NORM_EPS) - 1).astype(np.float32)

    def normalize_act(self, act):
        return (2 * (act - self.act_min) / (self.act_max - self.act_min + NORM_EPS) - 1).astype(np.float32)

    def unnormalize_act(self, act):
        return (act + 1) / 2 * (self.act_max - self.act_min + NORM_EPS) + self.act_min

    def state_dict(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in self.__dict__.items()}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Normalizer":
        return cls(**{k: np.asarray(v, dtype=np.float32) for k, v in d.items()})


@dataclass
class ChunkStep:
    obs: np.ndarray  # (N, obs_dim) normalised; the reset observation where an episode ended
    reward: np.ndarray  # (N,) sum of the executed steps' rewards
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    final_obs: np.ndarray  # (N, obs_dim) normalised true last observation (valid where done)
    env_steps: np.ndarray  # (N,) steps executed in this chunk
    success: np.ndarray  # (N,) bool, task success reported by the env (False where not defined)


class TaskVectorEnv:
    def __init__(self, task: TaskSpec, n_envs: int, act_steps: int, normalizer: Normalizer,
                 max_episode_steps: int | None = None, vector: str = "sync"):
        self.task, self.n_envs, self.act_steps, self.normalizer = task, n_envs, act_steps, normalizer
        horizon = max_episode_steps or task.max_episode_steps

        def factory():
            return ChunkStepper(task.make_env(task.env_id, horizon), act_steps)

        cls = gym.vector.SyncVectorEnv if vector == "sync" else gym.vector.AsyncVectorEnv
        self.env = cls([factory] * n_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    def _check(self, obs: np.ndarray) -> np.ndarray:
        if not np.isfinite(obs).all():
            bad = np.flatnonzero(~np.isfinite(obs).all(axis=1)).tolist()
            raise BenchError(f"non-finite observation from task {self.task.name!r} in env(s) {bad}")
        return self.normalizer.normalize_obs(obs)

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return self._check(obs)

    def step(self, chunk: np.ndarray) -> ChunkStep:
        """chunk: (N, >=Ta, Da) normalised actions; the first Ta are executed, clipped to [-1, 1]."""
        action = self.normalizer.unnormalize_act(np.clip(chunk[:, : self.act_steps], -1, 1))
        obs, reward, term, trunc, info = self.env.step(action.astype(np.float32))
        done = term | trunc
        final = obs.copy()
        if done.any():
            mask = info["_final_obs"]
            final[mask] = np.stack(info["final_obs"][mask])
        final_info = info.get("final_info", {})
        steps = np.where(done, final_info.get("chunk_steps", self.act_steps), info.get("chunk_steps", self.act_steps))
        success = np.zeros(self.n_envs, bool)
        if "success" in info:
            success = np.where(done, final_info.get("success", False), info["success"]).astype(bool)
        return ChunkStep(self._check(obs), np.asarray(reward, np.float64), term.astype(bool),
                         trunc.astype(bool), self._check(final), np.asarray(steps, np.int64), success)

    def close(self):
        self.env.close()
