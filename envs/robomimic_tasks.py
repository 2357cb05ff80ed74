"""Robomimic tasks: Lift, Can, Square and Transport on robosuite 1.5 (envs/robosuite_env.py has the env),
with built-in datasets of scripted-expert demos in robomimic's hdf5 layout (envs/robomimic_data.py)."""

from __future__ import annotations

from envs.robosuite_env import make_robomimic_env
from envs.tasks import TaskSpec, register_task


def _builtin_dataset(task_name, data, make_missing, log, force=False):
    from envs.robomimic_data import ROBOMIMIC, builtin_demo_dataset

    return builtin_demo_dataset(ROBOMIMIC, task_name, data, make_missing, log, force)


for _name, _env_id, _obs, _act, _horizon, _chunk in [
    ("lift", "Lift", 19, 7, 300, 4),
    ("can", "PickPlaceCan", 23, 7, 300, 4),
    ("square", "NutAssemblySquare", 23, 7, 400, 4),
    ("transport", "TwoArmTransport", 59, 14, 800, 8),
]:
    register_task(TaskSpec(
        name=_name, suite="robomimic", env_id=_env_id, obs_dim=_obs, act_dim=_act,
        max_episode_steps=_horizon, horizon_steps=_chunk, act_steps=_chunk, metric="success_rate",
        make_env=make_robomimic_env, builtin_dataset=_builtin_dataset,
        description=f"robosuite {_env_id} (Panda, OSC_POSE, 20 Hz), robomimic low-dim obs, sparse reward",
    ))
