"""Typed run configuration, composed in layers, validated and fully resolved.

The layers and their order are in `bench/presets.py`. Every layer is a flat dict of dotted keys
(`"train.n_iterations": 50`) applied by `apply_overrides`, which rejects unknown keys (naming the valid
ones) and values of the wrong type. Task-dependent values left unset (Tp, Ta, episode length) are filled
from the task last, so a saved `config.json` says exactly what ran.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from algorithms.networks import Activation
from bench.presets import HARNESS_PRESETS, preset_layers, preset_names  # noqa: F401 (re-exported)
from core.errors import BenchError
from envs.datasets import DataConfig


@dataclass
class EnvConfig:
    n_envs: int = 10
    """parallel training envs"""
    vector: Literal["sync", "async"] = "sync"
    """SyncVectorEnv is faster on few cores (MuJoCo steps are ~100 us); async for many cores"""
    max_episode_steps: int | None = None
    """episode length; None (before resolution): the task's"""
    horizon_steps: int | None = None
    """Tp, predicted chunk length; None (before resolution): the task's"""
    act_steps: int | None = None
    """Ta, executed chunk length; None (before resolution): the task's"""
    sim: Literal["mujoco", "isaacgym"] = "mujoco"
    """furniture tasks: 'isaacgym' builds the original Furniture-Bench simulator (needs isaacgym and the
    furniture-bench fork installed)"""


@dataclass
class PretrainConfig:
    """Policy architectures and their behaviour-cloning pre-training (cached by content hash). The fields
    from denoising_steps to denoised_clip are the diffusion policy's (and the MLP every other kind defaults
    to); the optimisation fields (n_updates onwards) apply to every policy kind. Each registered policy
    kind with a `Config` adds its section `pretrain.<kind>` (`pretrain_config_class`)."""

    denoising_steps: int = 20
    hidden_dims: tuple[int, ...] = (512, 512, 512)
    time_dim: int = 16
    activation: Activation = "ReLU"
    residual: bool = True
    denoised_clip: float | None = 1.0
    n_updates: int = 20_000
    """gradient steps (the original counted epochs: 3000 epochs of batch 128 on Gym)"""
    batch_size: int = 128
    lr: float = 1e-3
    lr_min: float = 1e-4
    weight_decay: float = 1e-6
    ema_decay: float = 0.995
    ema_start: int = 1000
    """updates before the EMA starts tracking (the original started at epoch 10)"""
    ema_every: int = 5
    seed: int = 0
    """pre-training seed; independent of the run seed, so all seeds fine-tune the same policy"""


_PRETRAIN_CLASSES: dict[tuple, type] = {}


def pretrain_config_class() -> type:
    """PretrainConfig with one section per registered policy kind that has a `Config` (built-in kinds
    and any plugin kind registered so far), e.g. `pretrain.gaussian.fixed_std`."""
    from algorithms.policies import policy_kind_sections

    sections = tuple(policy_kind_sections())
    if sections not in _PRETRAIN_CLASSES:
        fields = [(name, config_cls, field(default_factory=config_cls)) for name, config_cls in sections]
        _PRETRAIN_CLASSES[sections] = dataclasses.make_dataclass("PretrainConfig", fields, bases=(PretrainConfig,),
                                                                 namespace={"__module__": __name__})
    return _PRETRAIN_CLASSES[sections]


def pretrain_config(**values) -> PretrainConfig:
    return pretrain_config_class()(**values)


@dataclass
class TrainConfig:
    n_iterations: int = 100
    n_steps: int = 125
    """chunks per env per iteration (env steps per iteration = n_envs * n_steps * Ta)"""
    checkpoint_every: int = 10
    """iterations between checkpoints (the last iteration always checkpoints)"""
    max_loss: float | None = 1e10
    """divergence threshold: a run stops with an error when the absolute value of any logged loss of an
    iteration exceeds this (None: no threshold; non-finite losses, parameters and optimiser state always
    stop a run). No checkpoint of the diverged state is written: the last good one is kept."""


@dataclass
class EvalConfig:
    every: int = 10
    """evaluate every this many iterations (and before the first and after the last)"""
    n_episodes: int = 10
    n_envs: int = 10
    seed: int = 100_000
    """eval envs reset from this seed (+ run seed) each time: the same initial states at every evaluation"""


@dataclass
class LogConfig:
    """Experiment trackers, beside metrics.csv and eval.csv (the source of truth; bench/trackers.py). Not part
    of what a run computes: a resumed run may change them."""

    tensorboard: bool = True
    """TensorBoard event files in <run_dir>/tensorboard; needs the tensorboard package (pip install
    'dppo-bench[tb]'): without it, off with one info line"""
    wandb: bool = False
    """Weights & Biases run in <run_dir>/wandb; needs the wandb package (pip install 'dppo-bench[wandb]')"""
    wandb_mode: Literal["offline", "online"] = "offline"
    """offline: local files only (upload later with `wandb sync`); online: needs `wandb login`"""
    wandb_project: str = "dppo-bench"
    """the W&B project; runs are named <task>/<algo>/seed<k> and grouped by <task>/<algo>"""


@dataclass
class RunConfig:
    task: str = "hopper"
    algorithm: str = "dppo"
    policy_kind: str | None = None
    """the pre-trained policy's kind (algorithms/policies.py), e.g. diffusion_unet for DPPO or a diffusion
    baseline; None: the algorithm's own. It must build what the algorithm starts from."""
    seed: int = 0
    preset: str = "small"
    device: str = "cpu"
    """'cpu', 'cuda', 'cuda:N' or 'auto'"""
    torch_threads: int = 0
    """0: leave torch's default"""
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=pretrain_config)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    algo: Any = None
    """the algorithm's own hyperparameter dataclass"""


# ---------------------------------------------------------------------------------------------------
# Overrides: dotted keys, type-checked against the dataclass annotations.


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _hints(obj) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def valid_keys(cfg) -> list[str]:
    keys = []
    for name in _fields(cfg):
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            keys += [f"{name}.{k}" for k in valid_keys(value)]
        else:
            keys.append(name)
    return keys


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (a Python value or a string from the command line) to the annotated type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except BenchError as e:
                errors.append(str(e))
        raise BenchError(errors[0] if errors else f"bad value {value!r} for {key}")
    if origin is Literal:
        if value not in args:
            raise BenchError(f"bad value {value!r} for {key}; valid values: {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise BenchError(f"bad value {value!r} for {key}; expected a comma-separated list")
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, args[0], key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise BenchError(f"bad value {value!r} for {key}; expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise BenchError(f"bad value {value!r} for {key}; expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise BenchError(f"bad value {value!r} for {key}; expected an integer") from None
            if f.is_integer():
                return int(f)
        raise BenchError(f"bad value {value!r} for {key}; expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise BenchError(f"bad value {value!r} for {key}; expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise BenchError(f"bad value {value!r} for {key}; expected a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise BenchError(f"bad value {value!r} for {key}; expected a string")
        return value
    if tp is Any:
        return value
    raise BenchError(f"cannot set {key} of type {tp}")


def apply_overrides(cfg, overrides: dict[str, Any], source: str = "override") -> None:
    """Set dotted keys in place; an unknown key or a bad value is a BenchError naming the valid keys."""
    for key, value in overrides.items():
        obj, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            fields = _fields(obj) if dataclasses.is_dataclass(obj) else {}
            if part not in fields:
                where = ".".join(parts[:i]) or "the config"
                choices = ", ".join(valid_keys(obj)) if dataclasses.is_dataclass(obj) else ""
                raise BenchError(f"unknown config key {key!r} ({source}); valid keys in {where}: {choices}")
            if i == len(parts) - 1:
                if dataclasses.is_dataclass(getattr(obj, part)):
                    raise BenchError(f"config key {key!r} is a section; set one of its keys, e.g. "
                                     f"{key}.{valid_keys(getattr(obj, part))[0]}")
                setattr(obj, part, _coerce(value, _hints(obj)[part], key))
            else:
                obj = getattr(obj, part)


def parse_set_options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"malformed --set {item!r}; expected key=value, e.g. --set train.n_iterations=50")
        out[key.strip()] = value.strip()
    return out


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_run_config(task: str, algorithm: str, seed: int = 0, preset: str = "small",
                     overrides: dict[str, Any] | None = None) -> RunConfig:
    """Compose a validated, fully resolved RunConfig for (task, algorithm, preset) plus overrides."""
    from algorithms.registry import get_algorithm
    from envs.tasks import get_task

    spec = get_task(task)
    algo_cls = get_algorithm(algorithm)
    if preset not in HARNESS_PRESETS:
        raise BenchError(f"unknown preset {preset!r}; valid presets: {', '.join(HARNESS_PRESETS)}")
    fixed = {"task", "algorithm", "seed", "preset"} & set(overrides or {})
    if fixed:
        raise BenchError(f"--set cannot change {', '.join(sorted(fixed))}; use the --task/--algo/--seed/--preset options")
    cfg = RunConfig(task=task, algorithm=algorithm, seed=seed, preset=preset, algo=algo_cls.Config())
    for source, layer in preset_layers(task, spec.suite, algorithm, algo_cls, preset) + [("--set", overrides or {})]:
        apply_overrides(cfg, layer, source)
    resolve_task_values(cfg, spec)
    if cfg.policy_kind is None:  # resolved: config.json names the kind the run pre-trains
        cfg.policy_kind = algo_cls.policy_kind
    validate(cfg, spec)
    if cfg.log.wandb:  # a tracker that cannot start stops the run before any work, not after pre-training
        from bench.trackers import check_wandb_installed

        check_wandb_installed()
    if cfg.env.sim == "isaacgym":  # before any data or pre-training is made for a run that cannot start
        from envs.furniture_isaacgym import check_installed

        check_installed()
    return cfg


def resolve_task_values(cfg: RunConfig, spec) -> None:
    """Fill the env values left to the task (None) from its TaskSpec, and check them."""
    env = cfg.env
    if env.horizon_steps is None:
        env.horizon_steps = spec.horizon_steps
    if env.act_steps is None:
        env.act_steps = spec.act_steps
    if env.max_episode_steps is None:
        env.max_episode_steps = spec.max_episode_steps
    for key in ("horizon_steps", "act_steps", "max_episode_steps"):
        if getattr(env, key) < 1:
            raise BenchError(f"env.{key} must be >= 1, got {getattr(env, key)}")
    if env.act_steps > env.horizon_steps:
        raise BenchError(f"env.act_steps ({env.act_steps}) cannot exceed env.horizon_steps ({env.horizon_steps})")


# ---------------------------------------------------------------------------------------------------
# Validation: the value rules of a composed config, in one place (`validate`, called by
# build_run_config and run_config_from_dict before anything is made, pre-trained or written).

AT_LEAST_1 = ("env.n_envs", "eval.n_envs", "eval.n_episodes", "eval.every", "train.n_iterations", "train.n_steps",
              "train.checkpoint_every", "pretrain.denoising_steps", "pretrain.batch_size", "pretrain.time_dim",
              "pretrain.ema_every", "data.n_transitions", "data.n_demos")
"""integer keys that must be >= 1 (env.horizon_steps, env.act_steps, env.max_episode_steps: resolve_task_values)"""
AT_LEAST_0 = ("seed", "torch_threads", "eval.seed", "data.seed", "pretrain.seed", "pretrain.n_updates",
              "pretrain.ema_start")
"""integer keys that must be >= 0 (torch_threads 0: torch's default; pretrain.n_updates 0: an untrained policy)"""


WANDB_PROJECT_BAD = "/\\#?%:"
"""characters W&B refuses in a project name"""


def _is_lr(name: str) -> bool:
    return name == "lr" or name.endswith("_lr") or name == "lr_min" or name.endswith("_lr_min")


def validate(cfg: RunConfig, spec=None) -> None:
    """Raise a one-line BenchError for the first value no run can use. The rules:

    - the keys in AT_LEAST_1 are >= 1, those in AT_LEAST_0 >= 0; pretrain.hidden_dims entries >= 1;
    - no number anywhere in the config is NaN;
    - learning rates, every field (any section) named `lr`, `*_lr`, `lr_min` or `*_lr_min`, are finite and
      >= 0 (0 freezes what that optimiser trains; a cosine schedule may decay to lr_min = 0);
    - every field named `*weight_decay` is finite and >= 0, every `*batch_size` >= 1;
    - pretrain.ema_decay is in [0, 1]; pretrain.denoised_clip is None or > 0;
    - train.max_loss is None or > 0;
    - env.sim other than mujoco only for furniture tasks;
    - log.wandb_project is a W&B project name: not empty, none of the characters in WANDB_PROJECT_BAD;
    - the chain a fine-tuned denoising algorithm uses (a config with `ft_denoising_steps`): with
      `use_ddim`, 1 <= ddim_steps <= K = pretrain.denoising_steps and ddim_steps divides K; then
      1 <= ft_denoising_steps <= the chain's length (ddim_steps with DDIM, else K);
    - `policy_kind` (if set) builds what the algorithm starts from, and env.horizon_steps fits its architecture;
    - then the algorithm's own `check_config`.
    """
    from algorithms.policies import get_policy_kind, policy_kind_of_run
    from algorithms.registry import get_algorithm
    from envs.tasks import get_task

    spec = spec or get_task(cfg.task)
    flat = {}
    _collect(cfg, "", flat)
    for key in AT_LEAST_1:
        if flat[key] < 1:
            raise BenchError(f"{key} must be >= 1, got {flat[key]}")
    for key in AT_LEAST_0:
        if flat[key] < 0:
            raise BenchError(f"{key} must be >= 0, got {flat[key]}")
    for key, value in flat.items():
        name = key.rpartition(".")[2]
        if isinstance(value, float) and math.isnan(value):
            raise BenchError(f"{key} is nan; give a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if _is_lr(name) and not (math.isfinite(value) and value >= 0):
            raise BenchError(f"learning rate {key} must be a finite number >= 0 (0 freezes), got {value}")
        if name.endswith("weight_decay") and not (math.isfinite(value) and value >= 0):
            raise BenchError(f"{key} must be a finite number >= 0, got {value}")
        if name.endswith("batch_size") and value < 1:
            raise BenchError(f"{key} must be >= 1, got {value}")
    if any(d < 1 for d in cfg.pretrain.hidden_dims):
        raise BenchError(f"pretrain.hidden_dims must be positive, got {list(cfg.pretrain.hidden_dims)}")
    if not 0 <= cfg.pretrain.ema_decay <= 1:
        raise BenchError(f"pretrain.ema_decay must be in [0, 1], got {cfg.pretrain.ema_decay}")
    if cfg.pretrain.denoised_clip is not None and not cfg.pretrain.denoised_clip > 0:
        raise BenchError(f"pretrain.denoised_clip must be > 0 or none, got {cfg.pretrain.denoised_clip}")
    if cfg.train.max_loss is not None and not cfg.train.max_loss > 0:
        raise BenchError(f"train.max_loss must be > 0 or none (no threshold), got {cfg.train.max_loss}")
    if cfg.env.sim != "mujoco" and spec.suite != "furniture":
        raise BenchError(f"env.sim={cfg.env.sim} is only for furniture tasks; task {cfg.task!r} is a {spec.suite} task")
    project = cfg.log.wandb_project
    if not project.strip() or any(c in project for c in WANDB_PROJECT_BAD):
        raise BenchError(f"log.wandb_project must be a W&B project name: not empty and none of "
                         f"{' '.join(WANDB_PROJECT_BAD)}, got {project!r}")
    _check_denoising_chain(cfg)
    get_policy_kind(policy_kind_of_run(cfg)).check_horizon(cfg.pretrain, cfg.env.horizon_steps)
    get_algorithm(cfg.algorithm).check_config(cfg.algo)


def _collect(obj, prefix: str, out: dict) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _collect(value, f"{prefix}{f.name}.", out)
        else:
            out[prefix + f.name] = value


def _check_denoising_chain(cfg: RunConfig) -> None:
    algo = cfg.algo
    n_ft = getattr(algo, "ft_denoising_steps", None)
    if n_ft is None or isinstance(n_ft, bool) or not isinstance(n_ft, int):
        return
    K = cfg.pretrain.denoising_steps
    n_chain, what = K, f"pretrain.denoising_steps = {K}"
    if getattr(algo, "use_ddim", False) is True and isinstance(getattr(algo, "ddim_steps", None), int):
        S = algo.ddim_steps
        if not 1 <= S <= K or K % S:
            divisors = [d for d in range(1, K + 1) if K % d == 0]
            raise BenchError(f"algo.ddim_steps must divide pretrain.denoising_steps ({K}) with use_ddim, got {S}; "
                             f"valid: {', '.join(map(str, divisors))}")
        n_chain, what = S, f"algo.ddim_steps = {S} (use_ddim)"
    if not 1 <= n_ft <= n_chain:
        raise BenchError(f"algo.ft_denoising_steps must be in 1..{n_chain}, the length of the denoising chain "
                         f"({what}), got {n_ft}")


def run_config_from_dict(d: dict) -> RunConfig:
    """Rebuild a saved (resolved) config; the same validation applies."""
    from algorithms.registry import get_algorithm

    from envs.tasks import get_task

    cfg = RunConfig(algo=get_algorithm(d["algorithm"]).Config())
    apply_overrides(cfg, flatten(d), "saved config")
    spec = get_task(cfg.task)
    resolve_task_values(cfg, spec)  # configs saved before resolution have None there
    validate(cfg, spec)
    return cfg
