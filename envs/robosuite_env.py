"""robosuite 1.5 manipulation envs with robomimic's low-dim observations (the robomimic tasks' envs).

Lift, Can (PickPlaceCan), Square (NutAssemblySquare) and Transport (TwoArmTransport, two Pandas facing
each other), each driven by Panda arms through robosuite's default Panda composite controller, whose arm
part is OSC_POSE with robomimic's settings (delta pose inputs in [-1, 1], 5 cm / 0.5 rad per step at 1,
kp 150), at 20 Hz. The observation is robomimic's low-dim keys concatenated in DPPO's order
(`robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos[, robot1_...], object`, "object" being robosuite's
`object-state`), float32. The reward is robosuite's sparse one (1 per step in the success state);
`info["success"]` is robosuite's `_check_success()`. Episodes never terminate (`ignore_done`, as in
robomimic and DPPO); they are truncated at the horizon.

Seeding: robosuite draws object placements and the robot's initial joint noise from numpy's *global*
RNG. Each env therefore keeps its own `RandomState`, seeded by `reset(seed=...)`, and swaps it in as the
global RNG around every robosuite call, so initial states are reproducible per env, independent of what
other envs in the same process do, and the harness's global RNG is left untouched.

robosuite's default `hard_reset=True` is kept although it rebuilds the MuJoCo model at every reset
(~0.2 s): some model properties are drawn when the model is built (Lift's cube size), so a soft reset
would freeze them per env, unseeded. A dataset file's `env_args` (robomimic's record of how its env was
built) can override the robosuite kwargs: `convert_env_kwargs` turns robosuite 1.4 controller configs
into 1.5 composite ones.

robosuite is imported lazily inside the env factory: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import gymnasium as gym
import numpy as np


ONE_ARM_OBS_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
TWO_ARM_OBS_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos",
                    "robot1_eef_pos", "robot1_eef_quat", "robot1_gripper_qpos", "object")
OBS_KEY_DIMS = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2,
                "robot1_eef_pos": 3, "robot1_eef_quat": 4, "robot1_gripper_qpos": 2}

# robosuite env name -> (robots, robomimic observation keys, extra robosuite kwargs)
ROBOSUITE_ENVS: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict]] = {
    "Lift": (("Panda",), ONE_ARM_OBS_KEYS, {}),
    "PickPlaceCan": (("Panda",), ONE_ARM_OBS_KEYS, {}),
    "NutAssemblySquare": (("Panda",), ONE_ARM_OBS_KEYS, {}),
    "TwoArmTransport": (("Panda", "Panda"), TWO_ARM_OBS_KEYS, {"env_configuration": "opposed"}),
}

# Always set by us, whatever a dataset's env_args say: no rendering, state observations, no early end.
FORCED_KWARGS = {"has_renderer": False, "has_offscreen_renderer": False, "use_camera_obs": False,
                 "use_object_obs": True, "ignore_done": True}


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def import_robosuite():
    """robosuite, imported with its import-time warnings (missing private macros, optional robot
    models, mink IK) silenced; its errors still show."""
    logging.getLogger("robosuite_logs").addFilter(_errors_only)  # adding the same filter again is a no-op
    import robosuite

    return robosuite


def obs_keys(env_name: str) -> tuple[str, ...]:
    return ROBOSUITE_ENVS[env_name][1]


def default_env_kwargs(env_name: str) -> dict:
    """robosuite kwargs of robomimic's low-dim datasets, in robosuite 1.5 form (what our datasets record)."""
    robosuite = import_robosuite()
    robots, _, extra = ROBOSUITE_ENVS[env_name]
    return {**FORCED_KWARGS, "robots": list(robots), **extra,
            "controller_configs": robosuite.load_composite_controller_config(robot="Panda"),
            "control_freq": 20, "reward_shaping": False}


def convert_env_kwargs(env_kwargs: dict) -> dict:
    """A dataset's env_kwargs for robosuite 1.5: a robosuite <= 1.4 part-controller config
    (`{"type": "OSC_POSE", ...}`) becomes the Panda composite config with that arm controller."""
    import_robosuite()
    from robosuite.controllers.composite.composite_controller_factory import (
        refactor_composite_controller_config,
    )

    out = copy.deepcopy(env_kwargs)
    if out.get("controller_configs") is not None:
        out["controller_configs"] = refactor_composite_controller_config(out["controller_configs"], "Panda", ["right"])
    return out


@contextlib.contextmanager
def global_numpy_rng(state: np.random.RandomState):
    """Run a block with `state` as numpy's global RNG; afterwards `state` holds the advanced RNG and the
    previous global RNG is back."""
    saved = np.random.get_state()
    np.random.set_state(state.get_state())
    try:
        yield
    finally:
        state.set_state(np.random.get_state())
        np.random.set_state(saved)


class RobomimicEnv(gym.Env):
    """A robosuite env as a gymnasium env with robomimic's flat low-dim observation."""

    metadata = {"render_modes": []}  # AsyncVectorEnv reads it

    def __init__(self, env_name: str, max_episode_steps: int, env_kwargs: dict | None = None):
        robosuite = import_robosuite()
        self.env_name, self.max_episode_steps = env_name, max_episode_steps
        self.obs_keys = obs_keys(env_name)
        kwargs = {**default_env_kwargs(env_name), **(env_kwargs or {}), **FORCED_KWARGS,
                  "horizon": max_episode_steps}
        self._rs = np.random.RandomState(np.random.SeedSequence().generate_state(1)[0])  # until reset(seed=...)
        with global_numpy_rng(self._rs):
            self.robosuite_env = robosuite.make(env_name, **kwargs)
        low, high = self.robosuite_env.action_spec
        self.action_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        dim = sum(OBS_KEY_DIMS.get(k, 0) for k in self.obs_keys)
        dim += self.robosuite_env.observation_spec()["object-state"].shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.raw_obs: dict = {}  # the last robosuite observation dict (scripted experts read it)
        self._t = 0

    def flat_obs(self, raw: dict) -> np.ndarray:
        return np.concatenate([raw["object-state" if k == "object" else k] for k in self.obs_keys]).astype(np.float32)

    def success(self) -> bool:
        return bool(self.robosuite_env._check_success())

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._rs = np.random.RandomState(seed)
        with global_numpy_rng(self._rs):
            self.raw_obs = self.robosuite_env.reset()
        self._t = 0
        return self.flat_obs(self.raw_obs), {"success": self.success()}

    def step(self, action):
        with global_numpy_rng(self._rs):
            self.raw_obs, reward, _, _ = self.robosuite_env.step(np.asarray(action, dtype=np.float64))
        self._t += 1
        truncated = self._t >= self.max_episode_steps
        return self.flat_obs(self.raw_obs), float(reward), False, truncated, {"success": self.success()}

    def close(self):
        self.robosuite_env.close()


def make_robomimic_env(env_id: str, max_episode_steps: int, env_kwargs: dict | None = None) -> RobomimicEnv:
    return RobomimicEnv(env_id, max_episode_steps, env_kwargs)
