"""Pre-training of the Gaussian and GMM policies: maximum likelihood imitates the data; the cache is keyed
by policy kind and by the settings each kind depends on (the diffusion key is the historical one); old
checkpoints still load; `bench pretrain --policy` through the CLI, and its bad input."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from algorithms.gaussian import GaussianPolicy, GMMPolicy
from algorithms.gaussian import GaussianPolicyConfig, GMMPolicyConfig
from bench.config import PretrainConfig, pretrain_config
from bench.pretrain import load_pretrained, pretrain_key, pretrain_policy
from tests.test_pretrain import synthetic_dataset

torch.set_num_threads(1)


@pytest.mark.parametrize("kind", ["gaussian", "gmm"])
def test_maximum_likelihood_pretraining_imitates_the_data(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    cfg = PretrainConfig(hidden_dims=(64, 64, 64), n_updates=400, batch_size=128, lr=3e-3, lr_min=3e-4, ema_start=100)
    path = pretrain_policy(kind, "synthetic", 2, 2, synthetic_dataset(), 1, cfg)
    assert path.name.startswith(f"{kind}-")
    policy, norm, meta = load_pretrained(path)
    assert isinstance(policy, GaussianPolicy if kind == "gaussian" else GMMPolicy)
    assert meta["policy_kind"] == kind and meta["loss_curve"][-1]["loss"] < meta["loss_curve"][0]["loss"]
    assert not policy.log_var.requires_grad and torch.allclose(policy.log_var.mul(0.5).exp(), torch.tensor(0.1))
    obs = np.array([[0.5, 0.5], [-0.9, 0.2], [0.0, -0.7]], np.float32)
    x = policy.sample(torch.as_tensor(norm.normalize_obs(obs)), deterministic=True)
    if kind == "gmm":  # the mean of the most likely mode
        x = policy.sample(torch.as_tensor(norm.normalize_obs(obs)), deterministic=True, mode_choice="argmax")
    act = norm.unnormalize_act(x[:, 0].detach().numpy())
    np.testing.assert_allclose(act, np.stack([0.8 * obs[:, 0], -0.5 * obs[:, 1]], 1), atol=0.1)


def test_cache_is_keyed_by_policy_kind_and_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    cfg = pretrain_config(hidden_dims=(16, 16, 16), denoising_steps=4, n_updates=10, batch_size=16, time_dim=8)
    ds = synthetic_dataset(300)
    paths = {k: pretrain_policy(k, "synthetic", 2, 2, ds, 1, cfg) for k in ("diffusion", "gaussian", "gmm")}
    assert len(set(paths.values())) == 3 and all(p.exists() for p in paths.values())
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    for k, p in paths.items():  # the same inputs reuse the file
        assert pretrain_policy(k, "synthetic", 2, 2, ds, 1, cfg) == p and p.stat().st_mtime_ns == stamps[k]

    # one key layout for every kind, by hand: the optimisation fields plus the kind's resolved architecture
    train = {"n_updates": 10, "batch_size": 16, "lr": 1e-3, "lr_min": 1e-4, "weight_decay": 1e-6, "ema_decay": 0.995,
             "ema_start": 1000, "ema_every": 5, "seed": 0}
    arch = {"denoising_steps": 4, "hidden_dims": [16, 16, 16], "time_dim": 8, "activation": "ReLU", "residual": True,
            "denoised_clip": 1.0}
    blob = json.dumps({"v": 2, "kind": "diffusion", "task": "synthetic", "data": ds.checksum, "Tp": 1, "train": train,
                       "arch": arch}, sort_keys=True)
    assert paths["diffusion"].name == f"diffusion-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"
    gaussian = dict(arch, std="fixed", fixed_std=0.1, state_std_min=0.01, state_std_max=1.0)
    for k in ("denoising_steps", "time_dim", "denoised_clip"):
        del gaussian[k]
    blob = json.dumps({"v": 2, "kind": "gaussian", "task": "synthetic", "data": ds.checksum, "Tp": 1, "train": train,
                       "arch": gaussian}, sort_keys=True)
    assert paths["gaussian"].name == f"gaussian-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"

    def key(kind, c):
        return pretrain_key("synthetic", ds.checksum, 1, c, kind)

    arch = dataclasses.replace(cfg, gaussian=GaussianPolicyConfig(fixed_std=0.2))
    assert key("gaussian", arch) != key("gaussian", cfg)
    assert key("gmm", arch) == key("gmm", cfg) and key("diffusion", arch) == key("diffusion", cfg)
    modes = dataclasses.replace(cfg, gmm=GMMPolicyConfig(n_modes=3))
    assert key("gmm", modes) != key("gmm", cfg) and key("gaussian", modes) == key("gaussian", cfg)
    diffusion_only = dataclasses.replace(cfg, time_dim=16, denoising_steps=8)
    assert key("diffusion", diffusion_only) != key("diffusion", cfg)
    assert key("gaussian", diffusion_only) == key("gaussian", cfg) and key("gmm", diffusion_only) == key("gmm", cfg)
    shared = dataclasses.replace(cfg, lr=5e-4)
    assert all(key(k, shared) != key(k, cfg) for k in ("diffusion", "gaussian", "gmm"))
    # the MLP follows pretrain.hidden_dims unless set for the kind
    wider = dataclasses.replace(cfg, hidden_dims=(32, 32, 32))
    assert key("gaussian", wider) != key("gaussian", cfg)
    pinned = dataclasses.replace(wider, gaussian=GaussianPolicyConfig(hidden_dims=(16, 16, 16)))
    assert key("gaussian", pinned) == key("gaussian", cfg)


def test_a_checkpoint_without_the_new_config_sections_still_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    cfg = pretrain_config(hidden_dims=(16, 16, 16), denoising_steps=4, n_updates=10, batch_size=16, time_dim=8)
    path = pretrain_policy("diffusion", "synthetic", 2, 2, synthetic_dataset(300), 1, cfg)
    blob = torch.load(path, weights_only=False)
    for section in ("gaussian", "gmm"):
        blob["config"].pop(section)
    torch.save(blob, path)
    policy, _, meta = load_pretrained(path)
    assert policy.n_steps == 4 and meta["policy_kind"] == "diffusion"


def test_cli_pretrain_policy_kind(cli, _cache_dir):
    code, out, err = cli("pretrain", "--task", "hopper", "--preset", "smoke", "--policy", "gmm",
                         "--set", "torch_threads=1")
    assert code == 0, err
    path = next((_cache_dir / "pretrained" / "hopper").glob("gmm-*.pt"))
    assert "pre-trained gmm policy" in out and path.name in out.replace("\n", "")
    policy, _, meta = load_pretrained(path)
    assert isinstance(policy, GMMPolicy) and policy.n_modes == 5
    assert policy.mean_net[0].out_features == 32  # smoke-sized: the MLP follows pretrain.hidden_dims
    stamp = path.stat().st_mtime_ns
    code, out, _ = cli("pretrain", "--task", "hopper", "--preset", "smoke", "--algo", "gmm_ppo",
                       "--set", "torch_threads=1")  # the algorithm's policy kind by default; cached
    assert code == 0 and path.stat().st_mtime_ns == stamp and "pre-trained gmm policy" in out


def test_cli_pretrain_bad_policy_kind_is_one_line_and_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    code, out, err = cli("pretrain", "--task", "hopper", "--preset", "smoke", "--policy", "flow")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "flow" in err and all(k in err for k in ("diffusion", "gaussian", "gmm"))
    code, _, err = cli("pretrain", "--task", "hopper", "--preset", "smoke", "--policy", "gaussian",
                       "--set", "pretrain.gaussian.hidden_dims=16,32,16")  # residual MLP with unequal widths
    assert code == 2 and "pretrain.gaussian" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def _eval_csv_row0(root, task, algo, seed):
    import csv

    from core.runstore import RunStore

    with open(RunStore.of(root, task, algo, seed).evals, newline="") as f:
        row = next(csv.DictReader(f))
    assert row["iteration"] == "0"
    return row


def test_cli_pretrain_eval_equals_iteration_0_of_a_run(cli, tmp_path, monkeypatch):
    """`bench pretrain --eval N` prints the number a run with eval.n_episodes=N records at iteration 0 (the
    same eval seed: eval.seed + --seed), exactly; and the throughput of the loop."""
    import re

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "cache"))  # seed 0 pre-trains, seed 1 finds it

    sets = ["--set", "torch_threads=1"]
    got = {}
    for seed in (0, 1):
        code, out, err = cli("pretrain", "--task", "point_reach", "--preset", "smoke", "--eval", 4, "--seed", seed,
                             *sets)
        assert code == 0, err
        assert re.search(r"[\d.]+ updates/s, [\d,]+ samples/s at batch 64 on cpu", out), out
        assert ("pre-training update 50/50" in err and "samples/s" in err) == (seed == 0), err  # progress
        assert ("cached:" in out) == (seed == 1)  # seed 1 fine-tunes the same pre-trained policy
        m = re.search(rf"pre-trained return: (\S+) \(std \S+, score (\S+); 4 episodes, deterministic, "
                      rf"eval seed {100_000 + seed}\)", out)
        assert m, out
        got[seed] = float(m.group(1)), float(m.group(2))
        code, _, err = cli("run", "--task", "point_reach", "--preset", "smoke", "--seed", seed, "--out", tmp_path,
                           "--quiet", "--set", "eval.n_episodes=4", *sets)
        assert code == 0, err
        row = _eval_csv_row0(tmp_path, "point_reach", "dppo", seed)
        assert row["n_episodes"] == "4"
        assert got[seed] == (float(row["return_mean"]), float(row["score_mean"]))
    assert got[0] != got[1]  # the eval seed follows --seed (so the comparison above can fail)


def test_cli_pretrain_eval_bad_input_is_one_line_before_any_work(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    for args, words in [(("--eval", 0), ("--eval", ">= 1", "0")), (("--eval", -3), ("--eval", ">= 1")),
                        (("--eval", 2, "--policy", "gmm"), ("--eval", "dppo", "diffusion", "gmm"))]:
        code, _, err = cli("pretrain", "--task", "point_reach", "--preset", "smoke", *args)
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), err
    assert not any(tmp_path.iterdir())  # no dataset made, nothing pre-trained
