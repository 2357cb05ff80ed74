"""Behaviour-cloning pre-training of the diffusion policy, cached by content.

The cache key hashes (task, dataset checksum, chunk length Tp, pre-training config): any change to the
data or to an architecture/optimisation setting gives a new checkpoint; `bench run` reuses a match.
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
from algorithms.networks import DenoisingMLP
from bench.config import PretrainConfig
from bench.errors import BenchError
from bench.store import atomic_torch_save
from envs.datasets import TransitionDataset, cache_root
from envs.vector import Normalizer

FORMAT_VERSION = 1


def build_diffusion_policy(obs_dim: int, act_dim: int, horizon_steps: int, cfg: PretrainConfig) -> DiffusionPolicy:
    net = DenoisingMLP(obs_dim, horizon_steps, act_dim, tuple(cfg.hidden_dims), cfg.time_dim, cfg.activation,
                       cfg.residual)
    return DiffusionPolicy(net, cfg.denoising_steps, cfg.denoised_clip)


def pretrain_key(task: str, data_checksum: str, horizon_steps: int, cfg: PretrainConfig) -> str:
    blob = json.dumps({"v": FORMAT_VERSION, "task": task, "data": data_checksum, "Tp": horizon_steps,
                       "cfg": dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrained_path(task: str, key: str) -> Path:
    return cache_root() / "pretrained" / task / f"diffusion-{key}.pt"


def chunk_tensors(ds: TransitionDataset, norm: Normalizer, horizon_steps: int):
    """Normalised (obs at chunk start, action chunk) training pairs, gathered once, vectorised."""
    starts = ds.chunk_starts(horizon_steps)
    obs = torch.from_numpy(norm.normalize_obs(ds.observations[starts]))
    acts = norm.normalize_act(ds.actions)[starts[:, None] + np.arange(horizon_steps)[None]]
    return obs, torch.from_numpy(acts)


def pretrain_diffusion(task: str, obs_dim: int, act_dim: int, ds: TransitionDataset, horizon_steps: int,
                       cfg: PretrainConfig, device: str = "cpu", progress=None, force: bool = False) -> Path:
    """Train (or reuse) the diffusion policy; returns the checkpoint path."""
    key = pretrain_key(task, ds.checksum, horizon_steps, cfg)
    path = pretrained_path(task, key)
    if path.exists() and not force:
        return path
    norm = Normalizer.from_data(ds.observations, ds.actions)
    obs, acts = chunk_tensors(ds, norm, horizon_steps)
    obs, acts = obs.to(device), acts.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = build_diffusion_policy(obs_dim, act_dim, horizon_steps, cfg).to(device)
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
        "format": FORMAT_VERSION, "task": task, "key": key, "policy_kind": "diffusion",
        "config": dataclasses.asdict(cfg), "horizon_steps": horizon_steps, "obs_dim": obs_dim,
        "act_dim": act_dim, "data_checksum": ds.checksum, "data_source": ds.source,
        "normalizer": norm.state_dict(), "state_dict": ema.state_dict(), "loss_curve": curve,
        "wall_s": time.time() - t0, "torch": torch.__version__,
    })
    return path


def load_pretrained(path: Path, device: str = "cpu") -> tuple[DiffusionPolicy, Normalizer, dict]:
    try:
        blob = torch.load(path, map_location=device, weights_only=False)
        cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items()})
        policy = build_diffusion_policy(blob["obs_dim"], blob["act_dim"], blob["horizon_steps"], cfg)
        policy.load_state_dict(blob["state_dict"])
    except BenchError:
        raise
    except Exception as e:
        raise BenchError(f"cannot load pre-trained checkpoint {path}: corrupt or incompatible ({e})") from None
    return policy.to(device), Normalizer.from_state_dict(blob["normalizer"]), blob
