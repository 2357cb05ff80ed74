"""Scripted expert demonstrators for the robomimic tasks (see `envs/experts/common.py`).

`make_expert(task_name, env, rng, style)` builds the expert for a raw robosuite env right after
`env.reset()`; `expert.act(obs)` returns the raw 7-dim (14 for two arms) action and `expert.done`
tells when the script has finished. Experts are imported lazily by name.
"""

from __future__ import annotations

import importlib

import numpy as np

from core.errors import BenchError
from envs.experts.common import DemonstratorStyle, ScriptedExpert, sample_style

# task name -> "module:Class"
EXPERTS: dict[str, str] = {
    "lift": "envs.experts.lift:LiftExpert",
    "can": "envs.experts.can:CanExpert",
    "square": "envs.experts.square:SquareExpert",
    "transport": "envs.experts.transport:TransportExpert",
}


def make_expert(task_name: str, env, rng: np.random.Generator, style: DemonstratorStyle) -> ScriptedExpert:
    """The scripted expert for `task_name`, reading the state of the (already reset) robosuite `env`."""
    if task_name not in EXPERTS:
        raise BenchError(f"no scripted expert for task {task_name!r}; choose one of {', '.join(EXPERTS)}")
    module_name, class_name = EXPERTS[task_name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(env, rng, style)


__all__ = ["EXPERTS", "DemonstratorStyle", "ScriptedExpert", "make_expert", "sample_style"]
