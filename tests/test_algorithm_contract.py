"""The contract every registered algorithm meets (parametrised over the registry, so a new algorithm is
covered without editing this file): its config composes for every suite and preset, it acts with the
documented shapes, its update returns finite metrics, and state_dict/load_state_dict resume exactly."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from algorithms.policies import list_policy_kinds
from algorithms.registry import builtin_algorithms, get_algorithm
from bench.config import build_run_config
from bench.runner import (EpisodeTracker, RunContext, build_algorithm, collect_rollout, make_env, prepare_policy,
                          seed_everything)

ALGORITHMS = builtin_algorithms()


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_config_composes_for_every_suite_and_preset(algo):
    cls = get_algorithm(algo)
    assert cls.policy_kind in list_policy_kinds()
    for task in ("hopper", "lift", "one_leg_low", "bimodal_bandit"):
        for preset in ("smoke", "small", "paper"):
            cfg = build_run_config(task, algo, 0, preset)
            assert isinstance(cfg.algo, cls.Config)


def _pieces(algo: str, seed: int = 0):
    cfg = build_run_config("point_reach", algo, seed, "smoke", {"torch_threads": "1"})
    ctx = RunContext.of(cfg)
    policy, norm, _ = prepare_policy(ctx, log=lambda *a, **k: None)
    seed_everything(seed)
    return ctx, build_algorithm(ctx, policy), make_env(ctx, norm, cfg.env.n_envs)


def _iteration(ctx, algorithm, env, obs, itr):
    ro, obs, _ = collect_rollout(algorithm, env, obs, ctx.cfg.train.n_steps, EpisodeTracker(env.n_envs), ctx.device)
    return algorithm.update(ro, itr), obs


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_acts_updates_and_resumes_exactly(algo):
    ctx, algorithm, env = _pieces(algo)
    task, n = ctx.task, ctx.cfg.env.n_envs
    obs = env.reset(seed=0)
    out = algorithm.act(torch.as_tensor(obs), deterministic=True, generator=torch.Generator().manual_seed(1))
    assert out.actions.shape == (n, ctx.cfg.env.horizon_steps, task.act_dim) and torch.isfinite(out.actions).all()
    metrics, obs = _iteration(ctx, algorithm, env, obs, 0)
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    assert not any(math.isinf(v) for v in metrics.values())

    # save after one iteration, then compare continuing with a rebuilt algorithm loaded from the state
    state = copy.deepcopy(algorithm.state_dict())  # a checkpoint is written at once; state_dict may alias
    rng = torch.get_rng_state()
    expected, _ = _iteration(ctx, algorithm, env, obs, 1)
    after = algorithm.act(torch.as_tensor(obs), deterministic=True, generator=torch.Generator().manual_seed(2)).actions

    # a fresh copy: the same first rollout (same start, same draws), but the saved state instead of its update
    ctx2, resumed, env2 = _pieces(algo)
    _, obs2, _ = collect_rollout(resumed, env2, env2.reset(seed=0), ctx2.cfg.train.n_steps,
                                 EpisodeTracker(env2.n_envs), ctx2.device)
    assert (obs2 == obs).all()
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    got, _ = _iteration(ctx2, resumed, env2, obs2, 1)
    env2.close()
    env.close()
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == expected[k] or (math.isnan(got[k]) and math.isnan(expected[k])), k
    again = resumed.act(torch.as_tensor(obs), deterministic=True, generator=torch.Generator().manual_seed(2)).actions
    assert torch.equal(again, after)
