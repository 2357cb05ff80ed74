"""Algorithm registry.

An algorithm is registered with `@register_algorithm("name")` on its class; that is the only step.
Built-in algorithms are the modules of this package: they are imported (which registers them) the first
time an algorithm is looked up or listed. Third-party packages register through the entry-point group
`dppo_bench.algorithms` (`name = "package.module:Class"`); a plugin is imported only when asked for.
`get_algorithm` also accepts `"package.module:Class"` directly, like gymnasium's `gym.make("module:Env-v0")`.
"""

from __future__ import annotations

import importlib
import pkgutil

from core.registry import Registry

ENTRY_POINT_GROUP = "dppo_bench.algorithms"
_BUILTINS_IMPORTED = False


def import_builtin_modules() -> None:
    """Import every module of the `algorithms` package once, registering its algorithms (and policy kinds)."""
    global _BUILTINS_IMPORTED
    if not _BUILTINS_IMPORTED:
        import algorithms

        for m in pkgutil.iter_modules(algorithms.__path__):
            importlib.import_module(f"algorithms.{m.name}")
        _BUILTINS_IMPORTED = True


def _check_algorithm(name: str, cls) -> None:
    from algorithms.base import Algorithm
    from core.errors import BenchError

    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise BenchError(f"cannot load algorithm {name!r}: {cls!r} is not an algorithms.base.Algorithm subclass")


REGISTRY = Registry("algorithm", ENTRY_POINT_GROUP, import_builtins=import_builtin_modules, check=_check_algorithm)
_REGISTRY = REGISTRY.entries
register_algorithm = REGISTRY.register
list_algorithms = REGISTRY.names


def builtin_algorithms() -> list[str]:
    """The algorithms defined in this package (not plugins)."""
    import_builtin_modules()
    return sorted(n for n, cls in REGISTRY.entries.items() if cls.__module__.startswith("algorithms."))


def get_algorithm(name: str) -> type:
    """A registered name, an entry point's name, or `package.module:Class` (not registered)."""
    if ":" in name and name not in REGISTRY.entries:
        return REGISTRY.load(name, name)
    return REGISTRY.get(name)
