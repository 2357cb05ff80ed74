"""End-to-end runs through the CLI with the smoke preset: complete results, determinism, resume, eval."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

TIMING = ["wall_s", "cpu_s", "rollout_s", "update_s", "env_steps_per_s", "eval_s"]


def run_dir(out, task="hopper", algo="dppo", seed=0):
    return Path(out) / "runs" / task / algo / f"seed{seed}"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from bench.cli import main  # noqa: F401  (import cost outside the timed part)

    out = tmp_path_factory.mktemp("smoke")
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--task", "hopper", "--preset", "smoke",
                        "--out", str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


def test_smoke_run_writes_complete_loadable_results(smoke_run):
    d = run_dir(smoke_run)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["complete"] and summary["iterations"] == 2 and summary["env_steps"] > 0
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["config"]["algorithm"] == "dppo" and cfg["config"]["algo"]["ft_denoising_steps"] == 5
    assert "run" in cfg["command"]
    ver = json.loads((d / "versions.json").read_text())
    assert len(ver["dataset_checksum"]) == 64 and ver["versions"]["torch"] == torch.__version__
    metrics = pd.read_csv(d / "metrics.csv")
    assert list(metrics["iteration"]) == [1, 2]
    assert np.isfinite(metrics[["pg_loss", "v_loss"]].to_numpy()).all()
    evals = pd.read_csv(d / "eval.csv")
    assert list(evals["iteration"]) == [0, 1, 2] and (evals["n_episodes"] == 2).all()
    assert summary["final_return"] == pytest.approx(evals["return_mean"].iloc[-1])
    ckpt = torch.load(d / "checkpoints" / "last.pt", weights_only=False)
    for key in ("algo", "rng", "tracker", "env", "pretrained", "normalizer"):
        assert key in ckpt
    for key in ("actor_opt", "critic_opt", "reward_scaler"):
        assert key in ckpt["algo"]
    assert not list(d.rglob("*.tmp"))


def test_same_seed_gives_identical_metrics(smoke_run, tmp_path, cli):
    code, _, err = cli("run", "--task", "hopper", "--preset", "smoke", "--out", tmp_path, "--quiet")
    assert code == 0, err
    a = pd.read_csv(run_dir(smoke_run) / "metrics.csv").drop(columns=TIMING, errors="ignore")
    b = pd.read_csv(run_dir(tmp_path) / "metrics.csv").drop(columns=TIMING, errors="ignore")
    pd.testing.assert_frame_equal(a, b)
    ea = pd.read_csv(run_dir(smoke_run) / "eval.csv").drop(columns=TIMING, errors="ignore")
    eb = pd.read_csv(run_dir(tmp_path) / "eval.csv").drop(columns=TIMING, errors="ignore")
    pd.testing.assert_frame_equal(ea, eb)


def test_eval_uses_finetuned_weights(smoke_run, cli):
    """`bench eval` must evaluate actor_ft (the original once evaluated the base network)."""
    from bench.runner import load_for_eval

    d = run_dir(smoke_run)
    ctx, algo, norm, state = load_for_eval(d)
    assert all(torch.equal(v, state["algo"]["actor_ft"][k]) for k, v in algo.actor_ft.state_dict().items())
    base = {k: v for k, v in algo.actor.state_dict().items()}
    assert any(not torch.equal(v, base[k]) for k, v in algo.actor_ft.state_dict().items()), "fine-tuning changed nothing"
    obs = torch.zeros(3, algo.ctx.obs_dim)
    a_ft = algo.act(obs, deterministic=True, generator=torch.Generator().manual_seed(0)).actions
    algo.actor_ft.load_state_dict(base)
    a_base = algo.act(obs, deterministic=True, generator=torch.Generator().manual_seed(0)).actions
    assert not torch.allclose(a_ft, a_base)
    # the CLI's evaluation reproduces the run's own final evaluation exactly
    code, out, err = cli("eval", d)
    assert code == 0, err
    res = json.loads(out)
    final = pd.read_csv(d / "eval.csv").iloc[-1]
    assert res["return_mean"] == pytest.approx(final["return_mean"], rel=1e-9)
    assert res["iteration"] == 2


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(smoke_run, tmp_path):
    """SIGKILL a real run after its first checkpoint; nothing looks complete; --resume finishes it with
    the same metrics as an uninterrupted run."""
    args = [sys.executable, "-m", "bench.cli", "run", "--task", "hopper", "--preset", "smoke", "--out", str(tmp_path),
            "--quiet", "--set", "train.n_iterations=12", "--set", "eval.every=4", "--set", "train.n_steps=24"]
    d = run_dir(tmp_path)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = d / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and len(pd.read_csv(d / "metrics.csv")) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (d / "summary.json").exists()
    rows_at_kill = len(pd.read_csv(d / "metrics.csv"))
    assert 0 < rows_at_kill < 12
    # what a kill during an atomic write leaves (whether or not this kill hit one): removed by the resume
    (d / "checkpoints" / ".last.pt.k1lled00.tmp").write_bytes(b"partial")
    # without --resume the incomplete run is refused, not overwritten
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resumed = pd.read_csv(d / "metrics.csv").drop(columns=TIMING, errors="ignore")
    assert list(resumed["iteration"]) == list(range(1, 13))
    assert not list(d.rglob(".*.tmp")), "temp files of the killed run survived the resume"
    fresh_out = tmp_path / "fresh"
    args_fresh = [a if a != str(tmp_path) else str(fresh_out) for a in args]
    r = subprocess.run(args_fresh, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    fresh = pd.read_csv(run_dir(fresh_out) / "metrics.csv").drop(columns=TIMING, errors="ignore")
    pd.testing.assert_frame_equal(resumed, fresh)
    ev_r = pd.read_csv(d / "eval.csv").drop(columns=TIMING, errors="ignore")
    ev_f = pd.read_csv(run_dir(fresh_out) / "eval.csv").drop(columns=TIMING, errors="ignore")
    pd.testing.assert_frame_equal(ev_r, ev_f)
    # a second --resume of a complete run changes nothing
    before = (d / "summary.json").read_text()
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0 and (d / "summary.json").read_text() == before


def test_async_vector_env_gives_the_same_run(smoke_run, tmp_path, cli):
    """AsyncVectorEnv (worker processes) is an execution choice only: same seed, same metrics."""
    code, _, err = cli("run", "--task", "hopper", "--preset", "smoke", "--out", tmp_path, "--quiet",
                       "--set", "env.vector=async")
    assert code == 0, err
    a = pd.read_csv(run_dir(smoke_run) / "metrics.csv").drop(columns=TIMING, errors="ignore")
    b = pd.read_csv(run_dir(tmp_path) / "metrics.csv").drop(columns=TIMING, errors="ignore")
    pd.testing.assert_frame_equal(a, b)


def test_env_restore_is_exact_for_sync_envs_and_refused_for_worker_processes():
    """A resumed run continues the checkpointed episodes only where the env states can be restored; with
    worker processes (async) env_restore says so (None), and the run neither reuses the old observations
    nor counts the abandoned episodes' partial returns."""
    from bench.runner import env_restore, env_snapshot
    from envs.tasks import get_task
    from envs.vector import Normalizer, TaskVectorEnv

    task = get_task("hopper")
    norm = Normalizer(*(np.full(d, v, np.float32) for d, v in
                        ((task.obs_dim, -10), (task.obs_dim, 10), (task.act_dim, -1), (task.act_dim, 1))))
    chunk = np.zeros((2, task.act_steps, task.act_dim), np.float32)
    for vector, restorable in (("sync", True), ("async", False)):
        a, b = (TaskVectorEnv(task, 2, task.act_steps, norm, vector=vector) for _ in range(2))
        try:
            a.reset(seed=0)
            obs = a.step(chunk).obs
            snap = env_snapshot(a, obs)
            b.reset(seed=1)
            restored = env_restore(b, snap)
            if not restorable:
                assert restored is None
                continue
            np.testing.assert_array_equal(restored, obs)
            np.testing.assert_array_equal(a.step(chunk).obs, b.step(chunk).obs)
        finally:
            a.env.close()
            b.env.close()


def test_resume_with_a_different_config_is_refused(smoke_run, tmp_path, cli):
    import shutil

    shutil.copytree(smoke_run / "runs", tmp_path / "runs")
    d = run_dir(tmp_path)
    (d / "summary.json").unlink()  # as if killed after its last checkpoint
    before = sorted((p.name, p.stat().st_mtime_ns) for p in d.rglob("*"))
    code, _, err = cli("run", "--task", "hopper", "--preset", "smoke", "--out", tmp_path, "--quiet", "--resume",
                       "--set", "algo.clip=0.02")
    assert code == 2 and "config differs" in err and "algo.clip" in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in d.rglob("*")) == before
