"""One registry shape for every extension point (algorithms, policy kinds, executors, statistics).

Entries are added by a decorator (`register`) when their module is imported, or found in an entry-point
group, whose entries are loaded only when asked for by name. A lookup of an unknown name is a one-line
`BenchError` naming the valid ones; a plugin that fails to load is one too.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

from core.errors import BenchError


class Registry:
    def __init__(self, kind: str, entry_point_group: str, *, plural: str | None = None,
                 import_builtins: Callable[[], None] | None = None,
                 check: Callable[[str, Any], None] | None = None,
                 wrap: Callable[[str, Any], Any] | None = None, sort: bool = True):
        """`import_builtins` imports the modules whose entries register themselves (called before a
        lookup misses or a listing); `check(name, entry)` raises BenchError for a plugin entry that does
        not fit; `wrap(name, entry)` turns a loaded plugin object that did not register itself into an
        entry; `sort=False` lists entries in registration order (built-ins first)."""
        self.kind, self.plural, self.group = kind, plural or f"{kind}s", entry_point_group
        self._import_builtins, self._check, self._wrap, self._sort = import_builtins, check, wrap, sort
        self.entries: dict[str, Any] = {}

    def add(self, name: str, entry: Any) -> Any:
        known = self.entries.get(name)
        if known is not None and known is not entry:
            raise ValueError(f"{self.kind} {name!r} is already registered by {getattr(known, '__module__', known)}")
        if isinstance(entry, type):
            entry.name = name
        self.entries[name] = entry
        return entry

    def register(self, name: str):
        """Class decorator: register the class under `name` (and set its `name`)."""
        return lambda entry: self.add(name, entry)

    def entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def _builtins(self) -> None:
        if self._import_builtins is not None:
            self._import_builtins()

    def names(self) -> list[str]:
        """Registered names and the entry-point names not loaded yet (these are not imported)."""
        self._builtins()
        if self._sort:
            return sorted(set(self.entries) | set(self.entry_points()))
        return list(self.entries) + sorted(set(self.entry_points()) - set(self.entries))

    def unknown(self, name: str) -> BenchError:
        return BenchError(f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names())}")

    def get(self, name: str) -> Any:
        if name not in self.entries:
            self._builtins()
        if name in self.entries:
            return self.entries[name]
        eps = self.entry_points()
        if name not in eps:
            raise self.unknown(name)
        entry = self.load(name, eps[name].value)
        if name not in self.entries:  # importing it may have registered it (a decorator in the plugin)
            self.entries[name] = self._wrap(name, entry) if self._wrap else entry
        return self.entries[name]

    def load(self, name: str, target: str) -> Any:
        """Import `package.module:attr` (or a module) as the entry `name`, checked; not registered here."""
        module, _, attr = target.partition(":")
        try:
            entry = importlib.import_module(module)
            if attr:
                entry = getattr(entry, attr)
        except Exception as e:  # a broken plugin is the user's input: one line, no traceback
            where = "" if target == name else f" ({target})"
            raise BenchError(f"cannot load {self.kind} {name!r}{where}: {e}") from None
        if self._check is not None:
            self._check(name, entry)
        if isinstance(entry, type) and "name" not in vars(entry):  # a plugin class need not use the decorator
            entry.name = name
        return entry
