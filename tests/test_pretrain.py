"""Diffusion pre-training learns the data, is cached by content, and episode statistics span iterations."""

import numpy as np
import pytest
import torch

from bench.config import PretrainConfig
from bench.pretrain import load_pretrained, pretrain_diffusion
from envs.datasets import TransitionDataset


def synthetic_dataset(n=2000, seed=0):
    """Actions are a deterministic function of the observation: a_t = (0.8 s0, -0.5 s1)."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    act = np.stack([0.8 * obs[:, 0], -0.5 * obs[:, 1]], 1).astype(np.float32)
    timeouts = (np.arange(n) % 50) == 49
    return TransitionDataset(obs, act, np.zeros(n, np.float32), np.zeros(n, bool), timeouts, source="synthetic")


CFG = PretrainConfig(hidden_dims=(64, 64, 64), denoising_steps=10, n_updates=1500, batch_size=128, lr=3e-3,
                     lr_min=3e-4, ema_start=200, time_dim=8)


def test_pretraining_imitates_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    ds = synthetic_dataset()
    path = pretrain_diffusion("synthetic", 2, 2, ds, 1, CFG)
    policy, norm, meta = load_pretrained(path)
    assert meta["loss_curve"][-1]["loss"] < meta["loss_curve"][0]["loss"]
    obs = np.array([[0.5, 0.5], [-0.9, 0.2], [0.0, -0.7]], np.float32)
    torch.manual_seed(0)
    x = policy.sample(torch.as_tensor(norm.normalize_obs(obs)).repeat_interleave(16, 0), deterministic=True)
    act = norm.unnormalize_act(x[:, 0].numpy()).reshape(3, 16, 2).mean(1)
    expected = np.stack([0.8 * obs[:, 0], -0.5 * obs[:, 1]], 1)
    np.testing.assert_allclose(act, expected, atol=0.1)


def test_pretraining_is_cached_by_task_data_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    cfg = PretrainConfig(hidden_dims=(16, 16, 16), denoising_steps=4, n_updates=20, batch_size=32, time_dim=8)
    ds = synthetic_dataset(300)
    p1 = pretrain_diffusion("synthetic", 2, 2, ds, 1, cfg)
    stamp = p1.stat().st_mtime_ns
    assert pretrain_diffusion("synthetic", 2, 2, ds, 1, cfg) == p1 and p1.stat().st_mtime_ns == stamp
    other_cfg = PretrainConfig(**{**cfg.__dict__, "lr": 5e-4})
    assert pretrain_diffusion("synthetic", 2, 2, ds, 1, other_cfg) != p1
    assert pretrain_diffusion("synthetic", 2, 2, synthetic_dataset(300, seed=1), 1, cfg) != p1
    assert pretrain_diffusion("synthetic", 2, 2, ds, 2, cfg) != p1  # chunk length
    assert pretrain_diffusion("other_task", 2, 2, ds, 1, cfg) != p1
    # same inputs, same weights: pre-training is seeded
    a = torch.load(p1, weights_only=False)["state_dict"]
    p1.unlink()
    b = torch.load(pretrain_diffusion("synthetic", 2, 2, ds, 1, cfg), weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_episodes_are_counted_across_iterations():
    """An episode that starts in one iteration and ends in the next is counted with its full return
    (the original counted only episodes inside one iteration)."""
    from bench.runner import EpisodeTracker
    from envs.vector import ChunkStep

    def step(r, done):
        n = len(r)
        return ChunkStep(np.zeros((n, 1)), np.asarray(r, float), np.asarray(done), np.zeros(n, bool),
                         np.zeros((n, 1)), np.full(n, 4), np.zeros(n, bool))

    tr = EpisodeTracker(2)
    tr.add(step([1.0, 2.0], [False, True]))
    first = tr.pop()
    assert first["train_episodes"] == 1 and first["train_return"] == pytest.approx(2.0)
    tr.add(step([3.0, 5.0], [False, False]))
    assert tr.pop()["train_episodes"] == 0
    tr.add(step([4.0, 1.0], [True, True]))
    third = tr.pop()
    assert third["train_episodes"] == 2
    assert third["train_return"] == pytest.approx(np.mean([1 + 3 + 4, 5 + 1]))
