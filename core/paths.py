"""Where cached datasets, pre-trained policies and assets live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$DPPO_BENCH_CACHE, default ~/.cache/dppo-bench."""
    return Path(os.environ.get("DPPO_BENCH_CACHE", Path.home() / ".cache" / "dppo-bench"))
