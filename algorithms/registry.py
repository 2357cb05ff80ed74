"""Algorithm registry.

Built-in algorithms are registered with `@register_algorithm("name")` in their module and imported
lazily by name. Third-party packages register through the entry-point group `dppo_bench.algorithms`
(`name = "package.module:Class"`); a plugin is imported only when asked for. `get_algorithm` also
accepts `"package.module:Class"` directly, like gymnasium's `gym.make("module:Env-v0")`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from bench.errors import BenchError

ENTRY_POINT_GROUP = "dppo_bench.algorithms"
_BUILTIN_MODULES = {name: f"algorithms.{name}" for name in (
    "dppo", "drwr", "dawr", "dipo", "idql", "dql", "qsm", "gaussian_ppo", "gmm_ppo")}
_REGISTRY: dict[str, type] = {}


def register_algorithm(name: str):
    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"algorithm {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_algorithms() -> list[str]:
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY) | set(_entry_points()))


def get_algorithm(name: str) -> type:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise BenchError(f"cannot load algorithm {name!r}: {e}") from None
        from algorithms.base import Algorithm

        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise BenchError(f"cannot load algorithm {name!r}: {attr} is not an algorithms.base.Algorithm subclass")
        return cls
    else:
        eps = _entry_points()
        if name not in eps:
            raise BenchError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(list_algorithms())}")
        cls = eps[name].load()
        if "name" not in vars(cls):  # a plugin class need not use the decorator
            cls.name = name
        _REGISTRY.setdefault(name, cls)
    if name not in _REGISTRY:
        raise BenchError(f"module for algorithm {name!r} did not register it")
    return _REGISTRY[name]
