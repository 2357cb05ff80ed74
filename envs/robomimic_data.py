"""Robomimic hdf5 datasets: the file layout (write and read), loading into a `TransitionDataset`, and the
built-in datasets rolled out by the scripted experts (`envs.experts`).

Layout (robomimic's `low_dim.hdf5`, exactly what `robomimic.utils.file_utils` reads):

    data                      attrs: env_args (JSON: env_name, env_version, type=1, env_kwargs), total
    data/demo_<i>             attrs: num_samples
        actions (T, A), rewards (T,), dones (T,), states (T, S) (MuJoCo `sim.get_state().flatten()`)
        obs/<key> (T, d), next_obs/<key> (T, d)      robomimic observation keys ("object" = object-state)
    mask/<filter key>         array of demo names (bytes), e.g. train, valid; better, okay, worse (mh)

Loading concatenates the task's observation keys in order. robosuite episodes never terminate (DPPO
sets terminals to False; robomimic's `dones` only marks a demo's last step), so every demo ends with
a timeout. Without a filter key all demos are used, as DPPO's processing did.

Built-in data mirrors how robomimic's data was collected: a demo ends once the task has been solved for
`SUCCESS_HOLD` consecutive steps (robosuite's demo-collection script), only successful demos are kept
(as in robomimic's datasets), and the expert's success rate goes into the log and the file's attrs.
"mh" mixes six operators of three tiers (masks `better`, `okay`, `worse`), "ph" one proficient one.
Demo i depends only on (seed, i), so the file is the same for any number of worker processes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import BenchError
from core.atomic import atomic_path, atomic_write_json
from core.paths import cache_root
from envs.transitions import (TransitionDataset, as_numbers, builtin_needs_making, remake_hint, sidecar_path,
                              verify_builtin)

DATA_VERSION = 1
SUCCESS_HOLD = 10  # steps the task must stay solved before a demo ends (robosuite's collection script)
VALID_FRACTION = 0.1  # robomimic's train/valid split
EXPERT_DIR = Path(__file__).parent / "experts"


# ---------------------------------------------------------------------------------------------------
# The file layout


@dataclass
class Demo:
    obs: dict[str, np.ndarray]  # key -> (T + 1, d): the T observations and the one after the last action
    actions: np.ndarray  # (T, A)
    rewards: np.ndarray  # (T,)
    states: np.ndarray  # (T, S) MuJoCo state before each action
    label: str = ""  # operator tier for mh masks ("better" | "okay" | "worse"), "" otherwise

    def __len__(self) -> int:
        return len(self.actions)


def write_robomimic_hdf5(path: Path, demos: list[Demo], env_args: dict, masks: dict[str, list[str]],
                         attrs: dict | None = None, sidecar: dict | None = None) -> None:
    """Write demos as data/demo_0..demo_{n-1} in robomimic's layout, atomically. With `sidecar`, that dict
    is written as the file's `.json` checksum sidecar first, and the data file renamed into place after it
    (see `envs.transitions`)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", locking=False) as f:
            data = f.create_group("data")
            for i, demo in enumerate(demos):
                g = data.create_group(f"demo_{i}")
                g.attrs["num_samples"] = len(demo)
                for key, value in demo.obs.items():
                    g.create_dataset(f"obs/{key}", data=value[:-1])
                    g.create_dataset(f"next_obs/{key}", data=value[1:])
                dones = np.zeros(len(demo), np.int64)
                dones[-1] = 1
                for name, value in (("actions", demo.actions), ("rewards", demo.rewards), ("dones", dones),
                                    ("states", demo.states)):
                    g.create_dataset(name, data=value)
            data.attrs["total"] = sum(len(d) for d in demos)
            data.attrs["env_args"] = json.dumps(env_args)
            for key, names in masks.items():
                f.create_dataset(f"mask/{key}", data=np.array(names, dtype="S") if names else np.zeros(0, "S1"))
            for key, value in (attrs or {}).items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        if sidecar is not None:
            atomic_write_json(sidecar_path(path), sidecar)


def is_robomimic_hdf5(path: str | Path) -> bool:
    """A readable hdf5 file with robomimic's `data` group (False for D4RL files and non-hdf5 files)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("data"), h5py.Group)
    except OSError:
        return False


def _sorted_demos(names) -> list[str]:
    return sorted((n for n in names if n.startswith("demo_")), key=lambda n: int(n[5:]))


def read_robomimic_hdf5(path: str | Path, obs_keys: tuple[str, ...], filter_key: str | None = None):
    """(per-demo observations (T, obs_dim) with `obs_keys` concatenated, actions, rewards, env_args, demo
    names). Missing keys, an unknown filter key or a damaged file are a one-line BenchError."""
    import h5py

    path = Path(path)
    if path.is_dir():
        raise BenchError(f"dataset {path} is a directory, not an hdf5 file")
    if not path.is_file():
        raise BenchError(f"dataset file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise BenchError(f"{path} is not a robomimic dataset: no 'data' group")
            if filter_key is None:
                names = _sorted_demos(data.keys())
            else:
                masks = f.get("mask")
                available = sorted(masks.keys()) if isinstance(masks, h5py.Group) else []
                if filter_key not in available:
                    raise BenchError(f"filter key {filter_key!r} is not in {path}; valid: "
                                     f"{', '.join(available) or 'none (the file has no masks)'}")
                names = _sorted_demos(n.decode() if isinstance(n, bytes) else str(n) for n in masks[filter_key][()])
            if not names:
                raise BenchError(f"{path} has no demos{f' in filter key {filter_key!r}' if filter_key else ''}")
            env_args = _parse_env_args(data.attrs.get("env_args"), path)
            obs, actions, rewards = [], [], []
            for name in names:
                g = data.get(name)
                if not isinstance(g, h5py.Group):
                    raise BenchError(f"{path}: demo {name!r} named in mask/{filter_key} is missing")
                have = sorted(g["obs"].keys()) if isinstance(g.get("obs"), h5py.Group) else []
                missing = [k for k in obs_keys if k not in have]
                if missing or "actions" not in g:
                    what = f"observation keys {', '.join(missing)}" if missing else "actions"
                    raise BenchError(f"{path}: data/{name} lacks {what}; needs obs keys {', '.join(obs_keys)} "
                                     f"(has {', '.join(have) or 'none'})")
                o, a, r = demo_arrays({k: g["obs"][k][()] for k in obs_keys}, g["actions"][()],
                                      g["rewards"][()] if "rewards" in g else None, obs_keys, f"{path}: data/{name}")
                obs.append(o)
                actions.append(a)
                rewards.append(r)
    except OSError as e:
        raise BenchError(f"cannot read dataset {path}: corrupt or not hdf5 ({str(e).splitlines()[0]})") from None
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise BenchError(f"{path} is not a valid robomimic dataset: corrupt or incomplete "
                         f"({str(e).splitlines()[0]})") from None
    return obs, actions, rewards, env_args, names


def demo_arrays(obs: dict, actions, rewards, obs_keys, where) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One demo's (observations with `obs_keys` concatenated, actions, rewards) as float32, as the loader
    reads them (`obs[k]` holds the T observations before each action); text values are a BenchError."""
    actions = as_numbers(actions, "actions", where)
    parts = [as_numbers(obs[k], f"obs/{k}", where).reshape(len(actions), -1) for k in obs_keys]
    rewards = (as_numbers(rewards, "rewards", where).reshape(-1) if rewards is not None
               else np.zeros(len(actions), np.float32))
    return np.concatenate(parts, 1), actions, rewards


def demos_checksum(demos: list[Demo], obs_keys) -> str:
    """The checksum of the dataset the loader reads from a file of these demos (all of them)."""
    arrays = [demo_arrays({k: d.obs[k][:-1] for k in obs_keys}, d.actions, d.rewards, obs_keys, "demos")
              for d in demos]
    return to_transition_dataset(*zip(*arrays), source="demos").checksum


def _parse_env_args(raw, path) -> dict:
    if raw is None:
        raise BenchError(f"{path} is not a robomimic dataset: data has no env_args attribute")
    try:
        env_args = json.loads(raw)
    except (TypeError, ValueError):
        raise BenchError(f"{path}: data.attrs['env_args'] is not valid JSON") from None
    if not isinstance(env_args, dict) or "env_name" not in env_args:
        raise BenchError(f"{path}: data.attrs['env_args'] has no env_name")
    return env_args


def to_transition_dataset(obs, actions, rewards, source: str) -> TransitionDataset:
    lengths = np.array([len(a) for a in actions])
    timeouts = np.zeros(lengths.sum(), bool)
    timeouts[np.cumsum(lengths) - 1] = True
    return TransitionDataset(np.concatenate(obs), np.concatenate(actions), np.concatenate(rewards),
                             np.zeros(lengths.sum(), bool), timeouts, source=source)


def check_env_args(env_args: dict, task_name: str, path) -> None:
    """The file's env must be the task's env (robosuite, same env name)."""
    from envs.tasks import get_task

    task = get_task(task_name)
    if env_args.get("type", 1) != 1:
        raise BenchError(f"{path} was recorded in a non-robosuite env (env_args type {env_args.get('type')}); "
                         f"task {task_name!r} needs robosuite {task.env_id}")
    if env_args["env_name"] != task.env_id:
        from envs.tasks import list_tasks

        match = [t.name for t in list_tasks() if t.env_id == env_args["env_name"]]
        hint = f" (that is task {match[0]!r})" if match else ""
        raise BenchError(f"{path} holds {env_args['env_name']} demos{hint}, not {task.env_id} demos for task "
                         f"{task_name!r}")


def load_robomimic_hdf5(path: str | Path, task_name: str, filter_key: str | None = None) -> TransitionDataset:
    """A robomimic file as a checked dataset for `task_name` (its env, observation keys and dims)."""
    from envs.robosuite_env import ROBOSUITE_ENVS, obs_keys
    from envs.tasks import get_task, list_tasks

    task = get_task(task_name)
    if task.env_id not in ROBOSUITE_ENVS:
        valid = [t.name for t in list_tasks() if t.env_id in ROBOSUITE_ENVS]
        raise BenchError(f"{path} is a robomimic dataset but task {task_name!r} is not a robomimic task "
                         f"({', '.join(valid)})")
    obs, actions, rewards, env_args, _ = read_robomimic_hdf5(path, obs_keys(task.env_id), filter_key)
    check_env_args(env_args, task_name, path)
    source = str(path) + (f"[mask/{filter_key}]" if filter_key else "")
    ds = to_transition_dataset(obs, actions, rewards, source)
    ds.check_dims(task.obs_dim, task.act_dim, task_name)
    return ds


# Keys robosuite's part-controller factory reads unconditionally (or, ramp_ratio, with linear
# interpolation), at the values of robosuite's shipped default configs (controllers/config/default/parts):
# robosuite 1.4-era configs recorded in robomimic files may lack them.
PART_CONTROLLER_DEFAULTS = {"interpolation": None, "ramp_ratio": 0.2}


def default_controller_keys(controller_configs) -> list[str]:
    """Fill, in place, the keys of `PART_CONTROLLER_DEFAULTS` missing from each body part of a composite
    controller config (`{"body_parts": {"right": {...}}}`, as `convert_env_kwargs` returns it); returns
    the names filled in (sorted). Anything that is not such a config is left alone."""
    parts = controller_configs.get("body_parts") if isinstance(controller_configs, dict) else None
    filled: set[str] = set()
    for part in (parts or {}).values():
        if not isinstance(part, dict) or "type" not in part:
            continue
        if "interpolation" not in part:
            part["interpolation"] = PART_CONTROLLER_DEFAULTS["interpolation"]
            filled.add("interpolation")
        if part.get("interpolation") == "linear" and "ramp_ratio" not in part:
            part["ramp_ratio"] = PART_CONTROLLER_DEFAULTS["ramp_ratio"]
            filled.add("ramp_ratio")
    return sorted(filled)


def env_kwargs_from_file(path: str | Path, task_name: str, log=None) -> dict:
    """robosuite kwargs that rebuild the env a robomimic file was recorded in (robosuite 1.4 controller
    configs converted to 1.5, with `interpolation` / `ramp_ratio` defaulted where a config lacks them;
    kwargs robosuite 1.5 does not accept are dropped; both named in the log)."""
    import h5py

    from envs.robosuite_env import convert_env_kwargs, import_robosuite
    from envs.tasks import get_task

    try:
        with h5py.File(path, "r") as f:
            env_args = _parse_env_args(f["data"].attrs.get("env_args"), path)
    except (OSError, KeyError):
        raise BenchError(f"cannot read env_args from {path}: the robomimic dataset is needed to rebuild its "
                         f"env; missing, corrupt or not a robomimic file") from None
    check_env_args(env_args, task_name, path)
    kwargs = convert_env_kwargs(env_args.get("env_kwargs") or {})
    defaulted = default_controller_keys(kwargs.get("controller_configs"))
    if defaulted and log:
        log(f"{path}: the controller config lacks {', '.join(defaulted)}; using robosuite's defaults "
            f"({', '.join(f'{k}={PART_CONTROLLER_DEFAULTS[k]}' for k in defaulted)})")
    env_class = import_robosuite().environments.base.REGISTERED_ENVS[get_task(task_name).env_id]
    accepted = {p for cls in env_class.__mro__ if "__init__" in vars(cls)
                for p in inspect.signature(cls.__init__).parameters}
    dropped = sorted(k for k in kwargs if k not in accepted)
    if dropped and log:
        log(f"{path}: ignoring env_kwargs robosuite {import_robosuite().__version__} does not accept: "
            f"{', '.join(dropped)}")
    return {k: v for k, v in kwargs.items() if k in accepted}


# ---------------------------------------------------------------------------------------------------
# Built-in datasets: scripted-expert demonstrations


def _env_args(task_name: str) -> dict:
    from envs.robosuite_env import default_env_kwargs, import_robosuite
    from envs.tasks import get_task

    env_id = get_task(task_name).env_id
    return {"env_name": env_id, "env_version": import_robosuite().__version__, "type": 1,
            "env_kwargs": default_env_kwargs(env_id)}


def expert_tag(task_name: str) -> str:
    """Hash of the data version and the source of the task's expert (its module and the shared ones):
    a changed script makes a new dataset."""
    from envs.experts import EXPERTS

    module = EXPERTS[task_name].split(":")[0].rsplit(".", 1)[-1]
    if not (EXPERT_DIR / f"{module}.py").exists():
        raise BenchError(f"no scripted expert for task {task_name!r} (envs/experts/{module}.py): its built-in "
                         f"dataset cannot be made; give a robomimic file with --set data.source=PATH.hdf5")
    h = hashlib.sha256(f"v{DATA_VERSION}".encode())
    for name in ("__init__", "common", module):
        h.update((EXPERT_DIR / f"{name}.py").read_bytes())
    return h.hexdigest()[:8]


def builtin_path(task_name: str, n_demos: int, quality: str, seed: int) -> Path:
    tag = expert_tag(task_name)
    return cache_root() / "data" / task_name / f"{quality}-{n_demos}demos-seed{seed}-{tag}.hdf5"


_WORKER: dict = {}  # per process: the env demos are rolled out in


def _worker_env(task_name: str):
    from envs.tasks import get_task

    if _WORKER.get("task") != task_name:
        task = get_task(task_name)
        _WORKER.update(task=task_name, env=task.make_env(task.env_id, task.max_episode_steps))
    return _WORKER["env"]


def rollout_demo(task_name: str, seed: int, index: int, quality: str) -> tuple[Demo, bool]:
    """Demo `index` of a dataset: the env reset and the operator drawn from (seed, index) only."""
    from envs.experts import make_expert, sample_style

    env = _worker_env(task_name)
    rng = np.random.default_rng([seed, index])
    env.reset(seed=int(rng.integers(2**31)))
    style = sample_style(quality, rng)
    expert = make_expert(task_name, env.robosuite_env, rng, style)
    keys = env.obs_keys
    obs = {k: [env.raw_obs["object-state" if k == "object" else k]] for k in keys}
    actions, rewards, states = [], [], []
    low, high = env.action_space.low, env.action_space.high
    held = 0
    while len(actions) < env.max_episode_steps and held < SUCCESS_HOLD:
        states.append(env.robosuite_env.sim.get_state().flatten())
        action = np.clip(expert.act(env.raw_obs), low, high)
        _, reward, _, _, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        for k in keys:
            obs[k].append(env.raw_obs["object-state" if k == "object" else k])
        held = held + 1 if info["success"] else 0
    label = style.tier if style.tier in ("better", "okay", "worse") else ""
    demo = Demo({k: np.array(v) for k, v in obs.items()}, np.array(actions), np.array(rewards, np.float64),
                np.array(states), label)
    return demo, held >= SUCCESS_HOLD


def _rollout_job(args):
    return args[0](*args[1:])


def make_expert_demos(task_name: str, n_demos: int, quality: str, seed: int, n_workers: int | None = None,
                      log=print, rollout=rollout_demo) -> tuple[list[Demo], int, int]:
    """The first `n_demos` successful demos by index, how many attempts that took, and their env steps.
    `rollout(task_name, seed, index, quality) -> (Demo, success)` makes one (a module-level function).

    Demos are rolled out in `n_workers` processes (default: one per core; in-process for a few demos),
    in rounds sized by the success rate so far. Which demos are kept does not depend on the rounds."""
    import multiprocessing

    workers = n_workers or (1 if n_demos < 8 else min(os.cpu_count() or 1, 8))
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    kept: list[Demo] = []
    attempts, env_steps, t0, last_log = 0, 0, time.time(), time.time()
    try:
        while len(kept) < n_demos:
            rate = len(kept) / attempts if attempts else 1.0
            if attempts >= 20 and rate < 0.05:
                raise BenchError(f"the {task_name} expert succeeded in {len(kept)} of {attempts} demos; "
                                 f"cannot make {n_demos} successful demos")
            batch = max(workers, int(np.ceil((n_demos - len(kept)) / max(rate, 0.05) * 1.1)))
            jobs = [(rollout, task_name, seed, attempts + i, quality) for i in range(batch)]
            for demo, success in (pool.imap(_rollout_job, jobs) if pool else map(_rollout_job, jobs)):
                attempts += 1
                env_steps += len(demo)
                kept += [demo] if success else []
                if len(kept) == n_demos:
                    break
                if time.time() - last_log > 30:
                    log(f"{task_name}: {len(kept)}/{n_demos} demos after {attempts} attempts, {time.time() - t0:.0f} s")
                    last_log = time.time()
    finally:
        if pool:
            pool.terminate()
    return kept, attempts, env_steps


def robomimic_masks(demos: list[Demo], seed: int) -> dict[str, list[str]]:
    """train/valid (10% valid, seeded), and the mh operator tiers, as robomimic's files have. `train` and
    `valid` are always written, as robomimic's `split_train_val_from_hdf5` does: with few demos (fewer
    than 5) `valid` is an empty mask, and `filter_key=valid` is then a one-line error."""
    names = [f"demo_{i}" for i in range(len(demos))]
    n_valid = round(VALID_FRACTION * len(names))
    valid = set(np.random.default_rng(seed).permutation(len(names))[:n_valid].tolist())
    masks = {"train": [n for i, n in enumerate(names) if i not in valid],
             "valid": [n for i, n in enumerate(names) if i in valid]}
    for tier in ("better", "okay", "worse"):
        tier_names = [n for n, d in zip(names, demos) if d.label == tier]
        if tier_names:
            masks[tier] = tier_names
    return {k: v for k, v in masks.items() if v or k in ("train", "valid")}


@dataclass(frozen=True)
class DemoSuite:
    """How a suite's built-in demo files are named, rolled out, described and loaded."""

    path: Callable  # (task_name, n_demos, quality, seed) -> Path
    rollout: Callable  # module-level (task_name, seed, index, quality) -> (Demo, success)
    env_args: Callable  # task_name -> the file's env_args
    load: Callable  # (path, task_name, filter_key=None) -> TransitionDataset
    obs_keys: Callable | None = None  # task_name -> the observation keys `load` concatenates, in order


def make_builtin_demos(suite: DemoSuite, task_name: str, n_demos: int, quality: str, seed: int, log=print,
                       n_workers: int | None = None) -> Path:
    """Roll out the scripted expert into a robomimic-layout file with a checksum sidecar."""
    path = suite.path(task_name, n_demos, quality, seed)
    tag = path.stem.rsplit("-", 1)[-1]  # the experts' source as the run started
    t0 = time.time()
    demos, attempts, env_steps = make_expert_demos(task_name, n_demos, quality, seed, n_workers, log, suite.rollout)
    wall = time.time() - t0
    lengths = np.array([len(d) for d in demos])
    attrs = {"task": task_name, "quality": quality, "seed": seed, "n_demos": n_demos, "attempts": attempts,
             "expert_success_rate": n_demos / attempts, "expert_tag": tag, "data_version": DATA_VERSION,
             "mean_length": float(lengths.mean())}
    # the sidecar's checksum from the demos in memory, so the sidecar is written before the data file
    # (the data is verified against it when loaded below and on every later use)
    meta = dict(attrs, n_transitions=int(lengths.sum()), env_steps=env_steps, wall_s=wall)
    masks = robomimic_masks(demos, seed)
    if suite.obs_keys is not None:
        sidecar = dict(meta, checksum=demos_checksum(demos, suite.obs_keys(task_name)))
        write_robomimic_hdf5(path, demos, suite.env_args(task_name), masks, attrs, sidecar)
        verify_builtin(suite.load(path, task_name), path, task_name)
    else:  # a suite that does not name its keys: checksum the written file (a kill before the sidecar
        # leaves an incomplete dataset, made again on next use)
        write_robomimic_hdf5(path, demos, suite.env_args(task_name), masks, attrs)
        atomic_write_json(sidecar_path(path), dict(meta, checksum=suite.load(path, task_name).checksum))
    log(f"wrote {path}: {n_demos} successful demos of {attempts} attempts (expert success rate "
        f"{n_demos / attempts:.0%}), {lengths.sum()} transitions, mean length {lengths.mean():.0f}, "
        f"in {wall:.0f} s ({n_demos / wall:.2f} demos/s; {env_steps} env steps, {env_steps / wall:.0f}/s)")
    return path


def builtin_demo_dataset(suite: DemoSuite, task_name: str, data, make_missing: bool, log,
                         force: bool = False) -> TransitionDataset:
    """A TaskSpec.builtin_dataset hook: made on first use (or with `force`), checksum-verified, then
    filtered by `data.filter_key`."""
    if data.n_demos < 1:
        raise BenchError(f"data.n_demos must be positive, got {data.n_demos}")
    path = suite.path(task_name, data.n_demos, data.demo_quality, data.seed)
    if builtin_needs_making(path, task_name, make_missing, force, log):
        make_builtin_demos(suite, task_name, data.n_demos, data.demo_quality, data.seed, log)
    try:
        ds = verify_builtin(suite.load(path, task_name), path, task_name)
    except BenchError as e:
        msg = str(e)
        raise BenchError(msg if "--force" in msg else f"{msg}; {remake_hint(task_name)}") from None
    return suite.load(path, task_name, data.filter_key) if data.filter_key else ds


def _obs_keys(task_name: str) -> tuple[str, ...]:
    from envs.robosuite_env import obs_keys
    from envs.tasks import get_task

    return tuple(obs_keys(get_task(task_name).env_id))


ROBOMIMIC = DemoSuite(builtin_path, rollout_demo, _env_args, load_robomimic_hdf5, _obs_keys)

