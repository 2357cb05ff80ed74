"""Task and suite registry: what a task is (dims, horizon, chunking, reference scores) and how to build
its envs.

A suite is one module that, when imported, registers its tasks with `register_task` (and, for a suite
the harness's preset tables do not know, its config layers with `register_suite`). Built-in suites are
the modules `envs/<name>_tasks.py`, imported the first time a task is looked up; third-party suites register through the entry-point group
`dppo_bench.tasks` (`<suite name> = "package.module"`), imported the first time tasks are listed or a task
is not found among the loaded ones. The harness only ever looks tasks up by name.
docs/adding-a-task.md has a complete example.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from core.errors import BenchError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    suite: str  # "gym" | "robomimic" | "furniture" | "toy" | a plugin suite; selects suite-level defaults
    env_id: str  # what the suite's env factory builds
    obs_dim: int
    act_dim: int
    max_episode_steps: int
    horizon_steps: int = 4  # Tp, predicted chunk length
    act_steps: int = 4  # Ta, executed chunk length
    # Normalised score = 100 * (return - random) / (expert - random) (D4RL convention)
    ref_random_return: float | None = None
    ref_expert_return: float | None = None
    metric: str = "return"  # headline metric: "return" (Gym) or "success_rate"
    make_env: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    # (task_name, data: DataConfig, make_missing: bool, log) -> TransitionDataset for data.source ==
    # "builtin"; None: roll out the shipped behaviour policy (Gym tasks).
    builtin_dataset: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    # (path, task_name, filter_key) -> TransitionDataset for a demo file in robomimic's hdf5 layout;
    # None: robomimic's own loader (robosuite envs)
    demo_file_loader: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    description: str = ""

    def normalized_score(self, episode_return: float) -> float | None:
        if self.ref_random_return is None or self.ref_expert_return is None:
            return None
        span = self.ref_expert_return - self.ref_random_return
        return 100.0 * (episode_return - self.ref_random_return) / span

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("make_env")
        d.pop("builtin_dataset")
        d.pop("demo_file_loader")
        return d


@dataclass(frozen=True)
class SuiteSpec:
    """A suite's config layers for the harness (bench/presets.py): `defaults` (dotted keys, applied after
    the config's own defaults) and `presets` (preset name -> dotted keys). The built-in suites' layers are
    in bench/presets.py's tables; a plugin suite brings its own here."""

    name: str
    defaults: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


ENTRY_POINT_GROUP = "dppo_bench.tasks"
BUILTIN_SUITE_SUFFIX = "_tasks"
_TASKS: dict[str, TaskSpec] = {}
_SUITES: dict[str, SuiteSpec] = {}
_LOADED: set[str] = set()


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def register_suite(spec: SuiteSpec) -> SuiteSpec:
    if spec.name in _SUITES and _SUITES[spec.name] != spec:
        raise ValueError(f"suite {spec.name!r} is already registered")
    _SUITES[spec.name] = spec
    return spec


def get_suite(name: str) -> SuiteSpec:
    """The suite's registered layers (empty for a suite that registered none)."""
    return _SUITES.get(name, SuiteSpec(name))


def _builtin_suites() -> dict[str, str]:
    import envs

    return {m.name.removesuffix(BUILTIN_SUITE_SUFFIX): f"envs.{m.name}" for m in pkgutil.iter_modules(envs.__path__)
            if m.name.endswith(BUILTIN_SUITE_SUFFIX)}


def get_task(name: str) -> TaskSpec:
    _load_suites(_builtin_suites())
    if name not in _TASKS:
        _load_suites(_entry_point_suites())
    if name not in _TASKS:
        raise BenchError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def list_tasks() -> list[TaskSpec]:
    _load_suites(_builtin_suites())
    _load_suites(_entry_point_suites())
    return [_TASKS[k] for k in sorted(_TASKS)]


def list_suites() -> list[str]:
    return sorted({t.suite for t in list_tasks()})


def _entry_point_suites() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_suites(modules: dict[str, str]) -> None:
    # Importing a suite module registers its tasks; imports are cheap (no simulator is built).
    for suite, module in modules.items():
        if module in _LOADED:
            continue
        try:
            importlib.import_module(module)
        except ImportError as e:
            if module.startswith("envs."):
                raise
            raise BenchError(f"cannot load task suite {suite!r} ({module}): {e}") from None
        _LOADED.add(module)
