"""Offline datasets: D4RL-format hdf5 (also the format of the built-in datasets), Minari, and the
built-in "medium" datasets rolled out from the shipped behaviour policies. Robomimic-layout hdf5 files
(a `data` group of demos) are read by `envs.robomimic_data`.

Every loader returns a `TransitionDataset` with a content checksum (sha256 over the arrays), which runs
record and the pre-training cache keys on. Episodes end at `terminals | timeouts` (D4RL convention).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

import numpy as np

from core.errors import BenchError
from core.atomic import atomic_path, atomic_write_json
from core.paths import cache_root
from envs.transitions import D4RL_KEYS, TransitionDataset  # noqa: F401 (TransitionDataset re-exported)



@dataclass
class DataConfig:
    """The `data` section of a run's config: which offline dataset pre-training uses."""

    source: str = "builtin"
    """'builtin' (made by `bench data make`), a D4RL- or robomimic-format .hdf5 path, or 'minari:<dataset id>'"""
    n_transitions: int = 200_000
    """size of the built-in dataset (D4RL used 1M); Gym and test tasks"""
    seed: int = 0
    """seed of the built-in dataset's rollouts"""
    n_demos: int = 300
    """robomimic tasks: successful scripted-expert demos in the built-in dataset (robomimic mh has 300)"""
    demo_quality: Literal["ph", "mh", "better", "okay", "worse"] = "mh"
    """robomimic tasks: built-in demonstrators, 'ph' proficient, 'mh' six operators of mixed skill (as
    DPPO's pre-training data), or only mh's 'better' / 'okay' / 'worse' operators"""
    filter_key: str | None = None
    """robomimic files: use only the demos of this mask (e.g. train, valid, better); None: all demos"""


def write_d4rl_hdf5(path: Path, ds: TransitionDataset, next_observations: np.ndarray | None = None,
                    attrs: dict | None = None) -> None:
    """Write the D4RL layout atomically: observations, actions, rewards, terminals, timeouts (+ next_observations)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name in D4RL_KEYS:
                f.create_dataset(name, data=getattr(ds, name), compression="gzip", compression_opts=1)
            if next_observations is not None:
                f.create_dataset("next_observations", data=next_observations, compression="gzip",
                                 compression_opts=1)
            for k, v in (attrs or {}).items():
                f["metadata/" + k] = json.dumps(v) if isinstance(v, (dict, list)) else v


def load_d4rl_hdf5(path: str | Path) -> TransitionDataset:
    import h5py

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"dataset file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in D4RL_KEYS if not isinstance(f.get(k), h5py.Dataset)]
            if missing:
                raise BenchError(f"{path} is not a D4RL-format dataset: missing {', '.join(missing)} "
                                 f"(needs {', '.join(D4RL_KEYS)})")
            arrays = {k: f[k][()] for k in D4RL_KEYS}
    except OSError as e:
        raise BenchError(f"cannot read dataset {path}: corrupt or not hdf5 ({e})") from None
    return TransitionDataset(
        observations=arrays["observations"].astype(np.float32),
        actions=arrays["actions"].astype(np.float32),
        rewards=arrays["rewards"].astype(np.float32).reshape(-1),
        terminals=arrays["terminals"].astype(bool).reshape(-1),
        timeouts=arrays["timeouts"].astype(bool).reshape(-1),
        source=str(path),
    )


def load_checked_d4rl_hdf5(path: Path, task_name: str) -> TransitionDataset:
    """A built-in dataset, verified against the checksum in its `.json` sidecar."""
    ds = load_d4rl_hdf5(path)
    meta_path = path.with_suffix(".json")
    if meta_path.exists():
        expected = json.loads(meta_path.read_text()).get("checksum")
        if expected and expected != ds.checksum:
            raise BenchError(f"dataset {path} is corrupt (checksum mismatch); remake it with "
                             f"`bench data make {task_name} --force`")
    return ds


def load_minari(dataset_id: str, download: bool = True) -> TransitionDataset:
    """Load a Minari dataset (downloaded on first use when minari and the network are available)."""
    try:
        import minari
    except ImportError:
        raise BenchError("minari is not installed: pip install 'minari==0.5.3'") from None
    try:
        if dataset_id not in minari.list_local_datasets() and download:
            minari.download_dataset(dataset_id)
        dataset = minari.load_dataset(dataset_id)
    except Exception as e:  # minari raises many kinds (network, missing, version)
        raise BenchError(f"cannot load Minari dataset {dataset_id!r}: {str(e).splitlines()[0]}") from None
    obs, act, rew, term, tout = [], [], [], [], []
    for ep in dataset.iterate_episodes():
        o = np.asarray(ep.observations)
        obs.append(o[:-1])
        act.append(np.asarray(ep.actions))
        rew.append(np.asarray(ep.rewards))
        t = np.asarray(ep.terminations, bool)
        tr = np.asarray(ep.truncations, bool).copy()
        tr[-1] |= not t[-1]
        term.append(t)
        tout.append(tr)
    return TransitionDataset(np.concatenate(obs).astype(np.float32), np.concatenate(act).astype(np.float32),
                             np.concatenate(rew).astype(np.float32), np.concatenate(term),
                             np.concatenate(tout), source=f"minari:{dataset_id}")


# ---------------------------------------------------------------------------------------------------
# Built-in datasets


def builtin_dataset_path(task: str, n_transitions: int, seed: int) -> Path:
    """Keyed by the shipped behaviour policy's content too, so a re-trained policy makes a new dataset."""
    from envs.behavior import POLICY_DIR

    policy = POLICY_DIR / f"{task}.pt"
    tag = hashlib.sha256(policy.read_bytes()).hexdigest()[:8] if policy.exists() else "nopolicy"
    return cache_root() / "data" / task / f"medium-{n_transitions}-seed{seed}-{tag}.hdf5"


def make_builtin_dataset(task_name: str, n_transitions: int, seed: int = 0, n_envs: int = 10,
                         force: bool = False, log=print) -> Path:
    """Roll out the shipped behaviour policy into a D4RL-format file (stochastic actions, seeded)."""
    import gymnasium as gym
    import torch

    from envs.behavior import load_behavior_policy
    from envs.tasks import get_task

    task = get_task(task_name)
    path = builtin_dataset_path(task_name, n_transitions, seed)
    if path.exists() and not force:
        return path
    actor = load_behavior_policy(task_name)
    envs = gym.vector.SyncVectorEnv([lambda: task.make_env(task.env_id, task.max_episode_steps)] * n_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    generator = torch.Generator().manual_seed(seed)
    obs, _ = envs.reset(seed=seed)
    # Record (T, N) arrays, batched; cut them into complete episodes afterwards.
    steps = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
    last_done = np.zeros(n_envs, np.int64)  # per env: steps up to the end of its last complete episode
    while last_done.sum() < n_transitions:
        with torch.no_grad():
            action = actor.sample(torch.as_tensor(obs, dtype=torch.float32), generator)[0].numpy()
        next_obs, rew, term, trunc, info = envs.step(action)
        true_next = next_obs.copy()
        if (term | trunc).any():
            true_next[info["_final_obs"]] = np.stack(info["final_obs"][info["_final_obs"]])
        for k, v in (("obs", obs), ("act", action), ("rew", rew), ("next", true_next), ("term", term),
                     ("trunc", trunc)):
            steps[k].append(v)
        last_done[term | trunc] = len(steps["rew"])
        obs = next_obs
    envs.close()
    arrays = {k: np.stack(v, 1) for k, v in steps.items()}  # (N, T, ...) env-major
    # env-major order, each env's complete episodes in time order
    keep = np.arange(arrays["rew"].shape[1])[None, :] < last_done[:, None]
    cat = {k: v[keep][:n_transitions] for k, v in arrays.items()}
    ds = TransitionDataset(cat["obs"].astype(np.float32), cat["act"].astype(np.float32),
                           cat["rew"].astype(np.float32), cat["term"].astype(bool), cat["trunc"].astype(bool),
                           source=str(path))
    returns = ds.episode_returns()
    attrs = {"task": task_name, "behavior_policy": f"envs/behavior_policies/{task_name}.pt", "seed": seed,
             "n_episodes": int(len(returns)), "mean_return": float(returns.mean())}
    write_d4rl_hdf5(path, ds, cat["next"].astype(np.float32), attrs)
    atomic_write_json(path.with_suffix(".json"), dict(attrs, checksum=ds.checksum, n_transitions=n_transitions))
    log(f"wrote {path}: {n_transitions} transitions, {len(returns)} episodes, "
        f"mean return {returns.mean():.1f} (last episode may be cut)")
    return path


def load_dataset(task_name: str, source: str, n_transitions: int, seed: int, make_missing: bool = True,
                 log=print, data=None) -> TransitionDataset:
    """Resolve a DataConfig source to a checked dataset for `task_name`.

    `data` (the run's DataConfig) is passed to a task's own `builtin_dataset` hook; without it one is
    built from (source, n_transitions, seed)."""
    from envs.tasks import get_task

    task = get_task(task_name)
    if source == "builtin" and task.builtin_dataset is not None:
        data = data or DataConfig(source=source, n_transitions=n_transitions, seed=seed)
        ds = task.builtin_dataset(task_name, data, make_missing, log)
    elif source == "builtin":
        path = builtin_dataset_path(task_name, n_transitions, seed)
        if not path.exists():
            if not make_missing:
                raise BenchError(f"dataset {path} is missing; make it with `bench data make {task_name}`")
            make_builtin_dataset(task_name, n_transitions, seed, log=log)
        ds = load_checked_d4rl_hdf5(path, task_name)
    elif source.startswith("minari:"):
        ds = load_minari(source.removeprefix("minari:"))
    elif source.endswith((".hdf5", ".h5")):
        from envs.robomimic_data import is_robomimic_hdf5, load_robomimic_hdf5

        if is_robomimic_hdf5(source):
            ds = (task.demo_file_loader or load_robomimic_hdf5)(source, task_name, data.filter_key if data else None)
            dataset_env_kwargs(task_name, source, log)  # check now that its env can be rebuilt
        else:
            ds = load_d4rl_hdf5(source)
    else:
        raise BenchError(f"bad data.source {source!r}; valid: 'builtin', a D4RL .hdf5 path, 'minari:<id>', "
                         f"or a robomimic .hdf5 path")
    ds.check_dims(task.obs_dim, task.act_dim, task_name)
    return ds


def dataset_env_kwargs(task_name: str, source: str, log=None) -> dict:
    """Env settings a dataset file prescribes (a robomimic file's env_args: robot, controller, control
    frequency), for the task's env factory; {} for every other source."""
    from envs.tasks import get_task

    # robomimic files record robosuite kwargs; other suites' files (furniture) record their task only
    if source.endswith((".hdf5", ".h5")) and get_task(task_name).demo_file_loader is None:
        from envs.robomimic_data import env_kwargs_from_file, is_robomimic_hdf5

        if is_robomimic_hdf5(source):
            return env_kwargs_from_file(source, task_name, log)
    return {}
