"""Furniture-Bench one_leg, MuJoCo re-implementation: dims and frames, the assembly reward on hand-placed
states, the thread model, randomness levels, the scripted expert, data files, assets and a smoke run."""

import json

import numpy as np
import pytest

from core.errors import BenchError
from envs import furniture_sim as fs


@pytest.fixture(scope="module")
def env():
    e = fs.FurnitureSimEnv(randomness="low")
    yield e
    e.close()


def hold(env) -> np.ndarray:
    """An action that keeps the ee where it is, gripper open."""
    p, r = env.ee_pose()
    return np.concatenate([p, fs.rot6d_from_mat(r), [-1.0]]).astype(np.float32)


def place_leg(env, rel_pos, yaw=0.0):
    """Put leg4 at `rel_pos` in the top's frame, its axis along the top's y, turned by `yaw` about it."""
    top_p, top_r = env.part_pose_world(0)
    c, s = np.cos(yaw), np.sin(yaw)
    rel_rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    qa = env._part_q[4]
    env.data.qpos[qa:qa + 3] = top_p + top_r @ np.asarray(rel_pos)
    env.data.qpos[qa + 3:qa + 7] = fs.mat_to_quat_wxyz(top_r @ rel_rot)
    env.data.qvel[env._part_v[4]:env._part_v[4] + 6] = 0
    import mujoco

    mujoco.mj_forward(env.model, env.data)


def test_dims_spaces_and_observation_layout(env):
    from envs.tasks import get_task

    for name in ("one_leg_low", "one_leg_med"):
        t = get_task(name)
        assert (t.suite, t.obs_dim, t.act_dim, t.max_episode_steps, t.horizon_steps, t.act_steps) == \
            ("furniture", 58, 10, 700, 8, 8)
    obs, info = env.reset(seed=0)
    assert obs.shape == (58,) and obs.dtype == np.float32 and env.action_space.shape == (10,)
    assert info == {"success": False}
    # robot state: ee position (robot base frame) and the first two rows of its rotation
    p, r = env.ee_pose()
    np.testing.assert_allclose(obs[:3], p, atol=1e-6)
    np.testing.assert_allclose(obs[3:9], np.concatenate([r[0], r[1]]), atol=1e-6)
    assert abs(obs[15] - 0.065) < 0.002  # gripper open at furniture-bench's max width
    # parts: top at its reset position in the AprilTag frame (y away from the robot, z down), unit quats
    np.testing.assert_allclose(obs[16:19], [0.0, 0.24, -0.015625], atol=0.002)
    quats = obs[16:].reshape(6, 7)[:, 3:]
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, atol=1e-5)
    # the top's reset rotation rot_mat((-pi/2, 0, pi)) in April: its y (thickness) axis points up (April -z)
    top_r = fs.quat_wxyz_to_mat(np.roll(obs[19:23], 1))
    np.testing.assert_allclose(top_r[:, 1], [0, 0, -1], atol=0.01)


def test_april_frame_by_hand():
    # furniture-bench: April origin 0.3015 m in front of the robot base, 1.5 cm below it; x_april = y_robot
    p, r = fs.world_to_april(fs.ROBOT_BASE + np.array([0.3015 + 0.1, 0.2, -0.015 - 0.05]), np.eye(3))
    np.testing.assert_allclose(p, [0.2, 0.1, 0.05], atol=1e-9)
    np.testing.assert_allclose(r, [[0, 1, 0], [1, 0, 0], [0, 0, -1]])


def test_rot6d_is_pytorch3d_rows_and_round_trips():
    r = fs.rot_mat((0.3, -0.5, 1.2))
    d6 = fs.rot6d_from_mat(r)
    np.testing.assert_allclose(d6, [*r[0], *r[1]])
    np.testing.assert_allclose(fs.mat_from_rot6d(d6), r, atol=1e-12)
    np.testing.assert_allclose(fs.mat_from_rot6d(2.0 * d6 + np.r_[0, 0, 0, *(0.1 * r[0])]), r, atol=1e-9)


def test_is_assembled_thresholds_by_hand():
    top_r = fs.rot_mat((-np.pi / 2, 0, np.pi))
    top_p = np.array([0.3, 0.1, 0.45])
    seat = np.array([-0.05625, 0.046875, 0.05625])

    def leg(offset, yaw=0.0):
        c, s = np.cos(yaw), np.sin(yaw)
        return top_p + top_r @ (seat + offset), top_r @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    assert fs.is_assembled(top_p, top_r, *leg([0.0, 0.0, 0.0]))
    assert fs.is_assembled(top_p, top_r, *leg([0.0049, -0.0049, 0.0049]))
    assert not fs.is_assembled(top_p, top_r, *leg([0.0051, 0.0, 0.0]))  # 5.1 mm off in one axis
    assert not fs.is_assembled(top_p, top_r, *leg([0.0, 0.0051, 0.0]))
    # orientation bound 0.94 on each axis' cosine: cos(19 deg) = 0.946 passes, cos(21 deg) = 0.934 fails
    assert fs.is_assembled(top_p, top_r, *leg([0, 0, 0], np.deg2rad(19)))
    assert not fs.is_assembled(top_p, top_r, *leg([0, 0, 0], np.deg2rad(21)))
    # every corner counts
    assert fs.is_assembled(top_p, top_r, top_p + top_r @ np.array([0.05625, 0.046875, -0.05625]), top_r)


def test_reward_fires_once_on_a_hand_placed_assembled_leg(env):
    env.reset(seed=1)
    place_leg(env, [-0.05625, fs.SEAT_Y, -0.05625])
    _, reward, terminated, truncated, info = env.step(hold(env))
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    _, reward, *_ = env.step(hold(env))
    assert reward == 0.0  # only the first time


def test_no_reward_on_a_near_miss(env):
    env.reset(seed=1)
    place_leg(env, [-0.05625 + 0.009, fs.SEAT_Y + 0.001, -0.05625])  # 9 mm off the hole: not captured
    rewards = [env.step(hold(env))[1] for _ in range(3)]
    assert rewards == [0.0, 0.0, 0.0] and env.thread is None and not env.assembled


def test_thread_turns_rotation_into_descent(env):
    env.reset(seed=1)
    pitch = fs.THREAD_PITCH_M
    # upright over a hole, one full turn plus a quarter above the seat, at the matching phase
    place_leg(env, [-0.05625, fs.SEAT_Y + 1.25 * pitch, -0.05625], yaw=np.pi / 2)
    env._thread_step()
    assert env.thread is not None and env.thread["r"] == pytest.approx(2.5 * np.pi)
    top_p, top_r = env.part_pose_world(0)

    def height():
        return (top_r.T @ (env.part_pose_world(4)[0] - top_p))[1] - fs.SEAT_Y

    assert height() == pytest.approx(1.25 * pitch, abs=1e-6)
    # turn it clockwise seen from above (negative about the top's up axis) by 90 degrees: 1/4 pitch lower
    place_leg(env, [-0.05625, fs.SEAT_Y + 1.25 * pitch, -0.05625], yaw=0.0)
    env._thread_step()
    assert height() == pytest.approx(1.0 * pitch, abs=1e-6)
    # keep turning: it stops at the seat, in the assembled pose
    for k in range(1, 6):
        place_leg(env, [-0.05625, fs.SEAT_Y + height(), -0.05625], yaw=-k * np.pi / 2)
        env._thread_step()
    assert height() == pytest.approx(0.0, abs=1e-9) and env.thread["r"] == 0.0
    assert fs.is_assembled(*env.part_pose_world(0), *env.part_pose_world(4))


def test_thread_does_not_catch_a_tilted_or_high_leg(env):
    env.reset(seed=1)
    place_leg(env, [-0.05625, fs.SEAT_Y + fs.THREAD_LENGTH_M + fs.THREAD_PITCH_M, -0.05625])  # too high
    env._thread_step()
    assert env.thread is None


def test_randomness_levels_change_initial_states_as_specified():
    spreads = {}
    for level, (obst, joints_deg) in {"low": (0.02, 5.0), "med": (0.04, 10.0)}.items():
        e = fs.FurnitureSimEnv(randomness=level)
        nominal_obstacle = fs.OBSTACLE_RESET_POS
        offsets, legs, q_off = [], [], []
        for seed in range(12):
            e.reset(seed=seed)
            offsets.append(e.obstacle_pose_april()[0] - nominal_obstacle)
            legs.append(e.part_pose_april(4)[0][:2] - [0.20, 0.07])
            q_off.append(np.rad2deg(e.data.ctrl[:7] - fs.RESET_JOINTS))
        offsets, q_off = np.array(offsets), np.array(q_off)
        assert np.abs(offsets[:, :2]).max() <= obst + 1e-9 and np.abs(offsets[:, 2]).max() < 1e-9
        assert np.abs(offsets[:, :2]).max() > obst / 2  # the range is used
        assert np.abs(q_off).max() <= joints_deg + 1e-9 and np.abs(q_off).max() > joints_deg / 2
        spreads[level] = np.linalg.norm(legs, axis=1).mean()
        # same seed, same initial state
        a, _ = e.reset(seed=3)
        b, _ = e.reset(seed=3)
        np.testing.assert_array_equal(a, b)
    assert 0.0 < spreads["low"] < spreads["med"]  # the parts are pushed harder at med


@pytest.mark.slow
def test_scripted_expert_assembles_one_leg():
    from envs.furniture_expert import STYLES, OneLegExpert

    e = fs.FurnitureSimEnv(randomness="low")
    for seed in (0, 1):
        e.reset(seed=seed)
        expert = OneLegExpert(e, np.random.default_rng(seed), STYLES["ph"])
        total = 0.0
        for t in range(700):
            _, r, terminated, truncated, _ = e.step(expert.act())
            total += r
            if terminated or truncated:
                break
        assert terminated and total == 1.0 and t < 600, (seed, t, expert.phase)


def test_furniture_hdf5_round_trip_and_wrong_task_is_refused(tmp_path):
    from envs.furniture_data import OBS_KEYS, env_args, load_furniture_hdf5, rollout_demo
    from envs.robomimic_data import write_robomimic_hdf5

    demo, success = rollout_demo("one_leg_low", 0, 0, "ph")
    assert success and demo.obs["robot_state"].shape[1] == 16 and demo.obs["parts_poses"].shape[1] == 42
    path = tmp_path / "one_leg.hdf5"
    write_robomimic_hdf5(path, [demo], env_args("one_leg_low"), {"train": ["demo_0"]})
    ds = load_furniture_hdf5(path, "one_leg_low")
    assert ds.observations.shape == (len(demo), 58) and ds.actions.shape == (len(demo), 10)
    assert ds.rewards.sum() == 1.0 and ds.timeouts[-1] and not ds.terminals.any()
    with pytest.raises(BenchError, match="\"low\".*\"med\".*one_leg_med"):
        load_furniture_hdf5(path, "one_leg_med")
    assert OBS_KEYS == ("robot_state", "parts_poses")


@pytest.mark.slow
def test_assets_download_checksum_and_mesh_sizes(tmp_path, monkeypatch):
    """The wheel comes from the package index without dependencies; the collision primitives match the
    meshes' extents."""
    from envs import furniture_assets as fa

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    root = fa.ensure_assets(log=lambda m: None)
    meta = json.loads((root / "checksum.json").read_text())
    assert meta["sha256"] == fa.WHEEL_SHA256
    assert "MIT License" in (root / "furniture_bench-0.1.dist-info" / "LICENSE").read_text()

    def extent(rel):
        v = np.array([list(map(float, line.split()[1:4])) for line in open(fa.mesh_path(rel))
                      if line.startswith("v ")])
        return v.min(0), v.max(0)

    lo, hi = extent("square_table/square_table_top.obj")
    np.testing.assert_allclose((hi - lo) / 2, fs.TOP_HALF, atol=0.001)
    lo, hi = extent("square_table/square_table_leg4.obj")
    np.testing.assert_allclose([hi[0], -lo[1], hi[2]], [fs.LEG_HALF[0], -fs.PEG_Y[0], fs.LEG_HALF[2]], atol=0.001)
    np.testing.assert_allclose(hi[1], fs.LEG_HALF[1], atol=0.001)
    # a model with the meshes as visual geometry builds
    fs.build_model(visual_meshes=True)
    bad = tmp_path / fa.WHEEL
    bad.write_bytes(b"not a wheel")
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "other"))
    with pytest.raises(BenchError, match="not the furniture-bench 0.1 wheel"):
        fa.ensure_assets(bad)
    assert not (tmp_path / "other" / "assets" / "furniture-bench-0.1").exists()


@pytest.mark.slow
def test_smoke_dppo_run_and_sim_option_errors(cli, tmp_path):
    code, out, err = cli("run", "--algo", "dppo", "--task", "one_leg_low", "--preset", "smoke", "--out", tmp_path,
                         "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "runs/one_leg_low/dppo/seed0/summary.json").read_text())
    assert summary["complete"] and summary["metric"] == "success_rate"
    cfg = json.loads((tmp_path / "runs/one_leg_low/dppo/seed0/config.json").read_text())["config"]
    assert cfg["algo"]["use_ddim"] and cfg["algo"]["gamma_denoising"] == 0.9 and cfg["env"]["sim"] == "mujoco"
    code, _, err = cli("run", "--task", "one_leg_low", "--preset", "smoke", "--sim", "isaacgym",
                       "--out", tmp_path / "ig", "--quiet")
    assert code == 2 and "isaacgym" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("run", "--task", "hopper", "--preset", "smoke", "--sim", "isaacgym", "--out", tmp_path / "h")
    assert code == 2 and "only for furniture tasks" in err
    code, _, err = cli("run", "--task", "one_leg_low", "--preset", "smoke", "--sim", "bullet", "--out", tmp_path / "b")
    assert code == 2 and "mujoco" in err and "isaacgym" in err
