"""Speed of the MuJoCo Furniture-Bench re-implementation (one_leg_low) on this machine.

    python benchmarks/furniture_env_speed.py [--episodes 3] [--envs 10]

Measures, in one process: build time of one env, reset time, steps/s of one env driven by the scripted
expert (contacts, grasps, the thread), steps/s of one env holding still, and steps/s of the task's vector
env (sync and async, 10 envs) stepped with chunks of hold actions.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--envs", type=int, default=10)
    args = parser.parse_args()

    from envs.furniture_expert import STYLES, OneLegExpert
    from envs.furniture_sim import FurnitureSimEnv, rot6d_from_mat

    t0 = time.perf_counter()
    env = FurnitureSimEnv(randomness="low")
    print(f"build one env: {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    for seed in range(10):
        env.reset(seed=seed)
    print(f"reset: {(time.perf_counter() - t0) / 10 * 1000:.1f} ms")

    steps, t_env, successes = 0, 0.0, 0
    for seed in range(args.episodes):
        env.reset(seed=seed)
        expert = OneLegExpert(env, np.random.default_rng(seed), STYLES["mh"])
        for _ in range(700):
            action = expert.act()
            t0 = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            t_env += time.perf_counter() - t0
            steps += 1
            if terminated or truncated:
                successes += terminated
                break
    print(f"one env, scripted expert: {steps / t_env:,.0f} steps/s ({steps} steps, {successes}/{args.episodes} "
          f"assembled; expert time excluded)")

    env.reset(seed=0)
    p, r = env.ee_pose()
    hold = np.concatenate([p, rot6d_from_mat(r), [-1.0]]).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(300):
        env.step(hold)
    print(f"one env, holding still: {300 / (time.perf_counter() - t0):,.0f} steps/s")

    from envs.tasks import get_task
    from envs.vector import Normalizer, TaskVectorEnv

    task = get_task("one_leg_low")
    norm = Normalizer(np.full(58, -1, np.float32), np.full(58, 1, np.float32), np.full(10, -1, np.float32),
                      np.full(10, 1, np.float32))
    chunk = np.repeat(np.clip(hold, -1, 1)[None, None], args.envs, 0).repeat(8, 1)
    for vector in ("sync", "async"):
        venv = TaskVectorEnv(task, args.envs, 8, norm, vector=vector)
        venv.reset(seed=0)
        t0, n = time.perf_counter(), 0
        for _ in range(20):
            n += int(venv.step(chunk).env_steps.sum())
        print(f"{vector} vector env x{args.envs}: {n / (time.perf_counter() - t0):,.0f} steps/s (total)")
        venv.close()


if __name__ == "__main__":
    main()
