"""`TransitionDataset`: what every dataset loader returns (arrays, episode ends, a content checksum),
and the checksum sidecar of the built-in (cached) datasets.

Built-in datasets and their sidecar
-----------------------------------
A built-in dataset `X.hdf5` in the cache has a sidecar `X.json` holding the checksum of its arrays. The
pair is made so that it is never half there: the sidecar is written (atomically) first and the dataset
file is renamed into place after it, so a kill in between leaves a sidecar without a dataset, which is a
missing dataset (made again). A dataset file without a valid sidecar (made by an older version that wrote
the sidecar second, or whose sidecar was deleted) cannot be verified and is treated as incomplete: made
again where making is allowed (`bench run`, `bench data make`), else a one-line error naming
`bench data make TASK --force`. It is never used unverified.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import BenchError

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_CHECKSUM_RE = re.compile(r"^[0-9a-f]{64}$")


def as_numbers(values, name: str, source, dtype=np.float32) -> np.ndarray:
    """`values` as a `dtype` array; a one-line BenchError for text, objects or compound records."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise BenchError(f"dataset {source}: {name} holds {arr.dtype} values (text, objects or records), "
                         f"not numbers")
    return arr.astype(dtype)


@dataclass
class TransitionDataset:
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool: true environment termination
    timeouts: np.ndarray  # (N,) bool: episode cut without termination (time limit or data end)
    source: str = ""

    def __post_init__(self):
        n = len(self.observations)
        if not all(len(x) == n for x in (self.actions, self.rewards, self.terminals, self.timeouts)):
            raise BenchError(f"dataset {self.source}: arrays have different lengths")
        if n == 0:
            raise BenchError(f"dataset {self.source} is empty")
        for name in D4RL_KEYS:
            if np.asarray(getattr(self, name)).dtype.kind not in "biuf":
                raise BenchError(f"dataset {self.source}: {name} holds {np.asarray(getattr(self, name)).dtype} "
                                 f"values (text, objects or records), not numbers")
        for name in ("observations", "actions", "rewards"):
            if not np.isfinite(getattr(self, name)).all():
                raise BenchError(f"dataset {self.source}: non-finite values in {name}")
        self.timeouts = self.timeouts.copy()
        self.timeouts[-1] |= not self.terminals[-1]  # the data's end closes the last episode

    @property
    def checksum(self) -> str:
        h = hashlib.sha256()
        for name in D4RL_KEYS:
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        return h.hexdigest()

    def episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) with ends exclusive."""
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        starts = np.concatenate([[0], ends[:-1]])
        return starts, ends

    def episode_returns(self) -> np.ndarray:
        starts, _ = self.episode_bounds()
        return np.add.reduceat(self.rewards.astype(np.float64), starts)

    def chunk_starts(self, horizon_steps: int) -> np.ndarray:
        """Indices i whose chunk i..i+Tp-1 lies inside one episode (as DPPO's sequence dataset)."""
        starts, ends = self.episode_bounds()
        last_valid = np.repeat(ends - horizon_steps, ends - starts)
        return np.flatnonzero(np.arange(len(self.observations)) <= last_valid)

    def check_chunks(self, horizon_steps: int) -> np.ndarray:
        """The chunk starts for chunk length `horizon_steps`; a one-line BenchError if there is none (every
        episode, or the whole dataset, is shorter than one action chunk)."""
        starts = self.chunk_starts(horizon_steps)
        if len(starts) == 0:
            s, e = self.episode_bounds()
            raise BenchError(f"dataset {self.source} has no action chunk of {horizon_steps} steps to pre-train on: "
                             f"{len(self.observations)} transitions, longest episode {int((e - s).max())} steps; "
                             f"use more data or a shorter env.horizon_steps")
        return starts

    def check_dims(self, obs_dim: int, act_dim: int, task: str) -> None:
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise BenchError(f"dataset {self.source}: observations and actions must be 2-D (N, dim), got "
                             f"shapes {self.observations.shape} and {self.actions.shape}")
        if self.observations.shape[1] != obs_dim or self.actions.shape[1] != act_dim:
            raise BenchError(
                f"dataset {self.source} has obs/action dims {self.observations.shape[1]}/"
                f"{self.actions.shape[1]}, task {task!r} needs {obs_dim}/{act_dim}")


# ---------------------------------------------------------------------------------------------------
# The checksum sidecar of built-in datasets (see the module docstring)


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".json")


def read_sidecar(path) -> dict | None:
    """The sidecar of dataset `path` if it is a JSON object with a sha256 `checksum`, else None."""
    try:
        meta = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("checksum"), str) or \
            not _CHECKSUM_RE.match(meta["checksum"]):
        return None
    return meta


def builtin_state(path) -> str:
    """"complete" (dataset file and valid sidecar), "missing" (no dataset file) or "incomplete"."""
    if not Path(path).is_file():
        return "missing"
    return "complete" if read_sidecar(path) is not None else "incomplete"


def remake_hint(task_name: str) -> str:
    return f"remake it with `bench data make {task_name} --force`"


def incomplete_message(path, task_name: str) -> str:
    return (f"dataset {path} is incomplete: its checksum sidecar {sidecar_path(path).name} is missing or "
            f"unreadable (its making was interrupted?), so it cannot be verified; {remake_hint(task_name)}")


def missing_builtin_error(path, task_name: str) -> BenchError:
    """The error for a built-in dataset that is not complete where it may not be made."""
    if builtin_state(path) == "incomplete":
        return BenchError(incomplete_message(path, task_name))
    return BenchError(f"dataset {path} is missing; make it with `bench data make {task_name}`")


def builtin_needs_making(path, task_name: str, make_missing: bool, force: bool, log) -> bool:
    """Whether the built-in dataset `path` must be made (missing, incomplete, or `force`): stale temp files
    of killed writers beside it are removed first; where it may not be made (`make_missing` false), the
    one-line error naming the command to make it."""
    from core.atomic import remove_stale_temp_files

    remove_stale_temp_files(Path(path).parent)
    state = builtin_state(path)
    if state == "complete" and not force:
        return False
    if not make_missing:
        raise missing_builtin_error(path, task_name)
    if state == "incomplete" and not force:
        log(f"{incomplete_message(path, task_name).split('; ')[0]}: making it again")
    return True


def verify_builtin(ds: TransitionDataset, path, task_name: str) -> TransitionDataset:
    """`ds` (loaded from built-in dataset `path`) if it matches its sidecar's checksum, else BenchError."""
    meta = read_sidecar(path)
    if meta is None:
        raise BenchError(incomplete_message(path, task_name))
    if meta["checksum"] != ds.checksum:
        raise BenchError(f"dataset {path} is corrupt (checksum mismatch); {remake_hint(task_name)}")
    return ds
