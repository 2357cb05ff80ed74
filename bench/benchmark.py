"""`bench bench`: speed figures measured in one process on one machine.

(a) rollout efficiency: env steps/s of a DPPO rollout (K = 20, K' = 10, paper-size 512x3 network) on N
    Hopper envs, divided by env steps/s of the same vector env stepped with random actions. 1.0 would
    mean the policy costs nothing; the rest is the denoising chain.
(b) DPPO update throughput in (sample, denoising step) pairs per second (one epoch, paper batch size
    capped at the number of pairs).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from algorithms.base import AlgoContext
from algorithms.dppo import DPPO, DPPOConfig
from bench.config import PretrainConfig
from bench.pretrain import build_diffusion_policy
from bench.runner import EpisodeTracker, collect_rollout
from envs.tasks import get_task
from envs.vector import Normalizer, TaskVectorEnv


def run_benchmark(n_envs: int = 40, n_chunks: int = 50, threads: int = 0, task_name: str = "hopper",
                  device: str = "cpu") -> list[str]:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    task = get_task(task_name)
    dev = torch.device(device)
    norm = Normalizer(np.full(task.obs_dim, -10, np.float32), np.full(task.obs_dim, 10, np.float32),
                      np.full(task.act_dim, -1, np.float32), np.full(task.act_dim, 1, np.float32))
    env = TaskVectorEnv(task, n_envs, task.act_steps, norm)
    rng = np.random.default_rng(0)

    obs = env.reset(seed=0)
    t0, steps = time.perf_counter(), 0
    for _ in range(n_chunks):
        step = env.step(rng.uniform(-1, 1, (n_envs, task.horizon_steps, task.act_dim)).astype(np.float32))
        steps += int(step.env_steps.sum())
    random_sps = steps / (time.perf_counter() - t0)

    pre = build_diffusion_policy(task.obs_dim, task.act_dim, task.horizon_steps, PretrainConfig())
    ctx = AlgoContext(task.obs_dim, task.act_dim, task.horizon_steps, task.act_steps, n_envs, n_chunks, 10,
                      task.suite, dev)
    algo = DPPO(DPPOConfig(ft_denoising_steps=10, update_epochs=1), ctx, pre.to(dev))
    obs = env.reset(seed=0)
    collect_rollout(algo, env, obs, 2, EpisodeTracker(n_envs), dev)  # warm-up
    t0 = time.perf_counter()
    ro, _, steps = collect_rollout(algo, env, env.reset(seed=1), n_chunks, EpisodeTracker(n_envs), dev)
    dppo_sps = steps / (time.perf_counter() - t0)
    env.close()

    n_pairs = n_envs * n_chunks * algo.n_ft
    algo.cfg.batch_size = min(50_000, n_pairs)
    t0 = time.perf_counter()
    algo.update(ro, 10)
    pairs_per_s = (n_pairs // algo.cfg.batch_size) * algo.cfg.batch_size / (time.perf_counter() - t0)
    return [
        f"machine: {torch.get_num_threads()} torch threads, device {dev}; task {task_name}, {n_envs} envs, "
        f"{n_chunks} chunks (Ta = {task.act_steps}), K = 20, K' = 10, network 512x3",
        f"random-action vector env: {random_sps:,.0f} env steps/s",
        f"DPPO rollout:             {dppo_sps:,.0f} env steps/s",
        f"(a) rollout efficiency:   {dppo_sps / random_sps:.3f}",
        f"(b) DPPO update:          {pairs_per_s:,.0f} (sample, denoising-step) pairs/s "
        f"(batch {algo.cfg.batch_size}, {n_pairs} pairs)",
    ]
