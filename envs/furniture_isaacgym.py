"""The original Furniture-Bench simulator (IsaacGym) behind the same task interface (`--sim isaacgym`).

Needs NVIDIA's `isaacgym` (not on any package index; Python 3.8, GPU) and the furniture-bench fork DPPO used,
which registers `FurnitureSim-v0` with absolute-pose diff-IK control and 6-D rotation actions. Its
observation dict (`robot_state` with 6-D rotation, `parts_poses`) is flattened in the same order as the
MuJoCo re-implementation's, so datasets and policies carry over.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from core.errors import BenchError

OBS_KEYS = ["robot_state/ee_pos", "robot_state/ee_quat", "robot_state/ee_pos_vel", "robot_state/ee_ori_vel",
            "robot_state/gripper_width", "parts_poses"]


def check_installed() -> None:
    """A one-line error unless isaacgym, furniture_bench and gym are importable (checked without importing)."""
    import importlib.util

    missing = [m for m in ("isaacgym", "furniture_bench", "gym") if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchError(f"--sim isaacgym needs NVIDIA isaacgym and the furniture-bench fork installed (missing: "
                         f"{', '.join(missing)}); the default --sim mujoco needs neither")


def make_isaacgym_env(furniture: str, randomness: str, max_episode_steps: int) -> gym.Env:
    check_installed()
    import isaacgym  # noqa: F401  (must be imported before torch inside furniture_bench)
    import furniture_bench  # noqa: F401
    import gym as old_gym
    env = old_gym.make("FurnitureSim-v0", furniture=furniture, num_envs=1, obs_keys=OBS_KEYS, headless=True,
                       max_env_steps=max_episode_steps, randomness=randomness, act_rot_repr="rot_6d",
                       ctrl_mode="diffik", action_type="pos", concat_robot_state=True, np_step_out=True,
                       resize_img=False)
    return IsaacGymFurniture(env, max_episode_steps)


class IsaacGymFurniture(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, env, max_episode_steps: int):
        from envs.furniture_sim import quat_xyzw_rot6d

        self.env, self.max_episode_steps, self._rot6d = env, max_episode_steps, quat_xyzw_rot6d
        dim = 16 + env.observation_space["parts_poses"].shape[-1]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (10,), np.float32)

    def _flat(self, obs) -> np.ndarray:
        rs = np.asarray(obs["robot_state"]).reshape(-1)  # pos 3, quat 4 (xyzw), vel 3, ang vel 3, width 1
        robot = np.concatenate([rs[:3], self._rot6d(rs[3:7]), rs[7:14]])
        return np.concatenate([robot, np.asarray(obs["parts_poses"]).reshape(-1)]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._flat(self.env.reset()), {"success": False}

    def step(self, action):
        obs, reward, done, _ = self.env.step(np.asarray(action, np.float32)[None])
        success = bool(self.env.furnitures[0].all_assembled())
        reward = float(np.asarray(reward).reshape(-1)[0])
        truncated = bool(np.asarray(done).reshape(-1)[0]) and not success
        return self._flat(obs), reward, success, truncated, {"success": success}
