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


# ---------------------------------------------------------------------------------------------------
# Bad data and a corrupt cache are one-line errors that say what to do


@pytest.mark.parametrize("n, horizon", [(3, 4), (40, 8)])
def test_dataset_without_one_action_chunk_is_an_error_before_training(tmp_path, monkeypatch, n, horizon):
    """Fewer transitions than one chunk (3 < 4), or every episode (5 steps) shorter than the chunk (8)."""
    from core.errors import BenchError

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    obs = np.zeros((n, 2), np.float32)
    ds = TransitionDataset(obs, obs.copy(), np.zeros(n, np.float32), np.zeros(n, bool),
                           (np.arange(n) % 5) == 4, source="tiny")
    cfg = PretrainConfig(hidden_dims=(8, 8, 8), denoising_steps=2, n_updates=5, batch_size=4, time_dim=4)
    with pytest.raises(BenchError, match=rf"dataset tiny has no action chunk of {horizon} steps") as e:
        pretrain_diffusion("synthetic", 2, 2, ds, horizon, cfg)
    assert "\n" not in str(e.value) and "env.horizon_steps" in str(e.value)
    assert not (tmp_path / "pretrained").exists() or not any((tmp_path / "pretrained").rglob("*.pt"))


def test_corrupt_cached_policy_says_how_to_rebuild_it(tmp_path, monkeypatch):
    from core.errors import BenchError

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    cfg = PretrainConfig(hidden_dims=(8, 8, 8), denoising_steps=2, n_updates=5, batch_size=8, time_dim=4)
    ds = synthetic_dataset(100)
    path = pretrain_diffusion("synthetic", 2, 2, ds, 1, cfg)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BenchError, match=r"corrupt or incompatible .*bench pretrain --task synthetic "
                                         r"--policy diffusion --force") as e:
        load_pretrained(path)
    assert "\n" not in str(e.value)
    # --force (what the message names) retrains it over the corrupt file
    assert pretrain_diffusion("synthetic", 2, 2, ds, 1, cfg, force=True) == path
    load_pretrained(path)


def test_stale_partial_checkpoints_are_removed_when_pretraining_starts(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    cfg = PretrainConfig(hidden_dims=(8, 8, 8), denoising_steps=2, n_updates=5, batch_size=8, time_dim=4)
    d = tmp_path / "pretrained" / "synthetic"
    d.mkdir(parents=True)
    stale = d / ".diffusion-0123456789abcdef.pt.abcd_123.tmp"
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (1, 1))
    young = d / ".diffusion-0123456789abcdef.pt.young_12.tmp"
    young.write_bytes(b"x")
    other = d / "notes.tmp"
    other.write_bytes(b"x")
    os.utime(other, (1, 1))
    path = pretrain_diffusion("synthetic", 2, 2, synthetic_dataset(100), 1, cfg)
    assert sorted(p.name for p in d.iterdir()) == sorted([path.name, young.name, other.name])


# ---------------------------------------------------------------------------------------------------
# The loop's per-step overhead was cut without changing a bit; its throughput is recorded


def _reference_pretrain(kind, obs_dim, act_dim, ds, horizon_steps, cfg):
    """The EMA weights of the pre-training loop as it was before its EMA became foreach calls (kept
    verbatim: `ema.load_state_dict(policy.state_dict())` and a per-parameter lerp_)."""
    import copy
    import math

    from bench.pretrain import build_policy, chunk_tensors
    from envs.vector import Normalizer

    norm = Normalizer.from_data(ds.observations, ds.actions)
    obs, acts = chunk_tensors(ds, norm, horizon_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = build_policy(kind, obs_dim, act_dim, horizon_steps, cfg)
    ema = copy.deepcopy(policy).requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step):
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * step / max(cfg.n_updates, 1)))

    n = len(obs)
    for step in range(cfg.n_updates):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        loss = policy.loss(acts[idx], obs[idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.ema_every == 0:
            with torch.no_grad():
                if step < cfg.ema_start:
                    ema.load_state_dict(policy.state_dict())
                else:
                    for pe, p in zip(ema.parameters(), policy.parameters()):
                        pe.lerp_(p, 1 - cfg.ema_decay)
    return ema.state_dict()


@pytest.mark.parametrize("kind", ["diffusion", "gaussian", "gmm"])
def test_pretraining_weights_are_bit_identical_to_the_reference_loop(kind, tmp_path, monkeypatch):
    """Both EMA phases (copies before ema_start, lerp after), an n_updates not a multiple of ema_every."""
    from bench.config import pretrain_config
    from bench.pretrain import pretrain_policy

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    cfg = pretrain_config(hidden_dims=(16, 16, 16), denoising_steps=4, n_updates=233, batch_size=32, time_dim=8,
                          ema_start=60, ema_every=3, ema_decay=0.9, activation="Mish", seed=3)
    ds = synthetic_dataset(300)
    calls = []
    path = pretrain_policy(kind, "synthetic", 2, 2, ds, 2, cfg, progress=lambda *a: calls.append(a))
    got = torch.load(path, weights_only=False)
    want = _reference_pretrain(kind, 2, 2, ds, 2, cfg)
    assert list(got["state_dict"]) == list(want)
    assert all(torch.equal(got["state_dict"][k], want[k]) for k in want), kind
    assert [c[:2] for c in calls] == [(100, 233), (200, 233), (233, 233)]  # progress: (update, total, mean loss)
    # throughput in the metadata: updates/s and samples/s of the timed loop
    assert got["wall_s"] > 0 and got["device"] == "cpu" and got["torch_threads"] >= 1
    assert got["updates_per_s"] == pytest.approx(233 / got["wall_s"])
    assert got["samples_per_s"] == pytest.approx(233 * 32 / got["wall_s"])


def test_snapshots_see_the_ema_at_their_update_and_leave_training_unchanged(tmp_path, monkeypatch):
    """`bench pretrain --eval-at`'s hook: called after exactly those updates with the EMA weights, and the final
    weights bit-identical to a training without snapshots."""
    from bench.config import pretrain_config
    from bench.pretrain import pretrain_policy

    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "a"))
    cfg = pretrain_config(hidden_dims=(16, 16, 16), denoising_steps=4, n_updates=120, batch_size=32, time_dim=8,
                          ema_start=30, ema_every=1, ema_decay=0.9, activation="Mish", seed=1)
    ds = synthetic_dataset(300)
    seen = {}

    def on_snapshot(update, ema, norm):
        seen[update] = {k: v.clone() for k, v in ema.state_dict().items()}

    with_snaps = torch.load(pretrain_policy("diffusion", "synthetic", 2, 2, ds, 2, cfg, on_snapshot=on_snapshot,
                                            snapshot_at=[40, 80]), weights_only=False)["state_dict"]
    assert sorted(seen) == [40, 80]
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "b"))
    plain = torch.load(pretrain_policy("diffusion", "synthetic", 2, 2, ds, 2, cfg), weights_only=False)["state_dict"]
    assert all(torch.equal(with_snaps[k], plain[k]) for k in plain)
    # the snapshots are the EMA part-way: they differ from each other and from the end (training went on)
    assert any(not torch.equal(seen[40][k], seen[80][k]) for k in plain)
    assert any(not torch.equal(seen[80][k], plain[k]) for k in plain)


def test_eval_at_options_are_checked_before_any_work(cli, tmp_path):
    code, out, err = cli("pretrain", "--task", "point_reach", "--preset", "smoke", "--eval-at", "10")
    assert code == 2 and "--eval-at needs --eval N" in err
    code, out, err = cli("pretrain", "--task", "point_reach", "--preset", "smoke", "--eval", "2", "--eval-at", "10,x")
    assert code == 2 and "comma-separated update counts" in err
    code, out, err = cli("pretrain", "--task", "point_reach", "--preset", "smoke", "--eval", "2", "--eval-at", "50")
    assert code == 2 and "between 1 and pretrain.n_updates - 1 = 49" in err
