"""A third-party plugin: registers "demo_algo" when imported (found through its entry point)."""

from __future__ import annotations

from dataclasses import dataclass

from algorithms.base import Algorithm
from algorithms.registry import register_algorithm


@dataclass
class DemoConfig:
    step_size: float = 0.1
    n_layers: int = 2
    use_bias: bool = True


@register_algorithm("demo_algo")
class DemoAlgo(Algorithm):
    Config = DemoConfig
    policy_kind = "diffusion"
