"""Scripted Lift / Can experts on the raw robosuite envs: proficient demos succeed, the multi-human
style changes the demos, rollouts are reproducible; the OSC helpers against hand computations."""

import numpy as np
import pytest

robosuite = pytest.importorskip("robosuite")

from core.errors import BenchError
from envs.experts import make_expert, sample_style
from envs.experts.common import (
    DemonstratorStyle,
    closest_symmetric_yaw,
    down_rotation,
    gripper_yaw,
    mat_to_rotvec,
    pose_servo_action,
    quat_to_mat,
)

ENV_NAMES = {"lift": "Lift", "can": "PickPlaceCan"}


@pytest.fixture(scope="module")
def envs():
    made = {}
    for task, name in ENV_NAMES.items():
        made[task] = robosuite.make(
            name,
            robots=["Panda"],
            controller_configs=robosuite.load_composite_controller_config(robot="Panda"),
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=True,
            control_freq=20,
            horizon=300,
            ignore_done=True,
            reward_shaping=False,
        )
    yield made
    for env in made.values():
        env.close()


def rollout(env, task, seed, quality="ph", style=None, max_steps=300):
    """Reset the env with a seeded placement, run the expert until it is done in the success state (or
    `max_steps`); returns (actions, success)."""
    np.random.seed(seed)  # robosuite's placement samplers draw from NumPy's global generator
    obs = env.reset()
    rng = np.random.default_rng(seed)
    expert = make_expert(task, env, rng, style if style is not None else sample_style(quality, rng))
    actions = []
    for _ in range(max_steps):
        action = expert.act(obs)
        actions.append(action)
        obs, _, _, _ = env.step(action)
        if expert.done and env._check_success():
            return np.array(actions), True
    return np.array(actions), bool(env._check_success())


@pytest.mark.parametrize("task,seeds", [("lift", (0, 1, 2)), ("can", (0, 1))])
def test_proficient_expert_succeeds(envs, task, seeds):
    for seed in seeds:
        actions, success = rollout(envs[task], task, seed)
        assert success, f"{task} seed {seed}"
        assert actions.shape[1] == 7 and np.all(np.abs(actions) <= 1.0)
        assert len(actions) < 250  # well inside the 300-step horizon


@pytest.mark.parametrize("task", ["lift", "can"])
def test_mh_style_changes_the_demo(envs, task):
    ph, _ = rollout(envs[task], task, seed=3, max_steps=40)
    worse, _ = rollout(envs[task], task, seed=3, quality="worse", max_steps=40)
    # same initial scene, different operator: the commanded motion differs well beyond the ph noise
    assert np.abs(ph[:, :6] - worse[:, :6]).mean() > 0.05


@pytest.mark.parametrize("task", ["lift", "can"])
def test_rollout_is_deterministic_given_seed(envs, task):
    first, _ = rollout(envs[task], task, seed=5, quality="mh", max_steps=40)
    second, _ = rollout(envs[task], task, seed=5, quality="mh", max_steps=40)
    np.testing.assert_array_equal(first, second)
    other, _ = rollout(envs[task], task, seed=6, quality="mh", max_steps=10)
    assert not np.array_equal(first[:10], other)


def test_sample_style_mix_and_bad_quality():
    rng = np.random.default_rng(0)
    tiers = [sample_style("mh", rng).tier for _ in range(600)]
    counts = {tier: tiers.count(tier) for tier in ("better", "okay", "worse")}
    assert sum(counts.values()) == 600 and all(150 < c < 250 for c in counts.values()), counts
    assert {sample_style("okay", rng).tier for _ in range(20)} == {"okay"}
    ph = sample_style("ph", rng)
    assert ph.tier == "ph" and ph.hesitation_prob == 0.0 and ph.action_noise_std < 0.05
    with pytest.raises(BenchError, match="ph, mh, better, okay, worse"):
        sample_style("expert", rng)
    with pytest.raises(BenchError, match="lift, can"):
        make_expert("stack", None, rng, DemonstratorStyle())


def test_rotation_helpers_by_hand():
    # quaternion (x, y, z, w) of 90 degrees about z: x -> y, y -> -x
    s = np.sqrt(0.5)
    np.testing.assert_allclose(quat_to_mat([0, 0, s, s]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    # 0.3 rad about the unit axis (2, 3, 6) / 7, built with Rodrigues' formula by hand
    axis = np.array([2.0, 3.0, 6.0]) / 7.0
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(0.3) * k + (1 - np.cos(0.3)) * k @ k
    np.testing.assert_allclose(mat_to_rotvec(rot), 0.3 * axis, atol=1e-10)
    # a half turn about x: the axis comes from the symmetric part
    np.testing.assert_allclose(np.abs(mat_to_rotvec(np.diag([1.0, -1.0, -1.0]))), [np.pi, 0, 0], atol=1e-10)
    # down-pointing gripper: z axis to world -z; yaw round-trips
    np.testing.assert_allclose(down_rotation(0.7)[:, 2], [0, 0, -1], atol=1e-12)
    assert gripper_yaw(down_rotation(0.7)) == pytest.approx(0.7)
    # a cube at yaw 0.2 seen from a gripper at yaw 1.6: the nearest face is at 0.2 + pi/2
    assert closest_symmetric_yaw(0.2, 1.6, np.pi / 2) == pytest.approx(0.2 + np.pi / 2)


def test_pose_servo_action_by_hand():
    eye = np.eye(3)
    # 2 cm error along x at gain 15 -> 0.3; no rotation error
    act = pose_servo_action(np.zeros(3), eye, [0.02, 0, 0], eye, eye, pos_gain=15.0)
    np.testing.assert_allclose(act, [0.3, 0, 0, 0, 0, 0], atol=1e-12)
    # (6 cm, 8 cm) error -> (0.9, 1.2), norm 1.5 clipped to norm 1 -> (0.6, 0.8): direction kept
    act = pose_servo_action(np.zeros(3), eye, [0.06, 0.08, 0], None, eye, pos_gain=15.0)
    np.testing.assert_allclose(act, [0.6, 0.8, 0, 0, 0, 0], atol=1e-12)
    # controller frame turned 90 degrees about z: a world +y error is the base frame's +x
    base = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    act = pose_servo_action(np.zeros(3), eye, [0, 0.02, 0], None, base, pos_gain=15.0)
    np.testing.assert_allclose(act[:3], [0.3, 0, 0], atol=1e-12)
    # 0.2 rad yaw error at rot gain 1.5 -> 0.3 about z
    target = np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
    act = pose_servo_action(np.zeros(3), eye, np.zeros(3), target, eye, rot_gain=1.5)
    np.testing.assert_allclose(act, [0, 0, 0, 0, 0, 0.3], atol=1e-12)
