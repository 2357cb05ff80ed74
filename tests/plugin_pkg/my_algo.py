"""An algorithm reachable only as "plugin_pkg.my_algo:MyAlgo" (no decorator, no entry point)."""

from __future__ import annotations

from dataclasses import dataclass

from algorithms.base import Algorithm


@dataclass
class MyAlgoConfig:
    lr: float = 3e-4
    width: int = 8


class MyAlgo(Algorithm):
    Config = MyAlgoConfig
