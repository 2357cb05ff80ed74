"""Robomimic suite: robosuite envs (dims, success, seeding), robomimic's hdf5 layout (write, read, filter
keys, bad input), envs rebuilt from a file's env_args, and a smoke run on Lift through the CLI."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from algorithms.registry import builtin_algorithms
from core.errors import BenchError
from envs.robomimic_data import Demo, load_robomimic_hdf5, read_robomimic_hdf5, write_robomimic_hdf5
from envs.tasks import get_task

OBS_KEYS = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}

# robosuite 1.4's controller config, as robomimic's v141 files (and DPPO's env_meta) record it; kp 100
# instead of 150 so a test can see that the file's settings reach the env
OLD_OSC = {"type": "OSC_POSE", "input_max": 1, "input_min": -1, "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
           "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], "kp": 100, "damping": 1,
           "impedance_mode": "fixed", "kp_limits": [0, 300], "damping_limits": [0, 10], "position_limits": None,
           "orientation_limits": None, "uncouple_pos_ori": True, "control_delta": True, "interpolation": None,
           "ramp_ratio": 0.2}


def old_env_args(env_name="Lift", **kw):
    return {"env_name": env_name, "env_version": "1.4.1", "type": 1,
            "env_kwargs": {"has_renderer": False, "has_offscreen_renderer": False, "ignore_done": True,
                           "use_object_obs": True, "use_camera_obs": False, "control_freq": 20,
                           "controller_configs": OLD_OSC, "robots": ["Panda"], "camera_depths": False,
                           "camera_heights": 84, "camera_widths": 84, "reward_shaping": False, **kw}}


def synthetic_demos(lengths, obs_keys=OBS_KEYS, act_dim=7, labels=None, seed=0):
    rng = np.random.default_rng(seed)
    return [Demo({k: rng.normal(size=(n + 1, d)) for k, d in obs_keys.items()}, rng.uniform(-1, 1, (n, act_dim)),
                 (np.arange(n) >= n - 3).astype(float), rng.normal(size=(n, 32)), (labels or [""] * len(lengths))[i])
            for i, n in enumerate(lengths)]


def write_file(path, demos, env_args=None, masks=None):
    write_robomimic_hdf5(path, demos, env_args or old_env_args(), masks or {}, {"note": "test"})
    return path


# ---------------------------------------------------------------------------------------------------
# Envs


def test_dims_of_every_task_on_the_real_envs():
    for name, obs_dim, act_dim, horizon, chunk in [("lift", 19, 7, 300, 4), ("can", 23, 7, 300, 4),
                                                   ("square", 23, 7, 400, 4), ("transport", 59, 14, 800, 8)]:
        task = get_task(name)
        assert (task.suite, task.obs_dim, task.act_dim, task.max_episode_steps, task.horizon_steps,
                task.act_steps, task.metric) == ("robomimic", obs_dim, act_dim, horizon, chunk, chunk, "success_rate")
        env = task.make_env(task.env_id, 5)
        obs, info = env.reset(seed=0)
        assert obs.shape == (obs_dim,) and obs.dtype == np.float32 and env.observation_space.shape == (obs_dim,)
        assert env.action_space.shape == (act_dim,) and info == {"success": False}
        # the flat observation is robomimic's keys in DPPO's order
        raw = env.raw_obs
        keys = [k if k != "object" else "object-state" for k in env.obs_keys]
        np.testing.assert_array_equal(obs, np.concatenate([raw[k] for k in keys]).astype(np.float32))
        assert env.obs_keys[-1] == "object" and (name != "transport" or "robot1_eef_pos" in env.obs_keys)
        for t in range(5):  # truncated at the horizon, never terminated
            obs, reward, term, trunc, info = env.step(np.zeros(act_dim))
            assert (term, trunc, reward) == (False, t == 4, 0.0)
        env.close()


def test_success_only_in_the_success_state():
    task = get_task("lift")
    env = task.make_env(task.env_id, 300)
    _, info = env.reset(seed=1)
    assert not info["success"] and not env.success()
    _, reward, _, _, info = env.step(np.zeros(7))
    assert reward == 0.0 and not info["success"]
    # put the cube 10 cm above the table top (success: more than 4 cm)
    sim = env.robosuite_env.sim
    table_z = env.robosuite_env.model.mujoco_arena.table_offset[2]
    pose = sim.data.get_joint_qpos("cube_joint0").copy()
    pose[2] = table_z + 0.10
    sim.data.set_joint_qpos("cube_joint0", pose)
    sim.forward()
    assert env.success()
    _, reward, term, _, info = env.step(np.zeros(7))  # falls ~1 cm in one 50 ms step: still lifted
    assert info["success"] and reward == 1.0 and not term


def test_reset_seeding_is_reproducible_per_env_and_leaves_the_global_rng_alone():
    task = get_task("lift")
    a, b = task.make_env(task.env_id, 300), task.make_env(task.env_id, 300)
    actions = np.random.default_rng(0).uniform(-1, 1, (10, 7))

    def rollout(env, seed):
        obs = [env.reset(seed=seed)[0]]
        return np.array(obs + [env.step(x)[0] for x in actions])

    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = rollout(a, 5)
    assert np.array_equal(np.random.get_state()[1], before)  # robosuite's draws come from the env's own RNG
    rollout(a, 6)
    rollout(b, 7)  # another env in the same process does not disturb a's draws
    again, fresh = rollout(a, 5), rollout(b, 5)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, fresh)
    other = rollout(a, 6)
    assert not np.allclose(first[0, 9:], other[0, 9:])  # another seed places the cube elsewhere
    # without a seed, later resets continue the env's seeded stream: two seeded envs agree
    a.reset(seed=9), b.reset(seed=9)
    np.testing.assert_array_equal(a.reset()[0], b.reset()[0])


@pytest.mark.slow
def test_async_vector_env_steps_like_sync():
    """The suite's envs in worker processes (the robomimic default) give the same chunks as in-process."""
    from envs.vector import Normalizer, TaskVectorEnv

    task = get_task("lift")
    norm = Normalizer(-np.ones(19, np.float32), np.ones(19, np.float32), -np.ones(7, np.float32), np.ones(7, np.float32))
    chunks = np.random.default_rng(0).uniform(-1, 1, (3, 2, 4, 7)).astype(np.float32)
    out = {}
    for mode in ("sync", "async"):
        env = TaskVectorEnv(task, 2, 4, norm, 10, mode)
        obs = [env.reset(seed=4)]
        steps = [env.step(c) for c in chunks]  # the third chunk crosses the 10-step horizon: auto-reset
        env.close()
        out[mode] = (np.array(obs + [s.obs for s in steps] + [s.final_obs for s in steps]),
                     [s.truncated.tolist() for s in steps])
    np.testing.assert_array_equal(out["sync"][0], out["async"][0])
    assert out["sync"][1] == out["async"][1] == [[False, False], [False, False], [True, True]]


# ---------------------------------------------------------------------------------------------------
# The hdf5 layout


def test_write_read_round_trip_layout_attrs_and_filter_keys(tmp_path):
    demos = synthetic_demos([7, 5, 9], labels=["better", "worse", "better"])
    masks = {"train": ["demo_0", "demo_2"], "valid": ["demo_1"], "better": ["demo_0", "demo_2"]}
    path = write_file(tmp_path / "low_dim.hdf5", demos, masks=masks)
    with h5py.File(path, "r") as f:  # robomimic's layout, checked with h5py directly
        data = f["data"]
        assert data.attrs["total"] == 21 and json.loads(data.attrs["env_args"]) == old_env_args()
        assert sorted(data.keys()) == ["demo_0", "demo_1", "demo_2"]
        for i, d in enumerate(demos):
            g = data[f"demo_{i}"]
            assert g.attrs["num_samples"] == len(d)
            assert sorted(g.keys()) == ["actions", "dones", "next_obs", "obs", "rewards", "states"]
            for k in OBS_KEYS:
                np.testing.assert_array_equal(g["obs"][k][()], d.obs[k][:-1])
                np.testing.assert_array_equal(g["next_obs"][k][()], d.obs[k][1:])
            np.testing.assert_array_equal(g["actions"][()], d.actions)
            np.testing.assert_array_equal(g["states"][()], d.states)
            assert g["dones"][()].tolist() == [0] * (len(d) - 1) + [1]
        assert [n.decode() for n in f["mask/valid"][()]] == ["demo_1"]
        assert f["mask/train"].dtype.kind == "S"
    ds = load_robomimic_hdf5(path, "lift")
    keys = list(OBS_KEYS)
    expected_obs = np.concatenate([np.concatenate([d.obs[k][:-1] for k in keys], 1) for d in demos])
    np.testing.assert_allclose(ds.observations, expected_obs.astype(np.float32))
    np.testing.assert_allclose(ds.actions, np.concatenate([d.actions for d in demos]).astype(np.float32))
    np.testing.assert_array_equal(ds.rewards, np.concatenate([d.rewards for d in demos]).astype(np.float32))
    # robosuite episodes never terminate: each demo ends with a timeout
    assert not ds.terminals.any() and np.flatnonzero(ds.timeouts).tolist() == [6, 11, 20]
    train = load_robomimic_hdf5(path, "lift", "train")
    assert np.flatnonzero(train.timeouts).tolist() == [6, 15] and train.checksum != ds.checksum
    np.testing.assert_allclose(train.actions, np.concatenate([demos[0].actions, demos[2].actions]).astype(np.float32))
    with pytest.raises(BenchError, match="filter key 'okay'.*better, train, valid"):
        load_robomimic_hdf5(path, "lift", "okay")


def test_demos_are_read_in_numeric_order(tmp_path):
    demos = synthetic_demos([3] * 12)
    path = write_file(tmp_path / "d.hdf5", demos)
    *_, names = read_robomimic_hdf5(path, tuple(OBS_KEYS))
    assert names == [f"demo_{i}" for i in range(12)]  # demo_10 after demo_9, not after demo_1


@pytest.mark.parametrize("case,needles", [
    ("missing_key", ["lacks observation keys object", "robot0_eef_pos"]),
    ("wrong_dims", ["obs/action dims 18/7", "needs 19/7"]),
    ("other_task", ["PickPlaceCan demos", "task 'can'", "task 'lift'"]),
    ("corrupt", ["corrupt"]),
    ("no_env_args", ["env_args"]),
])
def test_bad_robomimic_files_are_one_line_errors(tmp_path, case, needles):
    path = tmp_path / f"{case}.hdf5"
    if case == "missing_key":
        write_file(path, synthetic_demos([4], {k: d for k, d in OBS_KEYS.items() if k != "object"}))
    elif case == "wrong_dims":
        write_file(path, synthetic_demos([4], dict(OBS_KEYS, object=9)))
    elif case == "other_task":
        write_file(path, synthetic_demos([4], dict(OBS_KEYS, object=14)), env_args=old_env_args("PickPlaceCan"))
    elif case == "corrupt":
        write_file(path, synthetic_demos([4]))
        path.write_bytes(path.read_bytes()[:3000])
    else:
        write_file(path, synthetic_demos([4]))
        with h5py.File(path, "a") as f:
            del f["data"].attrs["env_args"]
    with pytest.raises(BenchError) as e:
        load_robomimic_hdf5(path, "lift")
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_bad_file_through_the_cli_writes_nothing(cli, tmp_path):
    path = write_file(tmp_path / "can.hdf5", synthetic_demos([4], dict(OBS_KEYS, object=14)),
                      env_args=old_env_args("PickPlaceCan"))
    for task, needle in (("lift", "task 'can'"), ("hopper", "not a robomimic task")):
        code, _, err = cli("run", "--task", task, "--preset", "smoke", "--out", tmp_path / "out",
                           "--set", f"data.source={path}")
        errors = [l for l in err.strip().splitlines() if l.startswith("error:")]
        assert code == 2 and len(errors) == 1 and needle in errors[0], err
    code, _, err = cli("run", "--task", "lift", "--preset", "smoke", "--out", tmp_path / "out",
                       "--set", f"data.source={write_file(tmp_path / 'ok.hdf5', synthetic_demos([8]))}",
                       "--set", "data.filter_key=better")
    assert code == 2 and "filter key 'better'" in err, err
    assert not (tmp_path / "out").exists()


def test_env_is_built_from_the_files_env_args_with_old_controller_configs(tmp_path):
    from bench.config import build_run_config
    from bench.runner import RunContext, make_env
    from envs.datasets import dataset_env_kwargs, load_dataset
    from envs.vector import Normalizer

    path = write_file(tmp_path / "low_dim_v141.hdf5", synthetic_demos([8, 6]),
                      env_args=old_env_args(control_freq=10, unknown_1_4_option=3))
    logs = []
    ds = load_dataset("lift", str(path), 0, 0, log=logs.append)
    assert len(ds.actions) == 14 and any("unknown_1_4_option" in line for line in logs)
    kwargs = dataset_env_kwargs("lift", str(path))
    ctrl = kwargs["controller_configs"]
    assert ctrl["type"] == "BASIC" and ctrl["body_parts"]["right"]["type"] == "OSC_POSE"
    assert ctrl["body_parts"]["right"]["kp"] == 100 and ctrl["body_parts"]["right"]["gripper"] == {"type": "GRIP"}
    assert kwargs["control_freq"] == 10 and "unknown_1_4_option" not in kwargs
    cfg = build_run_config("lift", "dppo", preset="smoke", overrides={"data.source": str(path)})
    norm = Normalizer.from_data(ds.observations, ds.actions)
    venv = make_env(RunContext.of(cfg), norm, 1)
    env = venv.env.envs[0].env.robosuite_env
    np.testing.assert_array_equal(env.robots[0].part_controllers["right"].kp, [100.0] * 6)
    assert env.control_freq == 10
    venv.close()
    # without a file, the defaults: robomimic's OSC_POSE (kp 150) at 20 Hz
    venv = make_env(RunContext.of(build_run_config("lift", "dppo", preset="smoke")), norm, 1)
    env = venv.env.envs[0].env.robosuite_env
    assert env.control_freq == 20 and env.robots[0].part_controllers["right"].kp[0] == 150.0
    venv.close()


# ---------------------------------------------------------------------------------------------------
# Built-in data and a run


def test_expert_demo_depends_only_on_seed_and_index():
    from envs import robomimic_data

    robomimic_data._WORKER.clear()
    first, ok = robomimic_data.rollout_demo("lift", 3, 1, "ph")
    robomimic_data.rollout_demo("lift", 3, 0, "ph")  # the same env ran another demo in between
    again, _ = robomimic_data.rollout_demo("lift", 3, 1, "ph")
    for k in first.obs:
        np.testing.assert_array_equal(first.obs[k], again.obs[k])
    np.testing.assert_array_equal(first.actions, again.actions)
    if ok:  # a kept demo ends after the task stayed solved for SUCCESS_HOLD steps
        assert first.rewards[-robomimic_data.SUCCESS_HOLD:].tolist() == [1.0] * robomimic_data.SUCCESS_HOLD


@pytest.mark.parametrize("algo", sorted(set(builtin_algorithms()) - {"dppo"}))
@pytest.mark.slow
def test_every_algorithm_runs_on_lift_with_the_smoke_preset(cli, tmp_path, _cache_dir, algo):
    # dppo's smoke run on lift is the test below; each baseline from its own pre-trained policy kind
    code, _, err = cli("run", "--algo", algo, "--task", "lift", "--preset", "smoke", "--out", tmp_path, "--quiet",
                       "--set", "torch_threads=1")
    assert code == 0, err
    s = json.loads((tmp_path / "runs" / "lift" / algo / "seed0" / "summary.json").read_text())
    assert s["complete"] and s["metric"] == "success_rate" and 0.0 <= s["final_success_rate"] <= 1.0


@pytest.mark.slow
def test_smoke_run_on_lift_with_builtin_demos_and_resume(cli, tmp_path, _cache_dir):
    args = ("run", "--algo", "dppo", "--task", "lift", "--preset", "smoke", "--out", tmp_path, "--quiet",
            "--set", "torch_threads=1")
    code, _, err = cli(*args)
    assert code == 0, err
    d = tmp_path / "runs" / "lift" / "dppo" / "seed0"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["metric"] == "success_rate" and summary["iterations"] == 2
    assert 0.0 <= summary["final_success_rate"] <= 1.0
    versions = json.loads((d / "versions.json").read_text())
    assert versions["versions"]["robosuite"] == "1.5.1"
    data_file = Path(versions["dataset_source"])
    assert data_file.parent == _cache_dir / "data" / "lift" and data_file.name.startswith("ph-2demos-seed0-")
    meta = json.loads(data_file.with_suffix(".json").read_text())
    assert meta["n_demos"] == 2 and 0 < meta["expert_success_rate"] <= 1 and meta["checksum"] == summary["dataset_checksum"]
    with h5py.File(data_file, "r") as f:
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "Lift" and len(f["data"]) == 2
    # robosuite envs cannot be snapshotted: a resumed run continues from freshly reset envs
    (d / "summary.json").unlink()
    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    assert json.loads((d / "summary.json").read_text())["final_eval"] == summary["final_eval"]
    # the same file given as a user's robomimic dataset: same data, so the cached pre-trained policy is reused
    code, _, err = cli("run", "--task", "lift", "--preset", "smoke", "--out", tmp_path / "file", "--quiet",
                       "--set", "torch_threads=1", "--set", f"data.source={data_file}", "--set", "train.n_iterations=1")
    assert code == 0, err
    s = json.loads((tmp_path / "file" / "runs" / "lift" / "dppo" / "seed0" / "summary.json").read_text())
    assert s["dataset_checksum"] == summary["dataset_checksum"] and s["pretrained_key"] == summary["pretrained_key"]


# ---------------------------------------------------------------------------------------------------
# Messages, masks, the built-in dataset + sidecar pair, controller configs without interpolation


def test_text_observations_and_directories_are_one_line_errors(tmp_path):
    demos = synthetic_demos([4])
    path = write_file(tmp_path / "text.hdf5", demos)
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/object"]
        f["data/demo_0/obs/object"] = np.array([[b"abc"] * 10] * 4)
    with pytest.raises(BenchError, match=r"data/demo_0: obs/object holds \|S3 values \(text") as e:
        load_robomimic_hdf5(path, "lift")
    assert "\n" not in str(e.value)
    (tmp_path / "dir.hdf5").mkdir()
    with pytest.raises(BenchError, match="is a directory, not an hdf5 file"):
        read_robomimic_hdf5(tmp_path / "dir.hdf5", tuple(OBS_KEYS))


def test_masks_always_have_train_and_valid_as_robomimic_writes_them(tmp_path):
    """robomimic's split_train_val_from_hdf5 writes both keys; with few demos valid is empty."""
    from envs.robomimic_data import robomimic_masks

    demos = synthetic_demos([4, 5, 6])
    masks = robomimic_masks(demos, seed=0)
    assert masks == {"train": ["demo_0", "demo_1", "demo_2"], "valid": []}
    assert len(robomimic_masks(synthetic_demos([3] * 20), 0)["valid"]) == 2
    path = write_file(tmp_path / "few.hdf5", demos, masks=masks)
    with h5py.File(path, "r") as f:
        assert sorted(f["mask"].keys()) == ["train", "valid"] and f["mask/valid"].shape == (0,)
    assert len(load_robomimic_hdf5(path, "lift", "train").actions) == 15
    with pytest.raises(BenchError, match="has no demos in filter key 'valid'"):
        load_robomimic_hdf5(path, "lift", "valid")


def _fake_rollout(task_name, seed, index, quality):
    (demo,) = synthetic_demos([5 + index % 3], seed=seed * 100 + index)
    return demo, index % 4 != 3  # every fourth attempt fails


def _fake_suite(root):
    from envs.robomimic_data import DemoSuite

    return DemoSuite(lambda t, n, q, s: root / "data" / t / f"{q}-{n}demos-seed{s}-test.hdf5", _fake_rollout,
                     lambda t: old_env_args(), load_robomimic_hdf5, lambda t: tuple(OBS_KEYS))


def test_builtin_demos_sidecar_is_written_first_and_checked(tmp_path, monkeypatch):
    import envs.robomimic_data as R
    from envs.datasets import DataConfig

    suite, data, logs = _fake_suite(tmp_path), DataConfig(n_demos=4, demo_quality="ph"), []
    ds = R.builtin_demo_dataset(suite, "lift", data, True, logs.append)
    path = suite.path("lift", 4, "ph", 0)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["checksum"] == ds.checksum == load_robomimic_hdf5(path, "lift").checksum
    assert meta["n_transitions"] == len(ds.actions)
    # no sidecar (a kill between the pair in the old order, or a deleted one): incomplete, never used
    path.with_suffix(".json").unlink()
    with pytest.raises(BenchError, match=r"is incomplete.*bench data make lift --force"):
        R.builtin_demo_dataset(suite, "lift", data, False, logs.append)
    assert R.builtin_demo_dataset(suite, "lift", data, True, logs.append).checksum == ds.checksum
    assert any("making it again" in m for m in logs)
    # a kill right after the sidecar is written leaves no data file: a missing dataset, made again
    real = R.atomic_write_json

    def write_then_die(p, obj):
        real(p, obj)
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "atomic_write_json", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        R.builtin_demo_dataset(suite, "lift", data, True, logs.append, force=True)
    monkeypatch.setattr(R, "atomic_write_json", real)
    assert path.exists()  # the old complete file is still in place (renamed over only after the sidecar)
    path.unlink()
    with pytest.raises(BenchError, match="is missing; make it with `bench data make lift`"):
        R.builtin_demo_dataset(suite, "lift", data, False, logs.append)
    # a corrupt cached file names --force
    R.builtin_demo_dataset(suite, "lift", data, True, logs.append)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(BenchError, match=r"corrupt.*remake it with `bench data make lift --force`"):
        R.builtin_demo_dataset(suite, "lift", data, False, logs.append)


def test_controller_config_without_interpolation_gets_robosuites_default(tmp_path):
    from bench.config import build_run_config
    from bench.runner import RunContext, make_env
    from envs.datasets import dataset_env_kwargs, load_dataset
    from envs.vector import Normalizer

    osc = {k: v for k, v in OLD_OSC.items() if k not in ("interpolation", "ramp_ratio")}
    args = old_env_args()
    args["env_kwargs"]["controller_configs"] = osc
    path = write_file(tmp_path / "no_interp.hdf5", synthetic_demos([8, 6]), env_args=args)
    logs = []
    ds = load_dataset("lift", str(path), 0, 0, log=logs.append)
    assert any("lacks interpolation" in m and "interpolation=None" in m for m in logs), logs
    right = dataset_env_kwargs("lift", str(path))["controller_configs"]["body_parts"]["right"]
    assert right["interpolation"] is None and right["kp"] == 100
    cfg = build_run_config("lift", "dppo", preset="smoke", overrides={"data.source": str(path)})
    venv = make_env(RunContext.of(cfg), Normalizer.from_data(ds.observations, ds.actions), 1)  # no KeyError
    assert venv.env.envs[0].env.robosuite_env.robots[0].part_controllers["right"].kp[0] == 100.0
    venv.close()
    # linear interpolation without a ramp ratio gets robosuite's 0.2
    from envs.robomimic_data import default_controller_keys

    cfg_linear = {"body_parts": {"right": {"type": "OSC_POSE", "interpolation": "linear"}}}
    assert default_controller_keys(cfg_linear) == ["ramp_ratio"]
    assert cfg_linear["body_parts"]["right"]["ramp_ratio"] == 0.2
