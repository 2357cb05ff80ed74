"""Gym locomotion tasks (gymnasium v5 MuJoCo envs) with D4RL reference returns for normalised scores."""

from __future__ import annotations

from envs.tasks import TaskSpec, register_task


def make_gym_env(env_id: str, max_episode_steps: int):
    import gymnasium as gym

    return gym.make(env_id, max_episode_steps=max_episode_steps)


# D4RL reference returns (random, expert), as used for D4RL normalised scores.
for _name, _env_id, _obs, _act, _rand, _expert in [
    ("hopper", "Hopper-v5", 11, 3, -20.272305, 3234.3),
    ("walker2d", "Walker2d-v5", 17, 6, 1.629008, 4592.3),
    ("halfcheetah", "HalfCheetah-v5", 17, 6, -280.178953, 12135.0),
]:
    register_task(
        TaskSpec(
            name=_name,
            suite="gym",
            env_id=_env_id,
            obs_dim=_obs,
            act_dim=_act,
            max_episode_steps=1000,
            horizon_steps=4,
            act_steps=4,
            ref_random_return=_rand,
            ref_expert_return=_expert,
            metric="return",
            make_env=make_gym_env,
            description=f"gymnasium {_env_id}, dense reward, D4RL-normalised score",
        )
    )
