"""Behaviour-cloning pre-training of the policies algorithms start from, cached by content.

Three policy kinds (an algorithm names its own in `policy_kind`): the diffusion policy (denoising loss),
and the Gaussian and GMM chunk policies (maximum likelihood), all trained on the same chunked data with
the same optimiser settings and budget. The cache key hashes (policy kind, task, dataset checksum, chunk
length Tp, the kind's architecture and the optimisation config): any change to the data or to a setting
the policy depends on gives a new checkpoint `<kind>-<key>.pt`; `bench run` reuses a match. The
diffusion key is unchanged from before the other kinds existed, so cached diffusion policies stay valid.
The saved weights are the EMA weights (used for evaluation and as the fine-tuning start).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from algorithms.diffusion import DiffusionPolicy
from algorithms.gaussian import GaussianPolicy, GMMPolicy
from algorithms.networks import DenoisingMLP, check_residual_mlp
from bench.config import PretrainConfig, apply_overrides, flatten
from bench.errors import BenchError
from bench.store import atomic_torch_save
from envs.datasets import TransitionDataset, cache_root
from envs.vector import Normalizer

FORMAT_VERSION = 1


POLICY_KINDS = ("diffusion", "gaussian", "gmm")
# PretrainConfig fields that only the diffusion policy depends on, and the per-kind architecture sections
DIFFUSION_FIELDS = ("denoising_steps", "hidden_dims", "time_dim", "activation", "residual", "denoised_clip")
ARCH_SECTIONS = ("gaussian", "gmm")


def check_policy_kind(kind: str) -> str:
    if kind not in POLICY_KINDS:
        raise BenchError(f"unknown policy kind {kind!r}; valid policy kinds: {', '.join(POLICY_KINDS)}")
    return kind


def build_diffusion_policy(obs_dim: int, act_dim: int, horizon_steps: int, cfg: PretrainConfig) -> DiffusionPolicy:
    net = DenoisingMLP(obs_dim, horizon_steps, act_dim, tuple(cfg.hidden_dims), cfg.time_dim, cfg.activation,
                       cfg.residual)
    return DiffusionPolicy(net, cfg.denoising_steps, cfg.denoised_clip)


def architecture(kind: str, cfg: PretrainConfig) -> dict:
    """The `kind` policy's architecture section with its defaults (None) resolved to the diffusion MLP's."""
    arch = dataclasses.asdict(getattr(cfg, kind))
    for name in ("hidden_dims", "activation", "residual"):
        if arch[name] is None:
            arch[name] = getattr(cfg, name)
    arch["hidden_dims"] = tuple(arch["hidden_dims"])
    return arch


def check_architecture(kind: str, cfg: PretrainConfig) -> None:
    """BenchError for an unknown kind or bad values in its architecture section."""
    check_policy_kind(kind)
    if kind == "diffusion":
        check_residual_mlp(tuple(cfg.hidden_dims), cfg.residual, "pretrain.residual", "pretrain.hidden_dims")
        return
    arch = architecture(kind, cfg)
    check_residual_mlp(arch["hidden_dims"], arch["residual"], f"pretrain.{kind}.residual",
                       f"pretrain.{kind}.hidden_dims")
    if arch["fixed_std"] <= 0:
        raise BenchError(f"pretrain.{kind}.fixed_std must be positive, got {arch['fixed_std']}")
    if kind == "gmm" and arch["n_modes"] < 1:
        raise BenchError(f"pretrain.gmm.n_modes must be at least 1, got {arch['n_modes']}")
    if kind == "gaussian" and not 0 < arch["state_std_min"] <= arch["state_std_max"]:
        raise BenchError(f"need 0 < pretrain.gaussian.state_std_min <= state_std_max, got "
                         f"{arch['state_std_min']}, {arch['state_std_max']}")


def build_policy(kind: str, obs_dim: int, act_dim: int, horizon_steps: int, cfg: PretrainConfig):
    """The (untrained) policy of `kind` with the architecture in `cfg`."""
    check_architecture(kind, cfg)
    if kind == "diffusion":
        return build_diffusion_policy(obs_dim, act_dim, horizon_steps, cfg)
    a = architecture(kind, cfg)
    mlp_args = (obs_dim, horizon_steps, act_dim, a["hidden_dims"], a["activation"], a["residual"])
    if kind == "gmm":
        return GMMPolicy(*mlp_args, a["n_modes"], a["fixed_std"])
    return GaussianPolicy(*mlp_args, a["std"], a["fixed_std"], a["state_std_min"], a["state_std_max"])


def pretrain_key(task: str, data_checksum: str, horizon_steps: int, cfg: PretrainConfig,
                 kind: str = "diffusion") -> str:
    """Hash of what the pre-trained `kind` policy depends on (the diffusion blob is the historical one)."""
    full = dataclasses.asdict(cfg)
    common = {k: v for k, v in full.items() if k not in ARCH_SECTIONS}
    if kind == "diffusion":
        content = {"v": FORMAT_VERSION, "task": task, "data": data_checksum, "Tp": horizon_steps, "cfg": common}
    else:
        train = {k: v for k, v in common.items() if k not in DIFFUSION_FIELDS}
        content = {"v": FORMAT_VERSION, "kind": kind, "task": task, "data": data_checksum, "Tp": horizon_steps,
                   "train": train, "arch": architecture(kind, cfg)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_path(task: str, key: str, kind: str = "diffusion") -> Path:
    return cache_root() / "pretrained" / task / f"{kind}-{key}.pt"


def chunk_tensors(ds: TransitionDataset, norm: Normalizer, horizon_steps: int):
    """Normalised (obs at chunk start, action chunk) training pairs, gathered once, vectorised."""
    starts = ds.chunk_starts(horizon_steps)
    obs = torch.from_numpy(norm.normalize_obs(ds.observations[starts]))
    acts = norm.normalize_act(ds.actions)[starts[:, None] + np.arange(horizon_steps)[None]]
    return obs, torch.from_numpy(acts)


def pretrain_policy(kind: str, task: str, obs_dim: int, act_dim: int, ds: TransitionDataset, horizon_steps: int,
                    cfg: PretrainConfig, device: str = "cpu", progress=None, force: bool = False) -> Path:
    """Train (or reuse) the `kind` policy on the dataset's chunks; returns the checkpoint path."""
    check_architecture(kind, cfg)
    key = pretrain_key(task, ds.checksum, horizon_steps, cfg, kind)
    path = pretrained_path(task, key, kind)
    if path.exists() and not force:
        return path
    norm = Normalizer.from_data(ds.observations, ds.actions)
    obs, acts = chunk_tensors(ds, norm, horizon_steps)
    obs, acts = obs.to(device), acts.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = build_policy(kind, obs_dim, act_dim, horizon_steps, cfg).to(device)
    ema = copy.deepcopy(policy).requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step):  # cosine from lr to lr_min
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * step / max(cfg.n_updates, 1)))

    curve, window, t0, n = [], [], time.time(), len(obs)
    for step in range(cfg.n_updates):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen, device=device)
        loss = policy.loss(acts[idx], obs[idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.detach())  # read back every 100 updates: no device sync per step
        if step % cfg.ema_every == 0:
            with torch.no_grad():
                if step < cfg.ema_start:
                    ema.load_state_dict(policy.state_dict())
                else:
                    for pe, p in zip(ema.parameters(), policy.parameters()):
                        pe.lerp_(p, 1 - cfg.ema_decay)
        if (step + 1) % 100 == 0 or step + 1 == cfg.n_updates:
            mean_loss = torch.stack(window).mean().item()
            window = []
            if not math.isfinite(mean_loss):
                raise BenchError(f"pre-training loss became {mean_loss} before update {step + 1}; lower pretrain.lr")
            curve.append({"update": step + 1, "loss": mean_loss})
            if progress:
                progress(step + 1, cfg.n_updates, mean_loss)
    atomic_torch_save(path, {
        "format": FORMAT_VERSION, "task": task, "key": key, "policy_kind": kind,
        "config": dataclasses.asdict(cfg), "horizon_steps": horizon_steps, "obs_dim": obs_dim,
        "act_dim": act_dim, "data_checksum": ds.checksum, "data_source": ds.source,
        "normalizer": norm.state_dict(), "state_dict": ema.state_dict(), "loss_curve": curve,
        "wall_s": time.time() - t0, "torch": torch.__version__,
    })
    return path


def pretrain_diffusion(task: str, obs_dim: int, act_dim: int, ds: TransitionDataset, horizon_steps: int,
                       cfg: PretrainConfig, device: str = "cpu", progress=None, force: bool = False) -> Path:
    return pretrain_policy("diffusion", task, obs_dim, act_dim, ds, horizon_steps, cfg, device, progress, force)


def pretrain_config_from_dict(d: dict) -> PretrainConfig:
    cfg = PretrainConfig()
    apply_overrides(cfg, flatten(d), "pre-trained checkpoint")
    return cfg


def load_pretrained(path: Path, device: str = "cpu") -> tuple[torch.nn.Module, Normalizer, dict]:
    """(policy of the checkpoint's kind with its EMA weights, normalizer, the checkpoint's metadata)."""
    try:
        blob = torch.load(path, map_location=device, weights_only=False)
        cfg = pretrain_config_from_dict(blob["config"])
        policy = build_policy(blob.get("policy_kind", "diffusion"), blob["obs_dim"], blob["act_dim"],
                              blob["horizon_steps"], cfg)
        policy.load_state_dict(blob["state_dict"])
    except BenchError:
        raise
    except Exception as e:
        raise BenchError(f"cannot load pre-trained checkpoint {path}: corrupt or incompatible ({e})") from None
    return policy.to(device), Normalizer.from_state_dict(blob["normalizer"]), blob
