"""The layout of a results root and of one run directory, in one place for the runner, grids and
result readers.

    <root>/runs/<task>/<algo>/seed<k>/
        config.json          resolved config + command line          (written at start)
        versions.json        package versions, git revision, dataset checksum, pre-trained key
        metrics.csv          one row per iteration                    (rewritten atomically)
        eval.csv             one row per evaluation
        checkpoints/last.pt  everything needed to resume
        summary.json         written last: a run is complete iff it exists
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def safe_algo_name(algorithm: str) -> str:
    """Plugin names such as `package.module:Class` as a directory name."""
    return algorithm.replace(":", "_").replace("/", "_")


@dataclass(frozen=True)
class RunStore:
    """The files of one run directory."""

    dir: Path

    @classmethod
    def of(cls, root: Path | str, task: str, algorithm: str, seed: int) -> "RunStore":
        return cls(Path(root) / "runs" / task / safe_algo_name(algorithm) / f"seed{seed}")

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def versions(self) -> Path:
        return self.dir / "versions.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def evals(self) -> Path:
        return self.dir / "eval.csv"

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    def complete(self) -> bool:
        return self.summary.exists()

    def state(self) -> str:
        """'complete' (summary.json exists) | 'incomplete' (run dir without summary) | 'pending' (no dir)."""
        if self.complete():
            return "complete"
        return "incomplete" if self.dir.exists() else "pending"


def run_dir(root: Path | str, task: str, algorithm: str, seed: int) -> Path:
    return RunStore.of(root, task, algorithm, seed).dir


def runs_root(root: Path | str) -> Path:
    return Path(root) / "runs"
