"""Bad input, table-driven, through the real CLI entry point in-process: every case exits 2 with exactly one
`error:` line, no traceback, and leaves the output directory, the inputs and the cache exactly as they were
(validation fails before any data, pre-training or run directory is made)."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

SMOKE = ["--preset", "smoke", "--task", "point_reach"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, _cache_dir):
    """One complete point_reach smoke run (about a second), for the eval and resume cases."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("base")
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", *SMOKE, "--out", str(root), "--quiet",
                        "--set", "torch_threads=1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return root


class Ctx:
    def __init__(self, tmp: Path, base: Path, cache: Path, monkeypatch):
        self.tmp, self.base, self.cache, self.monkeypatch = tmp, base, cache, monkeypatch
        self.out = tmp / "out"  # does not exist: no case may create it

    @property
    def run_dir(self) -> Path:
        return self.base / "runs" / "point_reach" / "dppo" / "seed0"

    @property
    def ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def copy_run(self) -> Path:
        """A copy of the complete run under tmp/copy, as if killed after its last checkpoint."""
        dst = self.tmp / "copy" / "runs" / "point_reach" / "dppo" / "seed0"
        shutil.copytree(self.run_dir, dst)
        (dst / "summary.json").unlink()
        return dst

    def checkpoint_without(self, key: str) -> Path:
        state = torch.load(self.ckpt, weights_only=False)
        del state[key]
        path = self.tmp / f"no_{key}.pt"
        torch.save(state, path)
        return path

    def without_module(self, name: str) -> None:
        """As if the package `name` were not installed (for this test only)."""
        import sys

        self.monkeypatch.setitem(sys.modules, name, None)

    def a_file(self) -> Path:
        path = self.tmp / "a_file"
        path.write_text("x")
        return path

    def read_only_dir(self) -> Path:
        if os.geteuid() != 0:
            d = self.tmp / "ro"
            d.mkdir()
            d.chmod(0o555)
            return d / "out"
        # root writes through permission bits: use a directory that refuses files to everyone
        from bench.runner import check_out_root
        from core.errors import BenchError

        try:
            check_out_root(Path("/sys"), Path("/sys/dppo-bench-test"))
        except BenchError:
            return Path("/sys/dppo-bench-test")
        pytest.skip("no read-only directory available (running as root)")


def run(*args):
    return ["run", *SMOKE, *args]


def sets(*items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


# (id, setup(ctx) -> argv, needles in the error line)
CASES = [
    # names and syntax
    ("unknown algo", lambda c: run("--out", c.out, "--algo", "ppo2"), ["unknown algorithm 'ppo2'", "dppo"]),
    ("unknown task", lambda c: ["run", "--preset", "smoke", "--task", "ant", "--out", c.out], ["unknown task 'ant'", "hopper"]),
    ("unknown preset", lambda c: ["run", "--task", "point_reach", "--preset", "huge", "--out", c.out], ["huge", "smoke"]),
    ("unknown key", lambda c: run("--out", c.out, *sets("algo.nope=1")), ["unknown config key 'algo.nope'", "actor_lr"]),
    ("unknown section", lambda c: run("--out", c.out, *sets("trian.n_iterations=1")), ["trian", "train"]),
    ("malformed --set", lambda c: run("--out", c.out, *sets("nonsense")), ["malformed --set 'nonsense'"]),
    ("malformed --set empty key", lambda c: run("--out", c.out, *sets("=3")), ["malformed --set"]),
    ("not an integer", lambda c: run("--out", c.out, *sets("train.n_iterations=ten")), ["train.n_iterations", "integer"]),
    ("a section", lambda c: run("--out", c.out, *sets("algo=3")), ["section"]),
    ("fixed key task", lambda c: run("--out", c.out, *sets("task=hopper")), ["task", "--task"]),
    ("fixed key seed", lambda c: run("--out", c.out, *sets("seed=3")), ["seed", "--seed"]),
    ("bad literal", lambda c: run("--out", c.out, *sets("env.vector=threads")), ["env.vector", "sync", "async"]),
    # values
    ("n_iterations 0", lambda c: run("--out", c.out, *sets("train.n_iterations=0")), ["train.n_iterations", ">= 1"]),
    ("n_iterations negative", lambda c: run("--out", c.out, *sets("train.n_iterations=-3")), ["train.n_iterations", ">= 1"]),
    ("eval.every 0", lambda c: run("--out", c.out, *sets("eval.every=0")), ["eval.every", ">= 1"]),
    ("checkpoint_every 0", lambda c: run("--out", c.out, *sets("train.checkpoint_every=0")), ["train.checkpoint_every"]),
    ("eval.n_episodes 0", lambda c: run("--out", c.out, *sets("eval.n_episodes=0")), ["eval.n_episodes", ">= 1"]),
    ("eval.n_envs 0", lambda c: run("--out", c.out, *sets("eval.n_envs=0")), ["eval.n_envs"]),
    ("env.n_envs 0", lambda c: run("--out", c.out, *sets("env.n_envs=0")), ["env.n_envs", ">= 1"]),
    ("env.n_envs negative", lambda c: run("--out", c.out, *sets("env.n_envs=-2")), ["env.n_envs", "-2"]),
    ("n_steps 0", lambda c: run("--out", c.out, *sets("train.n_steps=0")), ["train.n_steps"]),
    ("denoising_steps 0", lambda c: run("--out", c.out, *sets("pretrain.denoising_steps=0")), ["pretrain.denoising_steps"]),
    ("ft_denoising_steps above K", lambda c: run("--out", c.out, *sets("algo.ft_denoising_steps=11")),
     ["algo.ft_denoising_steps", "1..10", "pretrain.denoising_steps"]),
    ("ft_denoising_steps 0", lambda c: run("--out", c.out, *sets("algo.ft_denoising_steps=0")), ["algo.ft_denoising_steps"]),
    ("ddim_steps not dividing K", lambda c: run("--out", c.out, *sets("algo.use_ddim=true", "algo.ddim_steps=3")),
     ["algo.ddim_steps", "1, 2, 5, 10"]),
    ("ft_denoising_steps above ddim_steps", lambda c: run("--out", c.out, *sets("algo.use_ddim=true", "algo.ddim_steps=5",
                                                                                "algo.ft_denoising_steps=6")),
     ["algo.ft_denoising_steps", "1..5", "ddim_steps"]),
    ("negative actor_lr", lambda c: run("--out", c.out, *sets("algo.actor_lr=-1e-4")), ["algo.actor_lr", ">= 0"]),
    ("negative critic_lr_min", lambda c: run("--out", c.out, *sets("algo.critic_lr_min=-1")), ["algo.critic_lr_min"]),
    ("negative pretrain.lr", lambda c: run("--out", c.out, *sets("pretrain.lr=-0.001")), ["pretrain.lr"]),
    ("nan critic_lr", lambda c: run("--out", c.out, *sets("algo.critic_lr=nan")), ["algo.critic_lr"]),
    ("inf actor_lr", lambda c: run("--out", c.out, *sets("algo.actor_lr=inf")), ["algo.actor_lr", "finite"]),
    ("negative drwr lr", lambda c: run("--out", c.out, "--algo", "drwr", *sets("algo.lr=-1")), ["algo.lr"]),
    ("negative dipo action_lr", lambda c: run("--out", c.out, "--algo", "dipo", *sets("algo.action_lr=-1")),
     ["algo.action_lr"]),
    ("nan clip", lambda c: run("--out", c.out, *sets("algo.clip=nan")), ["algo.clip", "nan"]),
    ("torch_threads -1", lambda c: run("--out", c.out, *sets("torch_threads=-1")), ["torch_threads", ">= 0"]),
    ("pretrain.batch_size 0", lambda c: run("--out", c.out, *sets("pretrain.batch_size=0")), ["pretrain.batch_size"]),
    ("algo.batch_size 0", lambda c: run("--out", c.out, *sets("algo.batch_size=0")), ["algo.batch_size"]),
    ("pretrain.ema_every 0", lambda c: run("--out", c.out, *sets("pretrain.ema_every=0")), ["pretrain.ema_every"]),
    ("negative weight decay", lambda c: run("--out", c.out, *sets("pretrain.weight_decay=-1")), ["pretrain.weight_decay"]),
    ("data.n_transitions 0", lambda c: run("--out", c.out, *sets("data.n_transitions=0")), ["data.n_transitions"]),
    ("max_loss 0", lambda c: run("--out", c.out, *sets("train.max_loss=0")), ["train.max_loss"]),
    ("max_episode_steps 0", lambda c: run("--out", c.out, *sets("env.max_episode_steps=0")), ["env.max_episode_steps"]),
    ("act_steps above horizon", lambda c: run("--out", c.out, *sets("env.act_steps=99")), ["env.act_steps"]),
    ("seed -1", lambda c: run("--out", c.out, "--seed", "-1"), ["seed", ">= 0"]),
    ("sim for a non-furniture task", lambda c: run("--out", c.out, *sets("env.sim=isaacgym")), ["env.sim", "furniture"]),
    ("--sim conflicts with --set", lambda c: run("--out", c.out, "--sim", "mujoco", *sets("env.sim=isaacgym")),
     ["--sim mujoco", "env.sim=isaacgym"]),
    ("bad --sim", lambda c: run("--out", c.out, "--sim", "bullet"), ["env.sim", "mujoco", "isaacgym"]),
    ("wandb not installed", lambda c: (c.without_module("wandb"), run("--out", c.out, *sets("log.wandb=true")))[1],
     ["log.wandb=true", "pip install 'dppo-bench[wandb]'"]),
    ("bad wandb mode", lambda c: run("--out", c.out, *sets("log.wandb_mode=cloud")), ["log.wandb_mode", "offline", "online"]),
    ("bad wandb project", lambda c: run("--out", c.out, *sets("log.wandb_project=a/b")), ["log.wandb_project", "'a/b'"]),
    ("log.tensorboard not a bool", lambda c: run("--out", c.out, *sets("log.tensorboard=maybe")), ["log.tensorboard", "true or false"]),
    ("bench config validates too", lambda c: ["config", *SMOKE, *sets("eval.every=0")], ["eval.every"]),
    # output directory
    ("--out is a file", lambda c: run("--out", c.a_file(), *sets("torch_threads=1")), ["is a file"]),
    ("--out below a file", lambda c: run("--out", c.a_file() / "sub", *sets("torch_threads=1")), ["is a file"]),
    ("--out read-only", lambda c: run("--out", c.read_only_dir(), *sets("torch_threads=1")), ["cannot write"]),
    # runs that exist
    ("complete run without --resume", lambda c: run("--out", c.base), ["already exists and is complete"]),
    ("incomplete run without --resume", lambda c: (c.copy_run(), run("--out", c.tmp / "copy"))[1], ["--resume"]),
    ("resume: changed config before the first checkpoint",
     lambda c: (shutil.rmtree(c.copy_run() / "checkpoints"),
                run("--out", c.tmp / "copy", "--resume", "--quiet", *sets("algo.clip=0.5")))[1],
     ["config differs", "config.json", "algo.clip"]),
    ("resume: changed config after a checkpoint",
     lambda c: (c.copy_run(), run("--out", c.tmp / "copy", "--resume", "--quiet", *sets("algo.clip=0.5")))[1],
     ["config differs", "checkpoint", "algo.clip"]),
    ("resume: checkpoint without algo",
     lambda c: (shutil.move(c.checkpoint_without("algo"), c.copy_run() / "checkpoints" / "last.pt"),
                run("--out", c.tmp / "copy", "--resume", "--quiet"))[1], ["incomplete", "algo"]),
    # eval
    ("eval --episodes -1", lambda c: ["eval", c.run_dir, "--episodes", "-1"], ["--episodes", ">= 1"]),
    ("eval --episodes 0", lambda c: ["eval", c.run_dir, "--episodes", "0"], ["--episodes", ">= 1"]),
    ("eval --seed -1", lambda c: ["eval", c.run_dir, "--seed", "-1"], ["--seed"]),
    ("eval a missing run", lambda c: ["eval", c.tmp / "nope"], ["no checkpoint"]),
    ("eval a corrupt checkpoint", lambda c: (c.a_file(), ["eval", c.tmp / "a_file"])[1], ["corrupt"]),
    ("eval a pre-trained checkpoint", lambda c: ["eval", next(c.cache.glob("pretrained/point_reach/*.pt"))],
     ["pre-trained policy", "not a run checkpoint"]),
    ("eval a checkpoint without algo", lambda c: ["eval", c.checkpoint_without("algo")], ["incomplete", "algo"]),
    ("eval a checkpoint without config", lambda c: ["eval", c.checkpoint_without("config")], ["incomplete", "config"]),
    # grid
    ("grid --workers 0", lambda c: ["grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds", "0", "--preset", "smoke",
                                    "--root", c.out, "--workers", "0"], ["--workers", "positive"]),
    ("grid --workers -1", lambda c: ["grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds", "0", "--preset", "smoke",
                                     "--root", c.out, "--workers=-1"], ["--workers"]),
    ("grid negative seed", lambda c: ["grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds=-1", "--preset", "smoke",
                                      "--root", c.out], ["seeds"]),
    ("grid backwards seeds", lambda c: ["grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds", "3-1",
                                        "--preset", "smoke", "--root", c.out], ["backwards"]),
    ("grid bad seeds", lambda c: ["grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds", "a", "--preset", "smoke",
                                  "--root", c.out], ["seeds", "'a'"]),
    ("grid unknown algo", lambda c: ["grid", "--algos", "dppo,nope", "--tasks", "point_reach", "--seeds", "0",
                                     "--preset", "smoke", "--root", c.out], ["nope"]),
    ("grid bad value", lambda c: ["grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds", "0", "--preset", "smoke",
                                  "--root", c.out, *sets("train.n_iterations=0")], ["train.n_iterations"]),
    ("grid --root is a file", lambda c: ["grid", "--algos", "dppo", "--tasks", "point_reach", "--seeds", "0",
                                         "--preset", "smoke", "--root", c.a_file()], ["--root", "is a file"]),
    ("grid missing --tasks", lambda c: ["grid", "--algos", "dppo", "--seeds", "0", "--root", c.out], ["--tasks"]),
    # other commands
    ("pretrain unknown policy kind", lambda c: ["pretrain", *SMOKE, "--policy", "nope"], ["nope"]),
]


def _snapshot(*roots: Path) -> dict:
    snap = {}
    for root in roots:
        if not root.exists():
            snap[str(root)] = None
            continue
        for p in sorted(root.rglob("*")):
            st = p.lstat()
            snap[str(p)] = "dir" if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return snap


@pytest.mark.parametrize("case_id,setup,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_table(cli, tmp_path, base_run, _cache_dir, monkeypatch, case_id, setup, needles):
    ctx = Ctx(tmp_path, base_run, _cache_dir, monkeypatch)
    args = setup(ctx)
    before = _snapshot(tmp_path, base_run, _cache_dir)
    t0 = time.time()
    code, out, err = cli(*args)
    wall = time.time() - t0
    assert "Traceback" not in out + err, err
    assert code == 2, (code, out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and len(lines) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert _snapshot(tmp_path, base_run, _cache_dir) == before, "the file tree changed"
    assert not ctx.out.exists()
    assert wall < 5, f"{case_id} took {wall:.1f} s: validation must come before any work"


def test_the_table_is_big_enough():
    assert len(CASES) >= 40


def test_resume_refuses_a_changed_dataset(cli, tmp_path, base_run, _cache_dir):
    """After the data.source file changes, --resume refuses (before pre-training a new base policy)
    instead of continuing the old fine-tuned actor on a new pre-trained policy."""
    import numpy as np

    from envs.datasets import TransitionDataset, load_d4rl_hdf5, write_d4rl_hdf5

    src = next(_cache_dir.glob("data/point_reach/*.hdf5"))
    data = tmp_path / "data.hdf5"
    shutil.copy(src, data)
    out = tmp_path / "out"
    args = ["run", *SMOKE, "--out", out, "--quiet", "--set", "torch_threads=1", "--set", f"data.source={data}"]
    code, _, err = cli(*args)
    assert code == 0, err
    d = out / "runs" / "point_reach" / "dppo" / "seed0"
    ckpt = torch.load(d / "checkpoints" / "last.pt", weights_only=False)
    versions = json.loads((d / "versions.json").read_text())
    assert ckpt["dataset_checksum"] == versions["dataset_checksum"]
    assert ckpt["pretrained_key"] == versions["pretrained"]["key"]
    (d / "summary.json").unlink()  # as if killed after its last checkpoint
    ds = load_d4rl_hdf5(data)
    n = len(ds.observations) - 50
    changed = TransitionDataset(ds.observations[:n], ds.actions[:n], ds.rewards[:n] + 1.0, ds.terminals[:n],
                                np.asarray(ds.timeouts[:n]).copy())
    changed.timeouts[-1] = True
    write_d4rl_hdf5(data, changed)
    before = _snapshot(out, _cache_dir)
    code, _, err = cli(*args, "--resume")
    assert code == 2 and "Traceback" not in err, err
    assert "dataset" in err and "changed" in err, err
    assert _snapshot(out, _cache_dir) == before  # no new pre-trained policy, nothing rewritten


def test_divergence_stops_the_run_without_checkpointing_it(cli, tmp_path):
    """critic_lr=100 on hopper: the value loss explodes at iteration 2 (~1e18); the run stops with one error
    line, writes no summary and keeps the iteration-1 checkpoint untouched; with no checkpoint yet the
    message says so instead of claiming one was kept."""
    lrs = ["--set", "algo.critic_lr=100", "--set", "algo.critic_lr_min=100", "--set", "torch_threads=1"]
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "a", "--quiet", *lrs)
    assert code == 2 and "Traceback" not in err, err
    assert "train.max_loss" in err and "v_loss" in err and "last good checkpoint kept: iteration 1" in err, err
    d = tmp_path / "a" / "runs" / "hopper" / "dppo" / "seed0"
    assert not (d / "summary.json").exists()
    state = torch.load(d / "checkpoints" / "last.pt", weights_only=False)
    assert state["iteration"] == 1
    assert all(torch.isfinite(t).all() for t in state["algo"]["critic"].values())

    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "b", "--quiet", *lrs,
                       "--set", "train.checkpoint_every=5")
    assert code == 2 and "no checkpoint was written yet" in err and "kept" not in err, err
    assert not (tmp_path / "b" / "runs" / "hopper" / "dppo" / "seed0" / "checkpoints" / "last.pt").exists()

    # without the threshold the optimiser state overflows next: caught by the parameter/state check
    code, _, err = cli("run", "--preset", "smoke", "--out", tmp_path / "c", "--quiet", *lrs,
                       "--set", "train.max_loss=none", "--set", "train.n_iterations=6")
    assert code == 2 and "non-finite parameters or optimiser state" in err, err
    assert not list((tmp_path / "c").rglob("summary.json"))
    state = torch.load(tmp_path / "c" / "runs" / "hopper" / "dppo" / "seed0" / "checkpoints" / "last.pt",
                       weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["algo"]["critic"].values())
