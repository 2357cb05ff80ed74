"""Learning-rate schedules of the fine-tuning algorithms."""

from __future__ import annotations

import math

import torch


def warmup_cosine_lr(iteration: int, lr: float, lr_min: float, warmup: int, cycle: int) -> float:
    """Linear warm-up from lr_min to lr over `warmup` iterations, then cosine to lr_min at `cycle`
    (the original's CosineAnnealingWarmupRestarts with one cycle)."""
    if iteration < warmup:
        return lr_min + (lr - lr_min) * iteration / max(warmup, 1)
    progress = min(1.0, (iteration - warmup) / max(cycle - warmup, 1))
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))


def set_warmup_cosine_lrs(iteration: int, n_iterations: int, warmup: int,
                          schedules: list[tuple[torch.optim.Optimizer, float, float]]) -> None:
    """Set each (optimiser, lr, lr_min) to `warmup_cosine_lr` at this iteration (one cycle = the run)."""
    for opt, lr, lr_min in schedules:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(iteration, lr, lr_min, warmup, n_iterations)
