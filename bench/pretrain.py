"""Behaviour-cloning pre-training of the policies algorithms start from, cached by content.

Policy kinds (an algorithm names its own in `policy_kind`) come from the registry in
`algorithms/policies.py`; each builds its policy and BC loss. Every kind trains on the same chunked data
with the same optimiser settings and budget. The cache key hashes (policy kind, task, dataset checksum,
chunk length Tp, the kind's resolved architecture and the optimisation config): any change to the data
or to a setting the policy depends on gives a new checkpoint `<kind>-<key>.pt`; `bench run` reuses a
match. The saved weights are the EMA weights (used for evaluation and as the fine-tuning start). The
checkpoint also records the loop's throughput: `wall_s`, `updates_per_s`, `samples_per_s` (updates x
batch size), `device` and `torch_threads`.

A dataset without one action chunk of Tp steps inside an episode is a one-line error before anything is
trained. Temporary files of killed pre-trainings in the task's cache directory are removed when it is next
used (`core.atomic.remove_stale_temp_files`). A corrupt cached checkpoint is an error that names
`bench pretrain ... --force`, which retrains it.
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

from algorithms.policies import DIFFUSION_FIELDS, get_policy_kind
from bench.config import PretrainConfig, apply_overrides, flatten, pretrain_config
from core.atomic import atomic_torch_save, remove_stale_temp_files
from core.errors import BenchError
from core.paths import cache_root
from envs.datasets import TransitionDataset
from envs.vector import Normalizer

FORMAT_VERSION = 2  # 2: one key layout for every kind (diffusion keys of version 1 are not reused)


def check_architecture(kind: str, cfg: PretrainConfig) -> None:
    """BenchError for an unknown kind or bad values in its architecture."""
    get_policy_kind(kind).check(cfg)


def build_policy(kind: str, obs_dim: int, act_dim: int, horizon_steps: int, cfg: PretrainConfig):
    """The (untrained) policy of `kind` with the architecture in `cfg`."""
    policy_kind = get_policy_kind(kind)
    policy_kind.check(cfg)
    return policy_kind.build(obs_dim, act_dim, horizon_steps, cfg)


def build_diffusion_policy(obs_dim: int, act_dim: int, horizon_steps: int, cfg: PretrainConfig):
    return build_policy("diffusion", obs_dim, act_dim, horizon_steps, cfg)


def training_config(cfg: PretrainConfig) -> dict:
    """The optimisation fields of `cfg`: everything but the architecture fields and kind sections."""
    base = {f.name for f in dataclasses.fields(PretrainConfig)} - set(DIFFUSION_FIELDS)
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k in base}


def pretrain_key(task: str, data_checksum: str, horizon_steps: int, cfg: PretrainConfig,
                 kind: str = "diffusion") -> str:
    """Hash of what the pre-trained `kind` policy depends on."""
    content = {"v": FORMAT_VERSION, "kind": kind, "task": task, "data": data_checksum, "Tp": horizon_steps,
               "train": training_config(cfg), "arch": get_policy_kind(kind).architecture(cfg)}
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
                    cfg: PretrainConfig, device: str = "cpu", progress=None, force: bool = False,
                    on_snapshot=None, snapshot_at=()) -> Path:
    """Train (or reuse) the `kind` policy on the dataset's chunks; returns the checkpoint path.

    `progress(update, n_updates, mean_loss)` is called every 100 updates (and after the last), after the
    loss read-back that waits for the queued updates (so a callback's clock times the device's work).
    `on_snapshot(update, ema_policy, normalizer)` is called after each update count in `snapshot_at` (to
    evaluate earlier checkpoints, e.g. `bench pretrain --eval-at`); it must not change the policy."""
    check_architecture(kind, cfg)
    ds.check_chunks(horizon_steps)  # a one-line error before anything is trained or reused
    key = pretrain_key(task, ds.checksum, horizon_steps, cfg, kind)
    path = pretrained_path(task, key, kind)
    remove_stale_temp_files(path.parent)  # partial checkpoints of killed pre-trainings
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

    # The EMA's tensors paired with the live ones once: its copy (before ema_start) and lerp are one foreach
    # call each, not load_state_dict's per-module Python work or a loop over parameters (same values, bit for
    # bit). Nothing in the loop reads a device value back except the loss, once every 100 updates.
    ema_sd, live_sd = ema.state_dict(), policy.state_dict()
    ema_all, live_all = list(ema_sd.values()), [live_sd[k] for k in ema_sd]
    ema_params, live_params = list(ema.parameters()), list(policy.parameters())
    curve, window, n, batch = [], [], len(obs), cfg.batch_size
    snapshot_at = set(snapshot_at) if on_snapshot is not None else set()
    t0 = time.perf_counter()
    for step in range(cfg.n_updates):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(0, n, (batch,), generator=gen, device=device)
        loss = policy.loss(acts[idx], obs[idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.detach())  # read back every 100 updates: no device sync per step
        if step % cfg.ema_every == 0:
            with torch.no_grad():
                if step < cfg.ema_start:
                    torch._foreach_copy_(ema_all, live_all)
                else:
                    torch._foreach_lerp_(ema_params, live_params, 1 - cfg.ema_decay)
        if step + 1 in snapshot_at:
            t_snap = time.perf_counter()
            on_snapshot(step + 1, ema, norm)
            t0 += time.perf_counter() - t_snap  # the throughput figures time training alone
        if (step + 1) % 100 == 0 or step + 1 == cfg.n_updates:
            mean_loss = torch.stack(window).mean().item()  # waits for the queued updates: the timing is true
            window = []
            if not math.isfinite(mean_loss):
                raise BenchError(f"pre-training loss became {mean_loss} before update {step + 1}; lower pretrain.lr")
            curve.append({"update": step + 1, "loss": mean_loss})
            if progress:
                progress(step + 1, cfg.n_updates, mean_loss)
    wall = time.perf_counter() - t0
    atomic_torch_save(path, {
        "format": FORMAT_VERSION, "task": task, "key": key, "policy_kind": kind,
        "config": dataclasses.asdict(cfg), "horizon_steps": horizon_steps, "obs_dim": obs_dim,
        "act_dim": act_dim, "data_checksum": ds.checksum, "data_source": ds.source,
        "normalizer": norm.state_dict(), "state_dict": ema.state_dict(), "loss_curve": curve,
        "wall_s": wall, "updates_per_s": cfg.n_updates / max(wall, 1e-9),
        "samples_per_s": cfg.n_updates * batch / max(wall, 1e-9), "device": str(device),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    })
    return path


def pretrain_diffusion(task: str, obs_dim: int, act_dim: int, ds: TransitionDataset, horizon_steps: int,
                       cfg: PretrainConfig, device: str = "cpu", progress=None, force: bool = False) -> Path:
    return pretrain_policy("diffusion", task, obs_dim, act_dim, ds, horizon_steps, cfg, device, progress, force)


def pretrain_config_from_dict(d: dict) -> PretrainConfig:
    cfg = pretrain_config()
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
        norm = Normalizer.from_state_dict(blob["normalizer"])
    except BenchError:
        raise
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BenchError(f"cannot load pre-trained checkpoint {path}: corrupt or incompatible ({reason}); "
                         f"{rebuild_hint(path)}") from None
    return policy.to(device), norm, blob


def rebuild_hint(path: Path) -> str:
    """How to rebuild the cached checkpoint `path` (`<cache>/pretrained/<task>/<kind>-<key>.pt`)."""
    path = Path(path)
    kind, sep, key = path.stem.rpartition("-")
    if path.parent.parent.name == "pretrained" and sep and len(key) == 16:
        return (f"rebuild it with `bench pretrain --task {path.parent.name} --policy {kind} --force` and the "
                f"run's --preset/--set options, or delete it (`bench run` then trains it again)")
    return "rebuild it with `bench pretrain ... --force` (the run's task, policy, preset and options)"
