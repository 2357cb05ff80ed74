"""Behaviour policies for the built-in D4RL-style "medium" datasets.

D4RL's "medium" datasets were rolled out by a partially trained SAC agent (about 1/3 of expert return).
The hubs are unreachable here, so we train our own: `train_behavior_policy` runs SAC (Haarnoja et al.
2018, automatic entropy tuning) on the raw gymnasium env, evaluates the actor every `eval_every` steps,
and keeps the checkpoint whose deterministic return is closest to `target_fraction` of the D4RL expert
return. The selected actor's weights (~80 kB) are shipped in `envs/behavior_policies/<task>.pt`, and
`bench data make` rolls them out (stochastically, from a seeded generator) into a dataset.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

POLICY_DIR = Path(__file__).parent / "behavior_policies"
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass
class SACConfig:
    total_steps: int = 300_000
    learning_starts: int = 5_000
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    hidden_dim: int = 128
    update_every: int = 2  # one gradient step per this many env steps (UTD 0.5: enough for "medium")
    eval_every: int = 10_000
    eval_episodes: int = 5
    target_fraction: float = 0.4  # of the D4RL expert return; "medium" is about 1/3 to 1/2
    stop_fraction: float = 0.55  # stop early once an evaluation passes this fraction of expert
    seed: int = 0


class SquashedGaussianActor(nn.Module):
    """tanh-squashed Gaussian over raw env actions (rescaled to the action box)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, act_low, act_high):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()
        )
        self.mean = nn.Linear(hidden_dim, act_dim)
        self.log_std = nn.Linear(hidden_dim, act_dim)
        self.register_buffer("act_scale", torch.as_tensor((act_high - act_low) / 2.0, dtype=torch.float32))
        self.register_buffer("act_bias", torch.as_tensor((act_high + act_low) / 2.0, dtype=torch.float32))

    def forward(self, obs: torch.Tensor):
        h = self.net(obs)
        log_std = torch.tanh(self.log_std(h))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return self.mean(h), log_std

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None):
        mean, log_std = self(obs)
        std = log_std.exp()
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        u = mean + std * noise
        y = torch.tanh(u)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        log_prob = log_prob - torch.log(self.act_scale * (1 - y.pow(2)) + 1e-6).sum(-1)
        return y * self.act_scale + self.act_bias, log_prob

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self(obs)
        return torch.tanh(mean) * self.act_scale + self.act_bias


class TwinQ(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int):
        super().__init__()

        def q():
            return nn.Sequential(
                nn.Linear(obs_dim + act_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, 1),
            )

        self.q1, self.q2 = q(), q()

    def forward(self, obs, act):
        x = torch.cat([obs, act], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


def _evaluate(env, actor: SquashedGaussianActor, episodes: int, seed: int) -> float:
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                a = actor.deterministic(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            obs, r, term, trunc, _ = env.step(a)
            total += float(r)
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns))


def train_behavior_policy(task_name: str, cfg: SACConfig, out_dir: Path, log=print) -> dict:
    """Train SAC on `task_name`, keep the checkpoint nearest the medium target; return its metadata."""
    from envs.tasks import get_task

    task = get_task(task_name)
    env = task.make_env(task.env_id, task.max_episode_steps)
    eval_env = task.make_env(task.env_id, task.max_episode_steps)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    obs_dim, act_dim = task.obs_dim, task.act_dim
    low, high = env.action_space.low, env.action_space.high
    actor = SquashedGaussianActor(obs_dim, act_dim, cfg.hidden_dim, low, high)
    critic = TwinQ(obs_dim, act_dim, cfg.hidden_dim)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, foreach=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, foreach=True)
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=cfg.critic_lr)
    target_entropy = -float(act_dim)

    n = cfg.total_steps
    buf_obs = np.zeros((n, obs_dim), np.float32)
    buf_next = np.zeros((n, obs_dim), np.float32)
    buf_act = np.zeros((n, act_dim), np.float32)
    buf_rew = np.zeros(n, np.float32)
    buf_term = np.zeros(n, np.float32)

    target = task.ref_expert_return * cfg.target_fraction
    best = {"distance": float("inf")}
    history = []
    obs, _ = env.reset(seed=cfg.seed)
    t0 = time.time()
    for step in range(n):
        if step < cfg.learning_starts:
            action = rng.uniform(low, high).astype(np.float32)
        else:
            with torch.no_grad():
                action = actor.sample(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
        next_obs, reward, term, trunc, _ = env.step(action)
        buf_obs[step], buf_act[step], buf_rew[step] = obs, action, reward
        buf_next[step], buf_term[step] = next_obs, float(term)  # truncation bootstraps from next_obs
        obs = next_obs
        if term or trunc:
            obs, _ = env.reset()

        if step >= cfg.learning_starts and step % cfg.update_every == 0:
            idx = rng.integers(0, step + 1, cfg.batch_size)
            o, a, r = (torch.from_numpy(x[idx]) for x in (buf_obs, buf_act, buf_rew))
            o2, d = torch.from_numpy(buf_next[idx]), torch.from_numpy(buf_term[idx])
            alpha = log_alpha.exp().detach()
            with torch.no_grad():
                a2, logp2 = actor.sample(o2)
                q1t, q2t = critic_target(o2, a2)
                y = r + cfg.gamma * (1 - d) * (torch.min(q1t, q2t) - alpha * logp2)
            q1, q2 = critic(o, a)
            critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
            critic_opt.zero_grad()
            critic_loss.backward()
            critic_opt.step()

            a_pi, logp = actor.sample(o)
            q1p, q2p = critic(o, a_pi)
            actor_loss = (alpha * logp - torch.min(q1p, q2p)).mean()
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            alpha_loss = -(log_alpha * (logp.detach() + target_entropy)).mean()
            alpha_opt.zero_grad()
            alpha_loss.backward()
            alpha_opt.step()
            with torch.no_grad():
                for p, pt in zip(critic.parameters(), critic_target.parameters()):
                    pt.lerp_(p, cfg.tau)

        if (step + 1) % cfg.eval_every == 0:
            ret = _evaluate(eval_env, actor, cfg.eval_episodes, seed=10_000)
            history.append({"step": step + 1, "eval_return": ret, "wall_s": round(time.time() - t0, 1)})
            log(f"[{task_name}] step {step + 1}: eval return {ret:.1f} (target {target:.0f}), "
                f"{(step + 1) / (time.time() - t0):.0f} steps/s")
            if abs(ret - target) < best["distance"]:
                best = {"distance": abs(ret - target), "step": step + 1, "eval_return": ret,
                        "state_dict": copy.deepcopy(actor.state_dict())}
            out_dir.mkdir(parents=True, exist_ok=True)
            _save(out_dir / f"{task_name}.pt", task_name, best, cfg, history, low, high)
            if ret > cfg.stop_fraction * task.ref_expert_return:
                break
    return {k: v for k, v in best.items() if k != "state_dict"}


def _save(path: Path, task_name, best, cfg, history, low, high) -> None:
    meta = {"task": task_name, "selected_step": best["step"], "selected_eval_return": best["eval_return"],
            "sac_config": asdict(cfg), "history": history, "hidden_dim": cfg.hidden_dim,
            "act_low": low.tolist(), "act_high": high.tolist()}
    tmp = path.with_suffix(".tmp")
    torch.save({"meta": meta, "actor": best["state_dict"]}, tmp)
    tmp.replace(path)
    (path.with_suffix(".json")).write_text(json.dumps(meta, indent=1))


def load_behavior_policy(task_name: str, policy_dir: Path = POLICY_DIR) -> SquashedGaussianActor:
    from core.errors import BenchError
    from envs.tasks import get_task

    path = policy_dir / f"{task_name}.pt"
    if not path.exists():
        raise BenchError(f"no behaviour policy for task {task_name!r} at {path}; "
                         f"train one with `bench data train-behavior {task_name}`")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    task = get_task(task_name)
    meta = blob["meta"]
    actor = SquashedGaussianActor(task.obs_dim, task.act_dim, meta["hidden_dim"],
                                  np.asarray(meta["act_low"]), np.asarray(meta["act_high"]))
    actor.load_state_dict(blob["actor"])
    return actor.eval()
