"""Offline datasets: D4RL-format hdf5 (also the format of the built-in datasets), Minari, and the
built-in "medium" datasets rolled out from the shipped behaviour policies. Robomimic-layout hdf5 files
(a `data` group of demos) are read by `envs.robomimic_data`.

Every loader returns a `TransitionDataset` with a content checksum (sha256 over the arrays), which runs
record and the pre-training cache keys on. Episodes end at `terminals | timeouts` (D4RL convention).
D4RL files without `timeouts` (older D4RL versions) get them derived exactly from `next_observations`
(`derive_timeouts`; not from a maximum episode length, which would mis-cut episodes that end early
without a termination), with a note in the log; a file with neither key is refused. Built-in datasets
are verified against their checksum sidecar (`envs.transitions`); stale temporary files of killed writers
in the cache are removed when a built-in dataset is resolved (`core.atomic.remove_stale_temp_files`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

import numpy as np

from core.errors import BenchError
from core.atomic import atomic_path, atomic_write_json, remove_stale_temp_files
from core.paths import cache_root
from envs.transitions import (D4RL_KEYS, TransitionDataset, as_numbers, builtin_needs_making,  # noqa: F401
                              builtin_state, incomplete_message, missing_builtin_error, remake_hint,
                              sidecar_path, verify_builtin)

_log = logging.getLogger(__name__)


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
                    attrs: dict | None = None, sidecar: dict | None = None) -> None:
    """Write the D4RL layout atomically: observations, actions, rewards, terminals, timeouts (+ next_observations).

    With `sidecar`, that dict is written as the file's `.json` checksum sidecar first, and the data file
    is renamed into place after it (see `envs.transitions`): the pair is never half there."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", locking=False) as f:
            for name in D4RL_KEYS:
                f.create_dataset(name, data=getattr(ds, name), compression="gzip", compression_opts=1)
            if next_observations is not None:
                f.create_dataset("next_observations", data=next_observations, compression="gzip",
                                 compression_opts=1)
            for k, v in (attrs or {}).items():
                f["metadata/" + k] = json.dumps(v) if isinstance(v, (dict, list)) else v
        if sidecar is not None:
            atomic_write_json(sidecar_path(path), sidecar)


def derive_timeouts(observations: np.ndarray, next_observations: np.ndarray, terminals: np.ndarray) -> np.ndarray:
    """Time-limit episode ends of a D4RL file without `timeouts` (older D4RL versions), exactly: an
    episode ends after step i without a termination iff next_observations[i] is not observations[i + 1]
    (compared bit for bit as stored; within an episode the next observation *is* the following one).
    The last step is left to the dataset, which closes it."""
    n = len(observations)
    timeouts = np.zeros(n, bool)
    if n > 1:
        differs = (next_observations[:-1] != observations[1:]).reshape(n - 1, -1).any(1)
        timeouts[:-1] = differs & ~terminals[:-1]
    return timeouts


def load_d4rl_hdf5(path: str | Path, log=None) -> TransitionDataset:
    """A D4RL-format file. Without `timeouts` (older D4RL versions) the time-limit ends are derived
    exactly from `next_observations` (`derive_timeouts`), with a note in `log` (default: a logged
    warning); a file with neither is refused."""
    import h5py

    path = Path(path)
    if path.is_dir():
        raise BenchError(f"dataset {path} is a directory, not an hdf5 file")
    if not path.is_file():
        raise BenchError(f"dataset file {path} does not exist")
    note = None
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in D4RL_KEYS if not isinstance(f.get(k), h5py.Dataset)]
            derive = missing == ["timeouts"] and isinstance(f.get("next_observations"), h5py.Dataset)
            if missing and not derive:
                extra = (" (and no next_observations to derive timeouts from)" if missing == ["timeouts"] else "")
                raise BenchError(f"{path} is not a D4RL-format dataset: missing {', '.join(missing)}{extra} "
                                 f"(needs {', '.join(D4RL_KEYS)})")
            arrays = {k: f[k][()] for k in D4RL_KEYS if k not in missing}
            if derive:
                next_obs = f["next_observations"][()]
                if next_obs.shape != arrays["observations"].shape:
                    raise BenchError(f"{path} has no timeouts, and its next_observations {next_obs.shape} do not "
                                     f"match its observations {arrays['observations'].shape}: episode ends "
                                     f"cannot be derived")
                as_numbers(next_obs, "next_observations", path)
                as_numbers(arrays["observations"], "observations", path)
                as_numbers(arrays["terminals"], "terminals", path)
                arrays["timeouts"] = derive_timeouts(arrays["observations"], next_obs,
                                                     arrays["terminals"].astype(bool).reshape(-1))
                note = (f"{path} has no timeouts (an older D4RL version): derived {int(arrays['timeouts'].sum())} "
                        f"time-limit episode end(s) from next_observations (where next_observations[i] is not "
                        f"observations[i+1] and the step is not terminal)")
    except OSError as e:
        raise BenchError(f"cannot read dataset {path}: corrupt or not hdf5 ({str(e).splitlines()[0]})") from None
    if note:
        (log or _log.warning)(note)
    return TransitionDataset(
        observations=as_numbers(arrays["observations"], "observations", path),
        actions=as_numbers(arrays["actions"], "actions", path),
        rewards=as_numbers(arrays["rewards"], "rewards", path).reshape(-1),
        terminals=as_numbers(arrays["terminals"], "terminals", path, bool).reshape(-1),
        timeouts=as_numbers(arrays["timeouts"], "timeouts", path, bool).reshape(-1),
        source=str(path),
    )


def load_checked_d4rl_hdf5(path: Path, task_name: str) -> TransitionDataset:
    """A built-in dataset, verified against the checksum in its `.json` sidecar (a dataset without a valid
    sidecar is incomplete: an error). A damaged file's error says how to remake it."""
    if builtin_state(path) == "incomplete":
        raise BenchError(incomplete_message(path, task_name))
    try:
        ds = load_d4rl_hdf5(path)
    except BenchError as e:
        raise BenchError(f"{e}; {remake_hint(task_name)}") from None
    return verify_builtin(ds, path, task_name)


def minari_root() -> Path:
    """Where Minari keeps local datasets: $MINARI_DATASETS_PATH, default ~/.minari/datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def load_minari(dataset_id: str, download: bool = True) -> TransitionDataset:
    """Load a Minari dataset from MINARI_DATASETS_PATH (downloaded on first use when `download` and
    minari's download support and the network are available)."""
    try:
        import minari
    except ImportError:
        raise BenchError("minari is not installed: pip install 'minari==0.5.3'") from None
    where = f"MINARI_DATASETS_PATH ({minari_root()})"
    fix = (f"put it there (`minari download {dataset_id}` where the network is available) or set "
           f"MINARI_DATASETS_PATH to the directory that holds it")
    try:
        local = dataset_id in minari.list_local_datasets()
    except Exception as e:  # noqa: BLE001 - a damaged local store
        raise BenchError(f"cannot load Minari dataset {dataset_id!r}: cannot list the datasets under {where} "
                         f"({str(e).splitlines()[0]})") from None
    if not local:
        if not download:
            raise BenchError(f"cannot load Minari dataset {dataset_id!r}: it is not local (not under {where}); {fix}")
        try:
            minari.download_dataset(dataset_id)
        except Exception as e:  # noqa: BLE001 - minari raises many kinds (no huggingface_hub, network, unknown id)
            raise BenchError(f"cannot load Minari dataset {dataset_id!r}: it is not local (not under {where}) and "
                             f"downloading it failed ({str(e).splitlines()[0]}); {fix}") from None
    try:
        dataset = minari.load_dataset(dataset_id)
        episodes = list(dataset.iterate_episodes())
    except Exception as e:  # minari raises many kinds (missing, version)
        raise BenchError(f"cannot load Minari dataset {dataset_id!r}: {str(e).splitlines()[0]}") from None
    source = f"minari:{dataset_id}"
    obs, act, rew, term, tout = [], [], [], [], []
    for ep in episodes:
        if isinstance(ep.observations, dict) or isinstance(ep.actions, dict):
            raise BenchError(f"dataset {source} has dict observations or actions; needs flat (Box) spaces")
        o = as_numbers(ep.observations, "observations", source)
        obs.append(o[:-1])
        act.append(as_numbers(ep.actions, "actions", source))
        rew.append(as_numbers(ep.rewards, "rewards", source))
        t = np.asarray(ep.terminations, bool)
        tr = np.asarray(ep.truncations, bool).copy()
        tr[-1] |= not t[-1]
        term.append(t)
        tout.append(tr)
    if not obs:
        raise BenchError(f"dataset {source} has no episodes")
    return TransitionDataset(np.concatenate(obs), np.concatenate(act), np.concatenate(rew), np.concatenate(term),
                             np.concatenate(tout), source=source)


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
    if not builtin_needs_making(path, task_name, True, force, log):
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
    write_d4rl_hdf5(path, ds, cat["next"].astype(np.float32), attrs,
                    sidecar=dict(attrs, checksum=ds.checksum, n_transitions=n_transitions))
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
        remove_stale_temp_files(path.parent)
        if builtin_state(path) != "complete":
            if not make_missing:
                raise missing_builtin_error(path, task_name)
            make_builtin_dataset(task_name, n_transitions, seed, log=log)
        ds = load_checked_d4rl_hdf5(path, task_name)
    elif source.startswith("minari:"):
        ds = load_minari(source.removeprefix("minari:"))
    elif source and Path(source).is_dir():
        raise BenchError(f"bad data.source {source!r}: it is a directory, not a dataset file; valid: 'builtin', a "
                         f"D4RL .hdf5 path, 'minari:<id>', or a robomimic .hdf5 path (for a Minari dataset "
                         f"directory set MINARI_DATASETS_PATH to its root and use 'minari:<id>')")
    elif source.endswith((".hdf5", ".h5")):
        from envs.robomimic_data import is_robomimic_hdf5, load_robomimic_hdf5

        if is_robomimic_hdf5(source):
            ds = (task.demo_file_loader or load_robomimic_hdf5)(source, task_name, data.filter_key if data else None)
            dataset_env_kwargs(task_name, source, log)  # check now that its env can be rebuilt
        else:
            ds = load_d4rl_hdf5(source, log=log)
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
