"""Scripted Square / Transport experts on the raw robosuite envs: proficient demos succeed (robosuite's
own `_check_success`), the multi-human style changes the demos, rollouts are reproducible; the
wrist-turn helpers against hand computations."""

import numpy as np
import pytest

robosuite = pytest.importorskip("robosuite")

from envs.experts import make_expert, sample_style  # noqa: E402
from envs.experts.common import YawTracker, down_rotation, plan_wrist_turns  # noqa: E402

HORIZONS = {"square": 400, "transport": 800}


def make_env(task):
    two_arms = task == "transport"
    return robosuite.make(
        "TwoArmTransport" if two_arms else "NutAssemblySquare",
        robots=["Panda", "Panda"] if two_arms else ["Panda"],
        **({"env_configuration": "opposed"} if two_arms else {}),
        controller_configs=robosuite.load_composite_controller_config(robot="Panda"),
        has_renderer=False,
        has_offscreen_renderer=False,
        use_camera_obs=False,
        use_object_obs=True,
        control_freq=20,
        horizon=HORIZONS[task],
        ignore_done=True,
        reward_shaping=False,
    )


@pytest.fixture(scope="module")
def square_env():
    env = make_env("square")
    yield env
    env.close()


def rollout(env, task, seed, quality="ph", max_steps=None):
    """Seeded reset, then the expert until it is done in the success state (or `max_steps`, default the
    task's horizon); returns (actions, success)."""
    np.random.seed(seed)  # robosuite's placement samplers draw from NumPy's global generator
    obs = env.reset()
    rng = np.random.default_rng(seed)
    expert = make_expert(task, env, rng, sample_style(quality, rng))
    actions = []
    for _ in range(max_steps or HORIZONS[task]):
        action = expert.act(obs)
        actions.append(action)
        obs, _, _, _ = env.step(action)
        if expert.done and env._check_success():
            return np.array(actions), True
    return np.array(actions), bool(env._check_success())


@pytest.mark.slow
def test_square_proficient_expert_succeeds(square_env):
    for seed in (0, 1):
        actions, success = rollout(square_env, "square", seed)
        assert success, f"seed {seed}"
        assert actions.shape[1] == 7 and np.all(np.abs(actions) <= 1.0)
        assert len(actions) < 300  # inside the 400-step horizon with room to spare


@pytest.mark.slow
def test_transport_proficient_expert_succeeds():
    env = make_env("transport")
    actions, success = rollout(env, "transport", seed=0)
    env.close()
    assert success
    assert actions.shape[1] == 14 and np.all(np.abs(actions) <= 1.0)
    assert len(actions) < 600
    # both grippers closed at some point and were open at the end (robot 0's dims first, then robot 1's)
    assert (actions[:, 6] > 0).any() and (actions[:, 13] > 0).any()
    assert actions[-1, 6] < 0 and actions[-1, 13] < 0


def test_square_mh_style_changes_the_demo_and_is_reproducible(square_env):
    ph, _ = rollout(square_env, "square", seed=3, max_steps=40)
    worse, _ = rollout(square_env, "square", seed=3, quality="worse", max_steps=40)
    # same initial scene, different operator: the commanded motion differs well beyond the ph noise
    assert np.abs(ph[:, :6] - worse[:, :6]).mean() > 0.05
    again, _ = rollout(square_env, "square", seed=3, quality="worse", max_steps=40)
    np.testing.assert_array_equal(worse, again)


def test_yaw_tracker_unwraps_by_hand():
    tracker = YawTracker(down_rotation(3.0))
    # 3.0 -> -3.0 rad is a turn of 2 pi - 6 = +0.283 rad, not -6 rad
    assert tracker.update(down_rotation(-3.0)) == pytest.approx(3.0 + 2 * np.pi - 6.0)
    # and on through another half turn in the same direction
    assert tracker.update(down_rotation(-1.5)) == pytest.approx(3.0 + 2 * np.pi - 4.5)


def test_plan_wrist_turns_by_hand(square_env):
    np.random.seed(0)
    square_env.reset()
    arm = square_env.robots[0]
    joint = square_env.sim.model.joint_name2id(arm.robot_joints[-1])
    qpos_index = square_env.sim.model.jnt_qposadr[joint]
    # Wrist joint at 2.0 of its +-2.8973 range; limits with the 0.35 margin: [-2.5473, 2.5473].
    # The gripper yaw falls by the joint's rise (joint axis points down). Grasp options 0.5 and 0.5 + pi
    # from a yaw of 0: turns +0.5 (joint 1.5) or 0.5 + pi - 2 pi = -2.6416 (joint 4.64, out of range).
    # Carry turn 2.5 rad: the short way takes the joint from 1.5 to -1.0 (inside), total 3.0.
    square_env.sim.data.qpos[qpos_index] = 2.0
    grasp, carry = plan_wrist_turns(square_env, 0.0, [0.5, 0.5 + np.pi], 2.5)
    assert grasp == pytest.approx(0.5) and carry == pytest.approx(2.5)
    # Carry turn -2.5 from joint 1.5: the short way ends at 4.0 (out of range), the long way (+3.7832)
    # at -2.2832 (inside): the long way wins.
    grasp, carry = plan_wrist_turns(square_env, 0.0, [0.5, 0.5 + np.pi], -2.5)
    assert grasp == pytest.approx(0.5) and carry == pytest.approx(2 * np.pi - 2.5)
