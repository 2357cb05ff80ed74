"""Furniture datasets: scripted one_leg demonstrations in robomimic's hdf5 layout (`envs.robomimic_data`).

Observation keys: `robot_state` (16) and `parts_poses` (7 per part and the obstacle), concatenated in that
order as furniture-bench's `robot_state` + `parts_poses`. `states` holds MuJoCo qpos and qvel. The file's
env_args name the simulator (`FurnitureSimMuJoCo`), the furniture and the randomness level; a file made
for another task is refused. As in the paper's data (50 human demos per task), the built-in set is 50
successful demos of the imperfect "mh" expert style by default; failed attempts are dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from core.errors import BenchError
from core.paths import cache_root
from envs.transitions import TransitionDataset
from envs.robomimic_data import Demo, DemoSuite, builtin_demo_dataset, read_robomimic_hdf5, to_transition_dataset

DATA_VERSION = 1
OBS_KEYS = ("robot_state", "parts_poses")
ENV_NAME = "FurnitureSimMuJoCo"
SOURCES = ("furniture_sim.py", "furniture_expert.py", "furniture_data.py")


def env_args(task_name: str) -> dict:
    from envs.tasks import get_task

    furniture, _, randomness = get_task(task_name).env_id.rpartition("_")
    return {"env_name": ENV_NAME, "type": 4, "env_kwargs": {"furniture": furniture, "randomness": randomness}}


def expert_tag() -> str:
    h = hashlib.sha256(f"v{DATA_VERSION}".encode())
    for name in SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:8]


def builtin_path(task_name: str, n_demos: int, quality: str, seed: int) -> Path:
    return cache_root() / "data" / task_name / f"{quality}-{n_demos}demos-seed{seed}-{expert_tag()}.hdf5"


_ENV: dict = {}


def rollout_demo(task_name: str, seed: int, index: int, quality: str) -> tuple[Demo, bool]:
    """Demo `index`: env reset and expert noise drawn from (seed, index) only."""
    from envs.furniture_expert import STYLES, OneLegExpert
    from envs.tasks import get_task

    if _ENV.get("task") != task_name:
        task = get_task(task_name)
        _ENV.update(task=task_name, env=task.make_env(task.env_id, task.max_episode_steps))
    env = _ENV["env"]
    rng = np.random.default_rng([seed, index])
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    expert = OneLegExpert(env, rng, STYLES[quality])
    observations, actions, rewards, states = [obs], [], [], []
    success = False
    for _ in range(env.max_episode_steps):
        states.append(np.concatenate([env.data.qpos, env.data.qvel]))
        action = expert.act()
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        if terminated or truncated:
            success = terminated
            break
    o = np.array(observations)
    demo = Demo({"robot_state": o[:, :16], "parts_poses": o[:, 16:]}, np.array(actions), np.array(rewards),
                np.array(states))
    return demo, success


def load_furniture_hdf5(path, task_name: str, filter_key: str | None = None) -> TransitionDataset:
    from envs.tasks import get_task

    task = get_task(task_name)
    obs, actions, rewards, args, _ = read_robomimic_hdf5(path, OBS_KEYS, filter_key)
    want = env_args(task_name)
    if args.get("env_name") != ENV_NAME or args.get("env_kwargs") != want["env_kwargs"]:
        raise BenchError(f"{path} holds {args.get('env_name')} demos with {json.dumps(args.get('env_kwargs'))}, "
                         f"not {ENV_NAME} demos with {json.dumps(want['env_kwargs'])} for task {task_name!r}")
    ds = to_transition_dataset(obs, actions, rewards, str(path) + (f"[mask/{filter_key}]" if filter_key else ""))
    ds.check_dims(task.obs_dim, task.act_dim, task_name)
    return ds


FURNITURE = DemoSuite(builtin_path, rollout_demo, env_args, load_furniture_hdf5, lambda task_name: OBS_KEYS)


def builtin_dataset(task_name: str, data, make_missing: bool, log, force: bool = False) -> TransitionDataset:
    """TaskSpec.builtin_dataset: made on first use (or with `force`), checksum-verified."""
    from envs.furniture_expert import STYLES

    if data.demo_quality not in STYLES:
        raise BenchError(f"furniture demos come in qualities {', '.join(STYLES)}, not {data.demo_quality!r} "
                         f"(set data.demo_quality)")
    return builtin_demo_dataset(FURNITURE, task_name, data, make_missing, log, force)
