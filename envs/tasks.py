"""Task registry: what a task is (dims, horizon, chunking, reference scores) and how to build its envs.

Suites register their tasks here with `register_task`; the harness only ever looks tasks up by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.errors import BenchError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    suite: str  # "gym" | "robomimic" | "furniture" | "test"; selects suite-level defaults
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


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    _load_builtin_tasks()
    if name not in _TASKS:
        raise BenchError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def list_tasks() -> list[TaskSpec]:
    _load_builtin_tasks()
    return [_TASKS[k] for k in sorted(_TASKS)]


def _load_builtin_tasks() -> None:
    # Importing a suite module registers its tasks; imports are cheap (no simulator is built).
    import envs.furniture_tasks  # noqa: F401
    import envs.gym_tasks  # noqa: F401
    import envs.robomimic_tasks  # noqa: F401
    import envs.test_tasks  # noqa: F401
