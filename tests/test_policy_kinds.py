"""The policy-kind registry: a contract every registered kind meets, and docs/adding-a-policy-kind.md's
example run as written."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import algorithms.policies as policies
from bench.config import build_run_config, pretrain_config
from bench.pretrain import load_pretrained, pretrain_key, pretrain_policy
from core.errors import BenchError
from envs.datasets import TransitionDataset
from doc_examples import load_example


def synthetic_dataset(n=400, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    act = np.tanh(obs[:, :2] * 1.5).astype(np.float32)  # a smooth function of the state to imitate
    timeouts = np.zeros(n, bool)
    timeouts[19::20] = True
    return TransitionDataset(obs, act, np.zeros(n, np.float32), np.zeros(n, bool), timeouts, source="synthetic")


@pytest.mark.parametrize("kind", policies.list_policy_kinds())
def test_every_kind_builds_checks_and_keys(kind):
    k = policies.get_policy_kind(kind)
    cfg = pretrain_config(hidden_dims=(16, 16, 16))
    k.check(cfg)
    policy = k.build(3, 2, 4, cfg)
    assert (policy.horizon_steps, policy.act_dim) == (4, 2)
    loss = policy.loss(torch.zeros(5, 4, 2), torch.zeros(5, 3), generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    arch = k.architecture(cfg)
    assert isinstance(arch, dict) and arch
    # the key covers the kind's architecture: changing the shared widths changes it for kinds that use them
    key = pretrain_key("t", "c", 4, cfg, kind)
    assert key == pretrain_key("t", "c", 4, pretrain_config(hidden_dims=(16, 16, 16)), kind)
    assert pretrain_key("t", "c", 8, cfg, kind) != key  # Tp


def test_unknown_kind_names_the_valid_ones():
    with pytest.raises(BenchError, match="valid policy kinds: diffusion, diffusion_unet, gaussian, gmm"):
        policies.get_policy_kind("unet9")


@pytest.fixture
def deterministic_kind(monkeypatch):
    monkeypatch.setattr(policies.REGISTRY, "entries", dict(policies.REGISTRY.entries))
    module = load_example("adding-a-policy-kind.md", "doc_deterministic_kind")
    yield module
    sys.modules.pop("doc_deterministic_kind", None)


def test_doc_example_pretrains_and_has_its_config_section(deterministic_kind, tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path))
    assert "deterministic" in policies.list_policy_kinds()
    cfg = build_run_config("point_reach", "dppo", 0, "smoke", {"pretrain.deterministic.hidden_dims": "32,32",
                                                                "pretrain.n_updates": "300", "pretrain.lr": "3e-3"})
    assert cfg.pretrain.deterministic.hidden_dims == (32, 32)
    ds = synthetic_dataset()
    path = pretrain_policy("deterministic", "synthetic", 3, 2, ds, 1, cfg.pretrain)  # Tp 1: rows are independent
    policy, norm, meta = load_pretrained(path)
    assert isinstance(policy, deterministic_kind.DeterministicPolicy) and meta["policy_kind"] == "deterministic"
    curve = meta["loss_curve"]
    assert curve[-1]["loss"] < 0.2 * curve[0]["loss"]  # it imitates the smooth state -> action map
    wider = build_run_config("point_reach", "dppo", 0, "smoke", {"pretrain.deterministic.hidden_dims": "64,64"})
    assert pretrain_key("synthetic", ds.checksum, 1, wider.pretrain, "deterministic") != \
        pretrain_key("synthetic", ds.checksum, 1, cfg.pretrain, "deterministic")


def test_doc_example_bad_value_is_one_line_before_any_work(deterministic_kind, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DPPO_BENCH_CACHE", str(tmp_path / "cache"))
    code, out, err = cli("pretrain", "--task", "point_reach", "--policy", "deterministic", "--preset", "smoke",
                         "--set", "pretrain.deterministic.hidden_dims=")
    assert code == 2 and "needs at least one layer" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()
    code, out, err = cli("pretrain", "--task", "point_reach", "--policy", "deterministic", "--preset", "smoke",
                         "--set", "pretrain.deterministic.activation=Swish")
    assert code == 2 and "valid values: ReLU, Mish" in err
