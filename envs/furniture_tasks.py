"""Furniture-Bench tasks, MuJoCo re-implementation (`envs.furniture_sim`): one_leg at low and med
randomness. The chunking is DPPO's MLP variant for furniture (Tp = Ta = 8; the paper's UNet used 16/8)."""

from __future__ import annotations

from envs.tasks import TaskSpec, register_task


def make_env(env_id: str, max_episode_steps: int, sim: str = "mujoco"):
    """env_id: '<furniture>_<randomness>'; `sim` "isaacgym" builds the original simulator instead."""
    if sim == "isaacgym":
        from envs.furniture_isaacgym import make_isaacgym_env

        furniture, _, randomness = env_id.rpartition("_")
        return make_isaacgym_env(furniture, randomness, max_episode_steps)
    from envs.furniture_sim import make_furniture_env

    return make_furniture_env(env_id, max_episode_steps)


def _load_demo_file(path, task_name, filter_key=None):
    from envs.furniture_data import load_furniture_hdf5

    return load_furniture_hdf5(path, task_name, filter_key)


def _builtin_dataset(task_name, data, make_missing, log, force=False):
    from envs.furniture_data import builtin_dataset

    return builtin_dataset(task_name, data, make_missing, log, force)


for _randomness in ("low", "med"):
    register_task(TaskSpec(
        name=f"one_leg_{_randomness}", suite="furniture", env_id=f"one_leg_{_randomness}", obs_dim=58, act_dim=10,
        max_episode_steps=700, horizon_steps=8, act_steps=8, metric="success_rate", make_env=make_env,
        builtin_dataset=_builtin_dataset, demo_file_loader=_load_demo_file,
        description=f"MuJoCo re-implementation of Furniture-Bench one_leg ({_randomness} randomness): Panda, "
                    f"absolute ee pose via diff IK at 10 Hz, sparse assembly reward",
    ))
