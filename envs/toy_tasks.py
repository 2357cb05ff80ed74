"""Tiny tasks for checking in seconds that an algorithm learns (suite "toy").

`bimodal_bandit` — the learning check every algorithm must pass: a contextual bandit with two equally
good action modes, so the return reflects only the action (see its section below).

`point_reach` — a short multi-step task (credit assignment over 5 chunks).

A point in the square [-1, 1]^2 must reach a goal: observation (x, y, goal_x, goal_y), action a velocity
in [-1, 1]^2 (the point moves 0.1 * a per step, clipped to the square), reward -||position - goal|| after
each step, 20 steps per episode (truncation, no termination), success = within 0.1 of the goal at some
step. The built-in demonstrations come from operators who each move at their own speed (0.15 to 0.8 of
the maximum) with noise, so a policy cloned from them reaches the goal, but slowly; moving at full speed
is what fine-tuning has to find. The normalised score uses a uniformly random policy (0) and the
full-speed expert (100) as references, measured over 100k seeded episodes (`reference_returns`).
"""

from __future__ import annotations

import hashlib
import json

import gymnasium as gym
import numpy as np

from core.errors import BenchError
from envs.tasks import TaskSpec, register_task

STEP_SIZE = 0.1
EPISODE_STEPS = 20
SUCCESS_RADIUS = 0.1
DATA_VERSION = 1


def step_positions(pos: np.ndarray, goal: np.ndarray, action: np.ndarray):
    """Batched dynamics: (new positions, rewards, success flags)."""
    pos = np.clip(pos + STEP_SIZE * np.clip(action, -1.0, 1.0), -1.0, 1.0)
    dist = np.linalg.norm(pos - goal, axis=-1)
    return pos, -dist, dist < SUCCESS_RADIUS


def expert_action(pos: np.ndarray, goal: np.ndarray, speed: np.ndarray | float = 1.0) -> np.ndarray:
    """Move straight at the goal at `speed` (a fraction of the maximum), slowing down on arrival."""
    delta = goal - pos
    dist = np.linalg.norm(delta, axis=-1, keepdims=True)
    want = delta / STEP_SIZE  # the action that lands exactly on the goal
    norm = np.maximum(dist / STEP_SIZE, 1e-9)
    return want * np.minimum(1.0, np.asarray(speed).reshape(-1, 1) / norm)


class PointReachEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, max_episode_steps: int = EPISODE_STEPS):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.max_episode_steps = max_episode_steps

    def _obs(self):
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.goal = self.np_random.uniform(-1, 1, (2, 2))
        self.t = 0
        return self._obs(), {"success": False}

    def step(self, action):
        pos, reward, success = step_positions(self.pos[None], self.goal[None], np.asarray(action)[None])
        self.pos, self.t = pos[0], self.t + 1
        return self._obs(), float(reward[0]), False, self.t >= self.max_episode_steps, {"success": bool(success[0])}


def make_point_reach_env(env_id: str, max_episode_steps: int) -> gym.Env:
    return PointReachEnv(max_episode_steps)


def rollout_returns(policy, n_episodes: int, seed: int) -> np.ndarray:
    """Returns of `policy(pos, goal, rng) -> action` over seeded episodes, all episodes batched."""
    rng = np.random.default_rng(seed)
    pos, goal = rng.uniform(-1, 1, (2, n_episodes, 2))
    total = np.zeros(n_episodes)
    for _ in range(EPISODE_STEPS):
        pos, reward, _ = step_positions(pos, goal, policy(pos, goal, rng))
        total += reward
    return total


def reference_returns(n_episodes: int = 100_000, seed: int = 0) -> tuple[float, float]:
    """(random, expert) mean returns; the constants below were computed with this function."""
    rand = rollout_returns(lambda p, g, rng: rng.uniform(-1, 1, p.shape), n_episodes, seed).mean()
    expert = rollout_returns(lambda p, g, rng: expert_action(p, g), n_episodes, seed).mean()
    return float(rand), float(expert)


REF_RANDOM_RETURN = -20.9276
REF_EXPERT_RETURN = -6.1385


def make_demonstrations(n_transitions: int, seed: int):
    """Episodes from operators of random speed U(0.15, 0.8) with action noise N(0, 0.2); all batched."""
    n_episodes = -(-n_transitions // EPISODE_STEPS)
    rng = np.random.default_rng(seed)
    pos, goal = rng.uniform(-1, 1, (2, n_episodes, 2))
    speed = rng.uniform(0.15, 0.8, n_episodes)
    obs, act, rew = [], [], []
    for _ in range(EPISODE_STEPS):
        a = np.clip(expert_action(pos, goal, speed) + rng.normal(0, 0.2, pos.shape), -1, 1)
        obs.append(np.concatenate([pos, goal], 1))
        act.append(a)
        pos, r, _ = step_positions(pos, goal, a)
        rew.append(r)
    # (T, E, ...) -> episode-major (E * T, ...)
    flat = [np.swapaxes(np.stack(x), 0, 1).reshape(n_episodes * EPISODE_STEPS, -1) for x in (obs, act, rew)]
    timeouts = np.zeros(n_episodes * EPISODE_STEPS, bool)
    timeouts[EPISODE_STEPS - 1:: EPISODE_STEPS] = True
    return flat[0].astype(np.float32), flat[1].astype(np.float32), flat[2][:, 0].astype(np.float32), timeouts


def builtin_point_reach_dataset(task_name: str, data, make_missing: bool, log, force: bool = False):
    if data.n_transitions < EPISODE_STEPS:
        raise BenchError(f"data.n_transitions must be at least {EPISODE_STEPS} for {task_name}")
    return _cached_demonstrations(task_name, data, make_missing, log, make_demonstrations,
                                  [DATA_VERSION, STEP_SIZE, EPISODE_STEPS], force)


# ---------------------------------------------------------------------------------------------------
# bimodal_bandit: one step per episode. Context c ~ U(-1, 1); action a in [-1, 1]^2; two optimal
# actions m+(c) = (c, 0.6) and m-(c) = (-c, -0.6); reward = exp(-d^2 / (2 * 0.15^2)) with d the distance
# to the nearer mode (1 at a mode). Demonstrators pick a mode at random and miss it by N(0, 0.3^2) per
# dimension, so the cloned policy is bimodal (a unimodal fit lands between the modes) and imprecise.

BANDIT_WIDTH = 0.15
BANDIT_DEMO_NOISE = 0.3


def bandit_modes(context: np.ndarray) -> np.ndarray:
    """(..., 2 modes, 2 dims) optimal actions for contexts (...)."""
    c = np.asarray(context, dtype=np.float64)
    plus = np.stack([c, np.full_like(c, 0.6)], -1)
    return np.stack([plus, -plus], -2)


def bandit_reward(context: np.ndarray, action: np.ndarray) -> np.ndarray:
    d2 = ((np.clip(action, -1, 1)[..., None, :] - bandit_modes(context)) ** 2).sum(-1).min(-1)
    return np.exp(-d2 / (2 * BANDIT_WIDTH**2))


class BimodalBanditEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, max_episode_steps: int = 1):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.context = float(self.np_random.uniform(-1, 1))
        return np.array([self.context], np.float32), {"success": False}

    def step(self, action):
        reward = float(bandit_reward(np.array(self.context), np.asarray(action)))
        # one step per episode: the episode is over (a termination: nothing to bootstrap from)
        return np.array([self.context], np.float32), reward, True, False, {"success": reward > 0.5}


def make_bandit_env(env_id: str, max_episode_steps: int) -> gym.Env:
    return BimodalBanditEnv()


def bandit_reference_returns(n: int = 1_000_000, seed: int = 0) -> tuple[float, float]:
    """(uniformly random, expert) mean rewards; the expert always hits a mode (1)."""
    rng = np.random.default_rng(seed)
    return float(bandit_reward(rng.uniform(-1, 1, n), rng.uniform(-1, 1, (n, 2))).mean()), 1.0


BANDIT_REF_RANDOM = 0.0662


def make_bandit_demonstrations(n: int, seed: int):
    rng = np.random.default_rng(seed)
    context = rng.uniform(-1, 1, n)
    mode = rng.integers(0, 2, n)
    action = np.clip(bandit_modes(context)[np.arange(n), mode] + rng.normal(0, BANDIT_DEMO_NOISE, (n, 2)), -1, 1)
    return context[:, None].astype(np.float32), action.astype(np.float32), bandit_reward(context, action).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Built-in datasets of the test tasks (D4RL layout, cached and checksummed like the Gym ones)


def _cached_demonstrations(task_name: str, data, make_missing: bool, log, make, version_tag: list,
                           force: bool = False):
    """Made on first use (or with `force`), with its checksum sidecar written before the data file (see
    `envs.transitions`), and verified against it; one without a valid sidecar is made again."""
    from core.paths import cache_root
    from envs.datasets import TransitionDataset, load_checked_d4rl_hdf5, write_d4rl_hdf5
    from envs.transitions import builtin_needs_making

    tag = hashlib.sha256(json.dumps(version_tag).encode()).hexdigest()[:8]
    path = cache_root() / "data" / task_name / f"demos-{data.n_transitions}-seed{data.seed}-{tag}.hdf5"
    if builtin_needs_making(path, task_name, make_missing, force, log):
        obs, act, rew, timeouts = make(data.n_transitions, data.seed)
        ds = TransitionDataset(obs, act, rew, np.zeros(len(obs), bool), timeouts, source=str(path))
        returns = ds.episode_returns()
        attrs = {"task": task_name, "seed": data.seed, "n_episodes": int(len(returns)),
                 "mean_return": float(returns.mean())}
        write_d4rl_hdf5(path, ds, attrs=attrs, sidecar=dict(attrs, checksum=ds.checksum))
        log(f"wrote {path}: {len(obs)} transitions, {len(returns)} episodes, mean return {returns.mean():.3f}")
    return load_checked_d4rl_hdf5(path, task_name)


def builtin_bandit_dataset(task_name: str, data, make_missing: bool, log, force: bool = False):
    def make(n, seed):
        obs, act, rew = make_bandit_demonstrations(n, seed)
        return obs, act, rew, np.ones(n, bool)  # every step is a whole episode (stored as timeouts)

    return _cached_demonstrations(task_name, data, make_missing, log, make,
                                  [DATA_VERSION, BANDIT_WIDTH, BANDIT_DEMO_NOISE], force)


register_task(TaskSpec(
    name="bimodal_bandit", suite="toy", env_id="BimodalBandit", obs_dim=1, act_dim=2,
    max_episode_steps=1, horizon_steps=1, act_steps=1,
    ref_random_return=BANDIT_REF_RANDOM, ref_expert_return=1.0, metric="return",
    make_env=make_bandit_env, builtin_dataset=builtin_bandit_dataset,
    description="contextual bandit, two optimal action modes, noisy demonstrators; the learning check",
))

register_task(TaskSpec(
    name="point_reach", suite="toy", env_id="PointReach", obs_dim=4, act_dim=2,
    max_episode_steps=EPISODE_STEPS, horizon_steps=4, act_steps=4,
    ref_random_return=REF_RANDOM_RETURN, ref_expert_return=REF_EXPERT_RETURN, metric="return",
    make_env=make_point_reach_env, builtin_dataset=builtin_point_reach_dataset,
    description="2-D point reaching a goal, slow demonstrators; for quick learning checks (seconds)",
))
