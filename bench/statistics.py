"""Registry of the leaderboard's aggregate statistics.

A statistic is a pure function `scores -> float` of one algorithm's (n_runs, n_tasks) final-score matrix,
registered with `@register_statistic(name, label=..., higher_is_better=...)`. The leaderboard reports
each one with a stratified-bootstrap 95% CI (columns `name`, `name_lo`, `name_hi`; header
"`label` (95% CI)"), and the report draws it in the aggregate panel. Built-ins are the four of rliable
(Agarwal et al., 2021). Third-party packages register through the entry-point group
`dppo_bench.statistics` (`name = "package.module:function"`); see docs/adding-a-statistic.md.

A statistic must not draw random numbers: the bootstrap resamples come from NumPy's global RNG, so a
draw inside one statistic would shift every other statistic's CI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import BenchError
from core.registry import Registry

ENTRY_POINT_GROUP = "dppo_bench.statistics"


@dataclass(frozen=True)
class Statistic:
    name: str
    label: str
    fn: Callable[[np.ndarray], float]
    higher_is_better: bool = True


def _as_statistic(name: str, fn) -> Statistic:
    """A plugin function that did not use the decorator: labelled by its name, higher is better."""
    if not callable(fn):
        raise BenchError(f"cannot load statistic {name!r}: {fn!r} is not a function")
    return Statistic(name, name, fn)


# listed in registration order (built-ins first), then entry points not yet loaded
REGISTRY = Registry("statistic", ENTRY_POINT_GROUP, plural="statistics", wrap=_as_statistic, sort=False)
list_statistics = REGISTRY.names
get_statistic = REGISTRY.get


def register_statistic(name: str, *, label: str | None = None, higher_is_better: bool = True):
    """Decorator: register `fn(scores) -> float` under `name`; returns `fn` unchanged."""
    if not name or "," in name or any(c.isspace() for c in name):
        raise ValueError(f"statistic name {name!r} must be non-empty, without commas or spaces")

    def decorator(fn):
        known = REGISTRY.entries.get(name)
        if known is None or known.fn is not fn:
            REGISTRY.add(name, Statistic(name, label or name, fn, higher_is_better))
        return fn

    return decorator


def get_statistics(names: Sequence[str] | None = None) -> list[Statistic]:
    """The statistics `names`, in that order; default: every one that `list_statistics` names."""
    return [get_statistic(n) for n in (list_statistics() if names is None else names)]


# Built-ins: rliable's aggregates, imported lazily (rliable pulls in arch and pandas).

@register_statistic("iqm", label="IQM")
def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the 25%-trimmed mean of all runs x tasks scores."""
    from rliable import metrics

    return metrics.aggregate_iqm(scores)


@register_statistic("mean", label="Mean")
def mean(scores: np.ndarray) -> float:
    """Mean over tasks of the per-task mean over runs."""
    from rliable import metrics

    return metrics.aggregate_mean(scores)


@register_statistic("median", label="Median")
def median(scores: np.ndarray) -> float:
    """Median over tasks of the per-task mean over runs."""
    from rliable import metrics

    return metrics.aggregate_median(scores)


@register_statistic("optimality_gap", label="Optimality gap", higher_is_better=False)
def optimality_gap(scores: np.ndarray) -> float:
    """Mean shortfall below 1.0 (expert / full success): 1 - mean(min(scores, 1))."""
    from rliable import metrics

    return metrics.aggregate_optimality_gap(scores)
