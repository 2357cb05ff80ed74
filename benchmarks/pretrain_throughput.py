"""Throughput of the behaviour-cloning loop (`bench.pretrain.pretrain_policy`) on this machine.

    python benchmarks/pretrain_throughput.py [--batch 128,512,2048] [--hidden 256] [--seconds 25]
                                             [--kind diffusion] [--device cpu] [--threads 0]

Runs the real loop (data on the device as tensors, AdamW with cosine LR, EMA every 5 updates, the loss read
back every 100 updates) on synthetic data with the robomimic Lift shapes (obs 19, act 7, Tp 4) and the
robomimic diffusion architecture (MLP HIDDENx3, Mish, residual, K=20 denoising steps; time_dim 16, 32 for
the 1024-wide Square/Transport network). Per batch size: a short calibration run, then one run of about
SECONDS; prints updates/s and samples/s as recorded in the checkpoint's metadata (the timed loop only, not
data preparation). Checkpoints go to a temporary cache directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", default="128,512,2048", help="comma-separated batch sizes")
    parser.add_argument("--hidden", type=int, default=256, help="MLP width (3 layers); 1024: Square/Transport")
    parser.add_argument("--seconds", type=float, default=25.0, help="about this long per batch size")
    parser.add_argument("--kind", default="diffusion")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="pretrain-throughput-")
    os.environ["DPPO_BENCH_CACHE"] = cache
    import numpy as np
    import torch

    from bench.config import pretrain_config
    from bench.pretrain import pretrain_policy
    from envs.datasets import TransitionDataset

    if args.threads:
        torch.set_num_threads(args.threads)
    obs_dim, act_dim, tp, n = 19, 7, 4, 20_000
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    act = np.tanh(obs[:, :act_dim] + 0.1 * rng.normal(size=(n, act_dim))).astype(np.float32)
    ds = TransitionDataset(obs, act, np.zeros(n, np.float32), np.zeros(n, bool), (np.arange(n) % 100) == 99,
                           source="synthetic-lift-shapes")

    def run(batch: int, n_updates: int) -> dict:
        cfg = pretrain_config(hidden_dims=(args.hidden,) * 3, time_dim=32 if args.hidden >= 1024 else 16,
                              denoising_steps=20, activation="Mish", lr=1e-4, lr_min=1e-5, batch_size=batch,
                              n_updates=n_updates, ema_start=min(1000, n_updates // 2))
        path = pretrain_policy(args.kind, "throughput", obs_dim, act_dim, ds, tp, cfg, args.device, force=True)
        meta = torch.load(path, map_location="cpu", weights_only=False)
        return {k: meta[k] for k in ("wall_s", "updates_per_s", "samples_per_s", "device", "torch_threads")}

    rows = []
    try:
        for batch in (int(b) for b in args.batch.split(",")):
            calib = run(batch, 20)
            n_updates = max(20, int(calib["updates_per_s"] * args.seconds))
            row = {"batch": batch, "hidden": args.hidden, "n_updates": n_updates, **run(batch, n_updates)}
            rows.append(row)
            print(f"{args.kind} {args.hidden}x3 batch {batch:5d}: {row['updates_per_s']:8.1f} updates/s "
                  f"{row['samples_per_s']:10,.0f} samples/s ({n_updates} updates in {row['wall_s']:.1f} s, "
                  f"{row['device']}, {row['torch_threads']} threads)", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
