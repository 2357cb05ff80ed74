"""The harness: one seeded run of (task, algorithm) from data to results.

It owns the loop (collect a rollout, let the algorithm update), the env-step budget, seeding, the
evaluation schedule, metric logging, checkpoints and resume. The files of a run are `core.runstore.RunStore`'s.
A run's pieces are built from one `RunContext` (the resolved config, its task and device).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from algorithms.base import AlgoContext, Algorithm, Rollout
from algorithms.policies import policy_kind_of_run
from algorithms.registry import get_algorithm
from bench.config import RunConfig, flatten, run_config_from_dict, to_dict
from bench.trackers import open_trackers
from core.atomic import atomic_torch_save, atomic_write_csv, atomic_write_json, remove_stale_temp_files
from core.errors import BenchError
from core.runstore import RunStore
from envs.tasks import TaskSpec, get_task
from envs.vector import Normalizer, TaskVectorEnv

CHECKPOINT_FORMAT = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {name!r} requested but CUDA is not available; use --set device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BenchError(f"bad device {name!r}; valid: cpu, cuda, cuda:N, auto") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def git_revision() -> str | None:
    """The checkout's commit, with "-dirty" when tracked files have changes; None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        rev = git("rev-parse", "HEAD")
        if rev.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict:
    import gymnasium
    import mujoco

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "numpy": np.__version__, "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__}
    try:  # read from the package metadata: importing robosuite takes seconds
        out["robosuite"] = importlib.metadata.version("robosuite")
    except importlib.metadata.PackageNotFoundError:
        pass
    out["git_revision"] = git_revision()
    return out


# ---------------------------------------------------------------------------------------------------
# Building the pieces


@dataclass(frozen=True)
class RunContext:
    """What every piece of a run is built from: the resolved config, its task and the torch device."""

    cfg: RunConfig
    task: TaskSpec
    device: torch.device

    @classmethod
    def of(cls, cfg: RunConfig) -> "RunContext":
        return cls(cfg, get_task(cfg.task), resolve_device(cfg.device))


def prepare_policy(ctx: RunContext, log=print, progress=None, expect: dict | None = None):
    """Dataset (made if missing) -> the pre-trained policy of the algorithm's `policy_kind` (cached);
    returns (policy, normalizer, meta). `expect` (a resumed run's recorded "data_checksum" and
    "pretrained_key", either may be None) is checked before anything is pre-trained: a mismatch is a
    BenchError."""
    from bench.pretrain import check_architecture, load_pretrained, pretrain_key, pretrain_policy
    from envs.datasets import load_dataset

    cfg, task = ctx.cfg, ctx.task
    kind = policy_kind_of_run(cfg)
    check_architecture(kind, cfg.pretrain)  # before any data is made
    ds = load_dataset(cfg.task, cfg.data.source, cfg.data.n_transitions, cfg.data.seed, log=log, data=cfg.data)
    expect = expect or {}
    if expect.get("data_checksum") and expect["data_checksum"] != ds.checksum:
        raise BenchError(f"cannot resume: the dataset {cfg.data.source!r} changed since the run started (checksum "
                         f"{ds.checksum[:16]}, the run was trained on {expect['data_checksum'][:16]}); restore the "
                         f"data or start a new run (another --out or --seed)")
    key = pretrain_key(cfg.task, ds.checksum, cfg.env.horizon_steps, cfg.pretrain, kind)
    if expect.get("pretrained_key") and expect["pretrained_key"] != key:
        raise BenchError(f"cannot resume: the pre-trained policy would be {kind}-{key}, the run started from "
                         f"{kind}-{expect['pretrained_key']}; start a new run (another --out or --seed)")
    path = pretrain_policy(kind, cfg.task, task.obs_dim, task.act_dim, ds, cfg.env.horizon_steps, cfg.pretrain,
                           str(ctx.device), progress)
    policy, norm, meta = load_pretrained(path, str(ctx.device))
    meta = {k: meta[k] for k in ("key", "policy_kind", "data_checksum", "data_source", "wall_s")} | {"path": str(path)}
    return policy, norm, meta


def build_algorithm(ctx: RunContext, policy) -> Algorithm:
    cfg, task = ctx.cfg, ctx.task
    algo_ctx = AlgoContext(obs_dim=task.obs_dim, act_dim=task.act_dim, horizon_steps=cfg.env.horizon_steps,
                           act_steps=cfg.env.act_steps, n_envs=cfg.env.n_envs, n_steps=cfg.train.n_steps,
                           n_iterations=cfg.train.n_iterations, suite=task.suite, device=ctx.device)
    return get_algorithm(cfg.algorithm)(cfg.algo, algo_ctx, policy)


def make_env(ctx: RunContext, norm: Normalizer, n_envs: int) -> TaskVectorEnv:
    from envs.datasets import dataset_env_kwargs

    cfg, task = ctx.cfg, ctx.task
    env_kwargs = dataset_env_kwargs(cfg.task, cfg.data.source)
    if env_kwargs:  # build the envs the way the data's env was built
        task = dataclasses.replace(task, make_env=functools.partial(task.make_env, env_kwargs=env_kwargs))
    if cfg.env.sim != "mujoco":
        task = dataclasses.replace(task, make_env=functools.partial(task.make_env, sim=cfg.env.sim))
    return TaskVectorEnv(task, n_envs, cfg.env.act_steps, norm, cfg.env.max_episode_steps, cfg.env.vector)


# ---------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(algo: Algorithm, env: TaskVectorEnv, n_episodes: int, seed: int, device: torch.device) -> dict:
    """Deterministic evaluation over exactly `n_episodes` complete episodes, spread over the envs.

    The envs are reset from `seed` each time, so every evaluation of a run sees the same initial states.
    """
    n = env.n_envs
    quota = np.array([n_episodes // n + (i < n_episodes % n) for i in range(n)])
    returns, lengths, successes = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]
    ep_ret, ep_len, ep_succ = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, bool)
    obs = env.reset(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    counts = np.zeros(n, np.int64)
    while (counts < quota).any():
        with torch.no_grad():
            chunk = algo.act(torch.as_tensor(obs, device=device), deterministic=True, generator=generator).actions
        step = env.step(chunk.cpu().numpy())
        ep_ret += step.reward
        ep_len += step.env_steps
        ep_succ |= step.success
        for i in np.flatnonzero((step.terminated | step.truncated) & (counts < quota)):
            returns[i].append(ep_ret[i])
            lengths[i].append(ep_len[i])
            successes[i].append(ep_succ[i])
            counts[i] += 1
        done = step.terminated | step.truncated
        ep_ret[done], ep_len[done], ep_succ[done] = 0.0, 0, False
        obs = step.obs
    r = np.concatenate([np.asarray(x, float) for x in returns])
    task = env.task
    scores = [task.normalized_score(x) for x in r]
    return {"return_mean": float(r.mean()), "return_std": float(r.std()),
            "score_mean": float(np.mean(scores)) if scores[0] is not None else float("nan"),
            "success_rate": float(np.mean(np.concatenate([np.asarray(s, float) for s in successes]))),
            "episode_len": float(np.concatenate([np.asarray(x, float) for x in lengths]).mean()),
            "n_episodes": int(len(r)), "returns": [float(x) for x in r]}


# ---------------------------------------------------------------------------------------------------
# Rollout


class EpisodeTracker:
    """Returns of training episodes, counted when they end, whichever iteration they started in."""

    def __init__(self, n_envs: int):
        self.ret, self.len = np.zeros(n_envs), np.zeros(n_envs, np.int64)
        self.succ = np.zeros(n_envs, bool)
        self.finished: list[tuple[float, int, bool]] = []

    def add(self, step) -> None:
        self.ret += step.reward
        self.len += step.env_steps
        self.succ |= step.success
        done = step.terminated | step.truncated
        self.finished += list(zip(self.ret[done].tolist(), self.len[done].tolist(), self.succ[done].tolist()))
        self.ret[done], self.len[done], self.succ[done] = 0.0, 0, False

    def pop(self) -> dict:
        f, self.finished = self.finished, []
        if not f:
            return {"train_return": float("nan"), "train_episodes": 0, "train_success_rate": float("nan")}
        r, _, s = zip(*f)
        return {"train_return": float(np.mean(r)), "train_episodes": len(f), "train_success_rate": float(np.mean(s))}

    def state_dict(self):
        return {"ret": self.ret.copy(), "len": self.len.copy(), "succ": self.succ.copy()}

    def load_state_dict(self, d):
        self.ret, self.len, self.succ = d["ret"].copy(), d["len"].copy(), d["succ"].copy()


def collect_rollout(algo: Algorithm, env: TaskVectorEnv, obs: np.ndarray, n_steps: int,
                    tracker: EpisodeTracker, device: torch.device):
    """n_steps chunks from every env, batched: one `act` call per step for all envs."""
    n, d = obs.shape
    buf_obs = torch.empty((n_steps, n, d), device=device)
    final_obs = torch.zeros((n_steps, n, d), device=device)
    rewards = torch.empty((n_steps, n), device=device)
    term = torch.empty((n_steps, n), dtype=torch.bool, device=device)
    trunc = torch.empty((n_steps, n), dtype=torch.bool, device=device)
    extras: dict[str, torch.Tensor] = {}
    env_steps = 0
    obs_t = torch.as_tensor(obs, device=device)
    for t in range(n_steps):
        out = algo.act(obs_t)
        step = env.step(out.actions.cpu().numpy())
        for k, v in out.extras.items():
            if k not in extras:
                extras[k] = torch.empty((n_steps,) + tuple(v.shape), dtype=v.dtype, device=device)
            extras[k][t] = v
        buf_obs[t] = obs_t
        rewards[t] = torch.as_tensor(step.reward, dtype=torch.float32)
        term[t], trunc[t] = torch.as_tensor(step.terminated), torch.as_tensor(step.truncated)
        if (step.terminated | step.truncated).any():
            final_obs[t] = torch.as_tensor(step.final_obs, device=device)
        tracker.add(step)
        env_steps += int(step.env_steps.sum())
        obs_t = torch.as_tensor(step.obs, device=device)
    ro = Rollout(buf_obs, extras, rewards, term, trunc, final_obs, obs_t)
    return ro, obs_t.cpu().numpy(), env_steps


# ---------------------------------------------------------------------------------------------------
# The run




def _diverged(metrics: dict, iteration: int, max_loss: float | None) -> str | None:
    """Why an iteration's metrics show divergence (non-finite values, a loss above train.max_loss), or None."""
    bad = [k for k, v in metrics.items() if isinstance(v, float) and (math.isinf(v) or (math.isnan(v) and k.endswith("loss")))]
    if bad:
        return f"non-finite {', '.join(bad)} at iteration {iteration}"
    if max_loss is not None:
        big = {k: v for k, v in metrics.items() if k.endswith("loss") and isinstance(v, (int, float))
               and not isinstance(v, bool) and abs(v) > max_loss}
        if big:
            return (f"{', '.join(f'{k} = {v:.3g}' for k, v in big.items())} at iteration {iteration} exceeds "
                    f"train.max_loss = {max_loss:g} (diverged)")
    return None


def _state_tensors(algo: Algorithm):
    """(name, tensor) of the algorithm's networks (parameters, buffers) and optimiser states; replay buffers
    and other data parts are not included."""
    import operator

    for path in type(algo).state_parts:
        try:
            part = operator.attrgetter(path)(algo)
        except AttributeError:
            continue
        if isinstance(part, torch.nn.Module):
            yield from ((f"{path}.{n}", t) for n, t in part.named_parameters())
            yield from ((f"{path}.{n}", t) for n, t in part.named_buffers())
        elif isinstance(part, torch.optim.Optimizer):
            for i, st in enumerate(part.state.values()):
                yield from ((f"{path}.state[{i}].{n}", t) for n, t in st.items() if isinstance(t, torch.Tensor))


def non_finite_state(algo: Algorithm) -> list[str]:
    """Names of the algorithm's parameters/optimiser-state tensors holding NaN or inf: one pass, one device
    sync per device (the names are only looked up when something is bad)."""
    tensors = [(n, t) for n, t in _state_tensors(algo) if t.is_floating_point() and t.numel()]
    by_device: dict = {}
    for n, t in tensors:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return []
    return [n for n, t in tensors if not bool(torch.isfinite(t).all())]


def _stop(why: str, checkpoint_iteration: int | None, hint: str = "") -> BenchError:
    """The error of a run that stops mid-way, saying what it leaves to resume from."""
    kept = ("no checkpoint was written yet" if checkpoint_iteration is None
            else f"last good checkpoint kept: iteration {checkpoint_iteration}")
    return BenchError(f"{why}; the run stops ({kept}){hint}")


def check_out_root(out_root: Path, rdir: Path, option: str = "--out") -> None:
    """BenchError, before any work, when the run directory cannot be written: a file on its path, or a
    directory that does not accept files (read-only). Nothing is left behind."""
    import os
    import tempfile

    p = rdir / "checkpoints"
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise BenchError(f"{option} {out_root}: {p} is a file, not a directory; give a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".dppo-bench-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BenchError(f"{option} {out_root}: cannot write in {p} ({e.strerror or e}); give a writable directory") from None


def _saved_config(store: RunStore) -> dict | None:
    if not store.config.exists():
        return None
    try:
        return json.loads(store.config.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BenchError(f"cannot resume {store.dir}: its config.json is unreadable; delete the run directory "
                         f"to start again") from None


def _config_diff(saved_d: dict, cfg: RunConfig, what: str, rdir: Path) -> None:
    try:
        saved = run_config_from_dict(saved_d)
    except (KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"cannot resume {rdir}: the config in its {what} is incomplete ({e})") from None
    # the trackers (log.*) are not part of what a run computes: a resume may switch them
    saved_flat = {k: v for k, v in flatten(to_dict(saved)).items() if not k.startswith("log.")}
    diff = sorted(k for k, v in flatten(to_dict(cfg)).items() if not k.startswith("log.") and saved_flat.get(k) != v)
    if diff:
        raise BenchError(f"cannot resume {rdir}: config differs from the {what} in {', '.join(diff)}")


def _recorded_inputs(store: RunStore, state: dict) -> dict:
    """The dataset checksum and pre-trained key a run started from: its checkpoint's, else versions.json's."""
    out = {"data_checksum": state.get("dataset_checksum"), "pretrained_key": state.get("pretrained_key")}
    if (out["data_checksum"] is None or out["pretrained_key"] is None) and store.versions.exists():
        try:
            v = json.loads(store.versions.read_text())
            out["data_checksum"] = out["data_checksum"] or v.get("dataset_checksum")
            out["pretrained_key"] = out["pretrained_key"] or (v.get("pretrained") or {}).get("key")
        except (OSError, ValueError, AttributeError):
            pass
    return out


def run(cfg: RunConfig, out_root: Path, resume: bool = False, command: str = "", log=print,
        progress=None, pretrain_progress=None) -> dict:
    """Train, evaluate and write one run; returns the summary. Resumes from the run's last checkpoint."""
    store = RunStore.of(out_root, cfg.task, cfg.algorithm, cfg.seed)
    rdir = store.dir
    # temp files of killed writes (checkpoints/ included); any age: a live writer of this run dir would be a
    # second copy of the same run, which is unsupported anyway, and its lock still protects its file
    remove_stale_temp_files(rdir, min_age_s=0, recursive=True)
    if store.complete():
        if resume:
            log(f"run {rdir} is already complete")
            return json.loads(store.summary.read_text())
        raise BenchError(f"run {rdir} already exists and is complete; use another --out or --seed, or delete it")
    if rdir.exists() and any(rdir.iterdir()) and not resume:
        raise BenchError(f"run {rdir} exists but is incomplete; continue it with --resume")
    state, expect = None, None
    if resume and store.checkpoint.exists():
        state = load_checkpoint(store.checkpoint)
        _config_diff(state["config"], cfg, "checkpoint", rdir)
        expect = _recorded_inputs(store, state)
    elif resume:  # no checkpoint yet: the run restarts, but only with the config it was started with
        saved = _saved_config(store)
        if saved is not None:
            _config_diff(saved, cfg, "run's config.json", rdir)
    check_out_root(out_root, rdir)

    ctx = RunContext.of(cfg)
    device, task = ctx.device, ctx.task
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    policy, norm, pre_meta = prepare_policy(ctx, log, pretrain_progress, expect)
    seed_everything(cfg.seed)
    algo = build_algorithm(ctx, policy)
    env = make_env(ctx, norm, cfg.env.n_envs)
    eval_env = make_env(ctx, norm, cfg.eval.n_envs)
    tracker = EpisodeTracker(cfg.env.n_envs)
    eval_seed = cfg.eval.seed + cfg.seed
    obs = env.reset(seed=cfg.seed)
    if state is None:
        rdir.mkdir(parents=True, exist_ok=True)
        for stale in (store.metrics, store.evals):
            stale.unlink(missing_ok=True)
        atomic_write_json(store.config, {"config": to_dict(cfg), "command": command})
        atomic_write_json(store.versions, {"versions": versions(), "dataset_checksum": pre_meta["data_checksum"],
                                           "dataset_source": pre_meta["data_source"], "pretrained": pre_meta})
        start_itr, env_steps, wall_before, rows, evals = 0, 0, 0.0, [], []
        checkpoint_itr = None  # the iteration of the last checkpoint written (for a stopped run's message)
    else:
        _load_algo_state(algo, state, store.checkpoint)
        set_rng_state(state["rng"])
        restored_obs = env_restore(env, state["env"])
        if restored_obs is not None:  # else the envs were reset: their unfinished episodes are not counted
            obs = restored_obs
            tracker.load_state_dict(state["tracker"])
        start_itr, env_steps, wall_before = state["iteration"], state["env_steps"], state["wall_s"]
        checkpoint_itr = start_itr
        rows, evals = state["metrics"], state["evals"]
        log(f"resuming {rdir} at iteration {start_itr}")

    # after every check: a run that cannot start leaves no tracker files
    trackers = open_trackers(cfg, rdir, rows, evals, None if state is None else env_steps, log)
    ok = False
    try:
        n_itr = cfg.train.n_iterations
        t_start = time.time()
        # CPU seconds of this process (async env workers not included), carried over a resume in the metrics
        cpu_before, cpu_start = (rows[-1].get("cpu_s", 0.0) if rows else 0.0), time.process_time()

        def do_eval(itr):
            t = time.time()
            res = evaluate(algo, eval_env, cfg.eval.n_episodes, eval_seed, device)
            row = {"iteration": itr, "env_steps": env_steps, **{k: v for k, v in res.items() if k != "returns"},
                   "eval_s": time.time() - t}
            evals.append(row)
            atomic_write_csv(store.evals, evals)
            trackers.log("eval", row)
            return row

        if start_itr == 0 and not evals:
            do_eval(0)
        if progress:
            progress.start(n_itr, start_itr, env_steps, evals[-1] if evals else None)
        for itr in range(start_itr, n_itr):
            t0 = time.time()
            algo_metrics = {}
            ro, obs, steps = collect_rollout(algo, env, obs, cfg.train.n_steps, tracker, device)
            t1 = time.time()
            try:
                algo_metrics = algo.update(ro, itr)
            except FloatingPointError as e:
                raise _stop(str(e), checkpoint_itr) from None
            why = _diverged(algo_metrics, itr + 1, cfg.train.max_loss)
            bad = [] if why else non_finite_state(algo)  # one pass over the networks and optimiser states
            if bad:
                more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
                why = f"non-finite parameters or optimiser state after iteration {itr + 1}: {', '.join(bad[:3])}{more}"
            if why:  # nothing of the diverged state is written: no metrics row, no checkpoint
                raise _stop(why, checkpoint_itr, "; lower the learning rates")
            env_steps += steps
            t2 = time.time()
            row = {"iteration": itr + 1, "env_steps": env_steps, "wall_s": wall_before + time.time() - t_start,
                   "cpu_s": cpu_before + time.process_time() - cpu_start, **tracker.pop(), "rollout_s": t1 - t0, "update_s": t2 - t1,
                   "env_steps_per_s": steps / max(t2 - t0, 1e-9), **algo_metrics}
            rows.append(row)
            atomic_write_csv(store.metrics, rows)
            trackers.log("train", row)
            last = itr + 1 == n_itr
            if (itr + 1) % cfg.eval.every == 0 or last:
                do_eval(itr + 1)
            if (itr + 1) % cfg.train.checkpoint_every == 0 or last:
                save_checkpoint(store.checkpoint, cfg, algo, policy, norm, itr + 1, env_steps,
                                wall_before + time.time() - t_start, tracker, env, obs, rows, evals, pre_meta)
                checkpoint_itr = itr + 1
            if progress:
                progress.update(itr + 1, env_steps, row, evals[-1])

        env.close()
        eval_env.close()
        summary = make_summary(cfg, task, evals, rows, env_steps, wall_before + time.time() - t_start, pre_meta)
        summary["cpu_s"] = cpu_before + time.process_time() - cpu_start
        atomic_write_json(store.summary, summary)
        ok = True
    finally:
        trackers.close(ok)
    return summary


def make_summary(cfg, task, evals, rows, env_steps, wall_s, pre_meta) -> dict:
    first, final = evals[0], evals[-1]
    metric = "success_rate" if task.metric == "success_rate" else "return_mean"
    return {
        "complete": True, "task": cfg.task, "algorithm": cfg.algorithm, "seed": cfg.seed, "preset": cfg.preset,
        "suite": task.suite, "metric": task.metric, "iterations": len(rows), "env_steps": env_steps,
        "wall_s": wall_s, "pretrained_eval": first, "final_eval": final,
        "pretrained_return": first["return_mean"], "final_return": final["return_mean"],
        "pretrained_score": first["score_mean"], "final_score": final["score_mean"],
        "pretrained_success_rate": first["success_rate"], "final_success_rate": final["success_rate"],
        "best_" + metric: max(e[metric] for e in evals), "dataset_checksum": pre_meta["data_checksum"],
        "pretrained_key": pre_meta["key"],
    }


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def env_snapshot(env: TaskVectorEnv, obs: np.ndarray) -> dict:
    """Exact state of MuJoCo gym envs (qpos, qvel, warm-start, time limit, RNG) so a resumed run
    continues the same episodes; other envs are reset on resume."""
    snap = {"obs": obs.copy(), "envs": None}
    inner = getattr(env.env, "envs", None)
    if inner is None:
        return snap
    try:
        states = []
        for e in inner:
            u = e.unwrapped
            tl = _find_time_limit(e)
            states.append({"qpos": u.data.qpos.copy(), "qvel": u.data.qvel.copy(), "time": u.data.time,
                           "qacc_warmstart": u.data.qacc_warmstart.copy(),
                           "elapsed": tl._elapsed_steps if tl else None,
                           "rng": u.np_random.bit_generator.state})
        snap["envs"] = states
    except AttributeError:
        snap["envs"] = None
    return snap


def _find_time_limit(e):
    import gymnasium as gym

    while isinstance(e, gym.Wrapper):
        if isinstance(e, gym.wrappers.TimeLimit):
            return e
        e = e.env
    return None


def env_restore(env: TaskVectorEnv, snap: dict) -> np.ndarray | None:
    """Restores the envs' exact states and returns their observations; None where that is not possible."""
    inner = getattr(env.env, "envs", None)
    if snap.get("envs") is None or inner is None or len(inner) != len(snap["envs"]):
        return None
    for e, s in zip(inner, snap["envs"]):
        u = e.unwrapped
        u.set_state(s["qpos"], s["qvel"])
        u.data.time = s["time"]
        u.data.qacc_warmstart[:] = s["qacc_warmstart"]
        tl = _find_time_limit(e)
        if tl is not None:
            tl._elapsed_steps = s["elapsed"]
        u.np_random.bit_generator.state = s["rng"]
    return snap["obs"]


def save_checkpoint(path: Path, cfg, algo, policy, norm, iteration, env_steps, wall_s, tracker, env, obs,
                    rows, evals, pre_meta: dict | None = None) -> None:
    pre_meta = pre_meta or {}
    atomic_torch_save(path, {
        "format": CHECKPOINT_FORMAT, "config": to_dict(cfg), "iteration": iteration, "env_steps": env_steps,
        "wall_s": wall_s, "algo": algo.state_dict(), "pretrained": policy.state_dict(),
        "normalizer": norm.state_dict(), "rng": rng_state(), "tracker": tracker.state_dict(),
        "env": env_snapshot(env, obs), "metrics": rows, "evals": evals,
        "dataset_checksum": pre_meta.get("data_checksum"), "pretrained_key": pre_meta.get("key"),
    })


CHECKPOINT_KEYS = ("config", "iteration", "env_steps", "wall_s", "algo", "pretrained", "normalizer", "rng",
                   "tracker", "env", "metrics", "evals")


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise BenchError(f"{path} is a directory, not a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise BenchError(f"cannot load checkpoint {path}: corrupt or not a checkpoint ({msg})") from None
    if isinstance(state, dict) and "policy_kind" in state and "state_dict" in state:
        raise BenchError(f"{path} is a pre-trained policy, not a run checkpoint; give a run directory or its "
                         f"checkpoints/last.pt")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise BenchError(f"{path} is not a dppo-bench run checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing or not isinstance(state["config"], dict) or not isinstance(state["algo"], dict):
        raise BenchError(f"checkpoint {path} is incomplete (missing {', '.join(missing) or 'a valid config/algo'}); "
                         f"it cannot be evaluated or resumed")
    return state


def _load_algo_state(algo: Algorithm, state: dict, path: Path) -> None:
    try:
        algo.load_state_dict(state["algo"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise BenchError(f"checkpoint {path}: its algo state does not fit {type(algo).__name__} ({msg})") from None


def load_for_eval(path: Path, device_name: str = "cpu", pretrained: bool = False):
    """A run directory or checkpoint -> (RunContext, algorithm with the fine-tuned weights, normalizer, state).
    `pretrained`: the algorithm on the run's pre-trained weights instead, built as `bench run` builds it for
    its iteration-0 evaluation (seeded, nothing fine-tuned loaded)."""
    from bench.pretrain import build_policy

    path = Path(path)
    if path.is_dir():
        path = RunStore(path).checkpoint
    if not path.exists():
        raise BenchError(f"no checkpoint at {path}")
    state = load_checkpoint(path)
    try:
        cfg = run_config_from_dict(state["config"])
    except (KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"checkpoint {path}: its config is incomplete ({e})") from None
    cfg.device = device_name
    ctx = RunContext.of(cfg)
    policy = build_policy(policy_kind_of_run(cfg), ctx.task.obs_dim, ctx.task.act_dim,
                          cfg.env.horizon_steps, cfg.pretrain)
    try:
        policy.load_state_dict(state["pretrained"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise BenchError(f"checkpoint {path}: its pre-trained weights do not fit the config ({msg})") from None
    if pretrained:
        seed_everything(cfg.seed)
    algo = build_algorithm(ctx, policy.to(ctx.device))
    if not pretrained:
        _load_algo_state(algo, state, path)
    return ctx, algo, Normalizer.from_state_dict(state["normalizer"]), state


def eval_checkpoint(path: Path, n_episodes: int | None = None, seed: int | None = None, device: str = "cpu") -> dict:
    if n_episodes is not None and (isinstance(n_episodes, bool) or n_episodes < 1):
        raise BenchError(f"--episodes must be >= 1, got {n_episodes}")
    if seed is not None and seed < 0:
        raise BenchError(f"--seed must be >= 0, got {seed}")
    ctx, algo, norm, state = load_for_eval(path, device)
    cfg = ctx.cfg
    n_episodes = cfg.eval.n_episodes if n_episodes is None else n_episodes
    env = make_env(ctx, norm, min(cfg.eval.n_envs, n_episodes))
    res = evaluate(algo, env, n_episodes, cfg.eval.seed + cfg.seed if seed is None else seed, ctx.device)
    env.close()
    return {"task": cfg.task, "algorithm": cfg.algorithm, "seed": cfg.seed, "iteration": state["iteration"], **res}
