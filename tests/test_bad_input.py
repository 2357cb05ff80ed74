"""Bad input: one-line error naming the problem (and the valid choices), exit code 2, nothing written."""

import gymnasium as gym
import numpy as np
import pytest

from envs.datasets import TransitionDataset, write_d4rl_hdf5
from envs.tasks import TaskSpec, register_task, _TASKS


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    # one error line, the last thing printed (progress logs such as "wrote dataset" may come before it)
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for n in needles:
        assert n in errors[0], (n, errors[0])


@pytest.mark.parametrize("args,needles", [
    (["--algo", "ppo2"], ["unknown algorithm 'ppo2'", "dppo"]),
    (["--task", "ant"], ["unknown task 'ant'", "hopper", "walker2d", "halfcheetah"]),
    (["--preset", "huge"], ["unknown preset 'huge'", "smoke", "small", "paper"]),
    (["--set", "algo.residual_tyle=true"], ["unknown config key 'algo.residual_tyle'", "critic_residual"]),
    (["--set", "pretrain.residual_tyle=true"], ["pretrain.residual_tyle", "residual"]),
    (["--set", "nonsense"], ["malformed --set 'nonsense'"]),
    (["--set", "train.n_iterations=ten"], ["train.n_iterations", "integer"]),
    (["--set", "env.vector=threads"], ["env.vector", "sync", "async"]),
    (["--set", "algo=3"], ["section"]),
    (["--set", "task=walker2d"], ["task"]),
])
def test_bad_run_arguments(cli, tmp_path, args, needles):
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "out", *args)
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_missing_and_corrupt_dataset(cli, tmp_path):
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "out", "--set",
                       f"data.source={tmp_path / 'nope.hdf5'}")
    _one_line_error(code, err, "does not exist")
    bad = tmp_path / "corrupt.hdf5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(200)))
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "out", "--set", f"data.source={bad}")
    _one_line_error(code, err, "corrupt")
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "out", "--set", "data.source=s3://x")
    _one_line_error(code, err, "data.source", "builtin", "minari:")
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint(cli, tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = cli("eval", bad)
    _one_line_error(code, err, "corrupt")
    code, _, err = cli("eval", tmp_path / "missing_run")
    _one_line_error(code, err, "no checkpoint")
    # a run whose checkpoint is corrupt cannot be resumed, and is left as it was
    run = tmp_path / "out" / "runs" / "hopper" / "dppo" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "out", "--resume", "--quiet")
    _one_line_error(code, err, "corrupt")
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"garbage"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]


class NaNAfterThreeSteps(gym.Env):
    """A 3-dim point whose observation becomes NaN on the 3rd step (a simulator blowing up)."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(3, np.nan if self.t >= 3 else 0.5, np.float32)
        return obs, 0.0, False, False, {}


@pytest.fixture
def nan_task(tmp_path):
    spec = TaskSpec(name="nan_point", suite="toy", env_id="nan", obs_dim=3, act_dim=2, max_episode_steps=20,
                    make_env=lambda env_id, steps: gym.wrappers.TimeLimit(NaNAfterThreeSteps(), steps))
    register_task(spec)
    rng = np.random.default_rng(0)
    n = 200
    ds = TransitionDataset(rng.uniform(-1, 1, (n, 3)).astype(np.float32), rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                           np.zeros(n, np.float32), np.zeros(n, bool), (np.arange(n) % 20) == 19)
    path = tmp_path / "nan_point.hdf5"
    write_d4rl_hdf5(path, ds)
    yield path
    _TASKS.pop("nan_point")


def test_nan_observation_stops_the_run(cli, tmp_path, nan_task):
    code, _, err = cli("run", "--task", "nan_point", "--preset", "smoke", "--out", tmp_path / "out", "--quiet",
                       "--set", f"data.source={nan_task}", "--set", "pretrain.hidden_dims=16,16,16",
                       "--set", "pretrain.n_updates=20", "--set", "train.n_iterations=2", "--set", "train.n_steps=4",
                       "--set", "env.n_envs=2", "--set", "eval.n_envs=2", "--set", "eval.n_episodes=2",
                       "--set", "algo.batch_size=8", "--set", "pretrain.denoising_steps=4",
                       "--set", "algo.ft_denoising_steps=2")
    _one_line_error(code, err, "non-finite observation", "nan_point")
    assert not list((tmp_path / "out").rglob("summary.json"))


def test_nan_loss_stops_the_run_and_nothing_looks_complete(cli, tmp_path):
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "out", "--quiet", "--set",
                       "algo.critic_lr=1e15", "--set", "algo.critic_lr_min=1e15", "--set", "train.n_iterations=5")
    _one_line_error(code, err, "loss became nan")
    assert not list((tmp_path / "out").rglob("summary.json"))


def test_nan_pretraining_loss_writes_nothing(cli, tmp_path):
    import os
    from pathlib import Path

    cache = Path(os.environ["DPPO_BENCH_CACHE"]) / "pretrained"
    before = sorted(cache.rglob("*.pt")) if cache.exists() else []
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "out", "--quiet",
                       "--set", "pretrain.lr=1e30", "--set", "pretrain.lr_min=1e30")
    _one_line_error(code, err, "pre-training loss became nan")
    assert not (tmp_path / "out").exists()
    assert (sorted(cache.rglob("*.pt")) if cache.exists() else []) == before


def test_algorithm_config_errors_come_before_any_data_or_pretraining(cli, tmp_path, monkeypatch):
    # an unusable algorithm value is a one-line error when the config is composed: nothing made or written
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "cache"))
    for algo, bad in (("idql", "algo.expectile=1.5"), ("dipo", "algo.batch_size=0"),
                      ("gaussian_ppo", "algo.std_min=0"), ("dppo", "algo.critic_hidden=[64,64]"),
                      ("dawr", "pretrain.hidden_dims=[64,64]")):
        code, _, err = cli("run", "--algo", algo, "--task", "hopper", "--out", tmp_path / "out", "--set", bad)
        assert code != 0 and bad.split("=")[0] in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
